"""release: the image as it is handed out: checksum, block map, package manifests, report,
download form, Raspberry Pi Imager list.

Everything it writes lands in its own folder; the pipeline then publishes the list
of files it names into the output folder (the image first, so no new checksum ever
sits beside an old image). ReleaseNames names each file once: the release verb, the
verify verb and the release workflow's test take the names from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amberpi import __version__, imager
from amberpi.context import ARCH, BuildContext, RunRecord
from amberpi.digests import sha256_file
from amberpi.identity import ImageIdentity
from amberpi.log import LOG
from amberpi.render import write_rendered
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage, resource
from amberpi.trees import move_file


@dataclass(frozen=True)
class ReleaseNames:
    """The files a build of the image `name` publishes, each named once."""

    name: str

    @property
    def image(self) -> str:
        return f"{self.name}.img"

    @property
    def checksum(self) -> str:
        return f"{self.image}.sha256"

    @property
    def bmap(self) -> str:
        """bmaptool's block map of the image: what a writer must copy, with checksums."""
        return f"{self.image}.bmap"

    @property
    def packages(self) -> str:
        return f"{self.name}.packages"

    @property
    def manifest(self) -> str:
        """Every package with its version, architecture, source and licences, as JSON."""
        return f"{self.name}.manifest.json"

    @property
    def compressed(self) -> str:
        return f"{self.image}.xz"

    @property
    def compressed_checksum(self) -> str:
        return f"{self.compressed}.sha256"

    @property
    def imager(self) -> str:
        return f"{self.name}{imager.SUFFIX}"

    @property
    def report(self) -> str:
        return f"{self.name}.report.json"

    def published(self, *, compressed: bool, listed: bool) -> list[str]:
        """In publishing order: the image first, the report (which lists the others) last.
        `compressed`: with the .img.xz; `listed`: with the Imager list (a board with Imager device tags)."""
        names = [self.image, self.checksum, self.bmap, self.packages, self.manifest]
        names += [self.compressed, self.compressed_checksum] if compressed else []
        names += [self.imager] if listed else []
        return [*names, self.report]

    def downloads(self, *, listed: bool) -> list[str]:
        """What a release hands out: everything a compressed build publishes but the raw image."""
        return [name for name in self.published(compressed=True, listed=listed) if name != self.image]


@dataclass(frozen=True)
class ReleaseInputs:
    name: str
    compress: str
    identity: ImageIdentity
    board: str
    board_description: str
    imager_devices: tuple[str, ...]
    release_url: str
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
    tools = ("xz", "bmaptool")

    def inputs(self, build: BuildContext) -> ReleaseInputs:
        c = build.config
        return ReleaseInputs(
            name=c.name,
            compress=c.compress,
            identity=build.identity,
            board=build.board.name,
            board_description=build.board.description,
            imager_devices=tuple(build.board.imager_devices),
            release_url=c.release_url,
            backend=build.backend,
            suite=c.suite,
            mirror=c.mirror,
            config=tuple(sorted(c.to_json(redact=True).items())),
            amberpi_version=__version__,
            run_record=build.run_record,
        )

    def title(self, inputs: ReleaseInputs) -> str:
        extras = (", .img.xz" if inputs.compress == "xz" else "") + (", Imager list" if inputs.imager_devices else "")
        return "Releasing: checksum, block map, package manifests, report" + extras

    def run(self, inputs: ReleaseInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        disk, built = upstream["disk"], upstream["customize"].facts
        names = ReleaseNames(inputs.name)
        image = out / names.image
        move_file(disk.folder / "disk.img", image)
        _, digest = write_checksum(image)
        digests = {names.image: digest}
        # The image stays sparse (holes where nothing was written): the map lists only the data.
        run(["bmaptool", "create", "-o", str(out / names.bmap), str(image)], label="bmaptool")
        write_rendered(out / names.packages, "packages.j2", packages=built["packages"])
        (out / names.manifest).write_text(self.package_manifest(inputs, upstream))
        report = self.report(inputs, upstream, image, digest)
        report["packages"] = {"file": names.packages, "sha256": sha256_file(out / names.packages)}
        compressed = out / names.compressed
        withdraw = []
        if inputs.compress == "xz":
            LOG.note(f"compressing the image: {compressed.name}")
            # -k keeps the (sparse) image; -T0: all cores.
            run(["xz", "-6", "-T0", "-k", "-f", str(image)], label="xz")
            _, digests[names.compressed] = write_checksum(compressed)
            report["compressed"] = {"file": compressed.name, "bytes": compressed.stat().st_size, "sha256": digests[names.compressed]}
        else:
            # An older build's download would no longer match this image.
            withdraw = [names.compressed, names.compressed_checksum]
        listed = bool(inputs.imager_devices)
        if listed:
            download = compressed if inputs.compress == "xz" else image
            entry = self.imager_entry(inputs, upstream, names, image, download, digests)
            (out / names.imager).write_text(imager.os_list_text([entry]))
            report["imager"] = {"file": names.imager, "init_format": imager.INIT_FORMAT, "devices": list(inputs.imager_devices)}
        else:
            withdraw.append(names.imager)
        publish = names.published(compressed=inputs.compress == "xz", listed=listed)
        report["files"] = [
            {"file": name, "bytes": (out / name).stat().st_size, "sha256": digests.get(name) or sha256_file(out / name)}
            for name in publish
            if name != names.report
        ]
        (out / names.report).write_text(json.dumps(report, indent=2) + "\n")
        summary = f"{report['image_bytes'] >> 20} MiB, squashfs {report['squashfs_bytes'] >> 20} MiB, kernel {report['kernel_version']}"
        return Artefact(out, {"publish": publish, "withdraw": withdraw, "summary": summary})

    def package_manifest(self, inputs: ReleaseInputs, upstream: Mapping[str, Artefact]) -> str:
        """The .manifest.json: every package (name, version, architecture, source, source version,
        licences or null), sorted; the same packages give the same bytes."""
        built = upstream["customize"].facts
        document = {
            "image": ReleaseNames(inputs.name).image,
            "board": inputs.board,
            "suite": inputs.suite,
            "architecture": ARCH,
            "kernel_version": built["kernel_version"],
            "package_count": len(built["package_manifest"]),
            "packages": built["package_manifest"],
        }
        return json.dumps(document, indent=1, sort_keys=True) + "\n"

    def imager_entry(
        self,
        inputs: ReleaseInputs,
        upstream: Mapping[str, Artefact],
        names: ReleaseNames,
        image: Path,
        download: Path,
        digests: Mapping[str, str],
    ) -> dict[str, Any]:
        return imager.os_entry(
            name=f"AmberPi ({inputs.board}, Debian {inputs.suite})",
            description=f"A read-only Debian {inputs.suite} that survives power cuts. {inputs.board_description}",
            devices=list(inputs.imager_devices),
            url=imager.download_url(inputs.release_url, download.name),
            extract_size=image.stat().st_size,
            extract_sha256=digests[image.name],
            download_size=download.stat().st_size,
            download_sha256=digests[download.name],
            date=imager.release_date(int(upstream["epoch"].facts["source_date_epoch"])),
            bmap_url=imager.download_url(inputs.release_url, names.bmap),
        )

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
