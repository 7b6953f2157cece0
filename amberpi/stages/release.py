"""release: the image as it is handed out: checksum, package manifest, report, download form.

Everything it writes lands in its own folder; the pipeline then publishes the list
of files it names into the output folder (the image first, so no new checksum ever
sits beside an old image).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amberpi import __version__
from amberpi.context import BuildContext, RunRecord
from amberpi.digests import sha256_file
from amberpi.identity import ImageIdentity
from amberpi.log import LOG
from amberpi.render import write_rendered
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage, resource
from amberpi.trees import move_file


@dataclass(frozen=True)
class ReleaseInputs:
    name: str
    compress: str
    identity: ImageIdentity
    board: str
    backend: str
    suite: str
    mirror: str
    config: tuple[tuple[str, Any], ...]  # the resolved config, secrets redacted
    amberpi_version: str
    run_record: RunRecord = resource()


def write_checksum(path: Path) -> tuple[Path, str]:
    digest = sha256_file(path)
    target = path.with_name(path.name + ".sha256")
    write_rendered(target, "sha256sum.j2", digest=digest, name=path.name)
    return target, digest


class ReleaseStage(Stage[ReleaseInputs]):
    name = "release"
    needs = ("disk",)
    uses_facts = ("customize", "squash", "epoch")
    tools = ("xz",)

    def inputs(self, build: BuildContext) -> ReleaseInputs:
        c = build.config
        return ReleaseInputs(
            name=c.name,
            compress=c.compress,
            identity=build.identity,
            board=build.board.name,
            backend=build.backend,
            suite=c.suite,
            mirror=c.mirror,
            config=tuple(sorted(c.to_json(redact=True).items())),
            amberpi_version=__version__,
            run_record=build.run_record,
        )

    def title(self, inputs: ReleaseInputs) -> str:
        return "Releasing: checksum, package manifest, report" + (", .img.xz" if inputs.compress == "xz" else "")

    def run(self, inputs: ReleaseInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        disk, built = upstream["disk"], upstream["customize"].facts
        image = out / f"{inputs.name}.img"
        move_file(disk.folder / "disk.img", image)
        checksum, digest = write_checksum(image)
        packages = out / f"{inputs.name}.packages"
        write_rendered(packages, "packages.j2", packages=built["packages"])
        publish = [image.name, checksum.name, packages.name]
        report = self.report(inputs, upstream, image, digest)
        report["packages"] = {"file": packages.name, "sha256": sha256_file(packages)}
        withdraw = []
        compressed = image.with_name(image.name + ".xz")
        if inputs.compress == "xz":
            LOG.note(f"compressing the image: {compressed.name}")
            # -k keeps the (sparse) image; -T0: all cores.
            run(["xz", "-6", "-T0", "-k", "-f", str(image)], label="xz")
            compressed_sums, xz_digest = write_checksum(compressed)
            report["compressed"] = {"file": compressed.name, "bytes": compressed.stat().st_size, "sha256": xz_digest}
            publish += [compressed.name, compressed_sums.name]
        else:
            # An older build's download would no longer match this image.
            withdraw = [compressed.name, compressed.name + ".sha256"]
        report_file = out / f"{inputs.name}.report.json"
        report_file.write_text(json.dumps(report, indent=2) + "\n")
        publish.append(report_file.name)
        summary = f"{report['image_bytes'] >> 20} MiB, squashfs {report['squashfs_bytes'] >> 20} MiB, kernel {report['kernel_version']}"
        return Artefact(out, {"publish": publish, "withdraw": withdraw, "summary": summary})

    def report(self, inputs: ReleaseInputs, upstream: Mapping[str, Artefact], image: Path, digest: str) -> dict[str, Any]:
        disk, built, squash = upstream["disk"].facts, upstream["customize"].facts, upstream["squash"].facts
        record = inputs.run_record
        return {
            "amberpi_version": inputs.amberpi_version,
            "image": image.name,
            "sha256": digest,
            "image_bytes": disk["image_bytes"],
            "image_id": inputs.identity.image_id,
            "board": inputs.board,
            "backend": inputs.backend,
            "suite": inputs.suite,
            "mirror": inputs.mirror,
            "kernel_version": built["kernel_version"],
            "package_count": built["package_count"],
            "source_date_epoch": upstream["epoch"].facts["source_date_epoch"],
            "initramfs": built["initramfs"],
            "squashfs_bytes": squash["squashfs_bytes"],
            "layout": disk["layout"],
            "labels": inputs.identity.labels(),
            "stages": [
                {"name": r.name, "status": r.status, "seconds": round(r.seconds, 1), "key": r.key}
                for r in record.stages
                if r.name != self.name
            ],
            "total_seconds": round(record.elapsed(), 1),
            "config": dict(inputs.config),
        }
