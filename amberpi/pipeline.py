"""The build, top to bottom: preflight every stage, then run or reuse each in order."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amberpi import __version__
from amberpi.cache import Cache, Incremental, locked, stage_key
from amberpi.config import Config, load_board
from amberpi.context import BuildContext
from amberpi.errors import CacheError, UsageError
from amberpi.files import sha256_file
from amberpi.log import LOG, format_duration
from amberpi.mounts import remove_tree
from amberpi.render import write_rendered
from amberpi.run import run
from amberpi.stages import STAGES
from amberpi.stages.base import Artefact, Stage

WORKSPACE_ROOT = Path("/var/tmp")


@dataclass
class StageRecord:
    name: str
    status: str = "pending"  # built | cached | skipped
    seconds: float = 0.0
    key: str = ""


@dataclass
class BuildResult:
    image: Path
    report: Path
    records: list[StageRecord] = field(default_factory=list)


def check_output_dir(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {output}: {exc.strerror}", hint="choose another with --output") from None
    if not os.access(output, os.W_OK):
        raise UsageError(f"the output folder {output} is not writable", hint="fix its permissions or choose another with --output")
    probe = output / f".amberpi-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"the output folder {output} is not writable: {exc.strerror}", hint="choose another with --output") from None


class Pipeline:
    def __init__(
        self, config: Config, *, incremental: Incremental = Incremental.yes, keep_workspace: bool = False, backend: str = "native"
    ) -> None:
        self.config = config
        self.backend = backend
        self.board = load_board(config.board)
        self.incremental = incremental
        self.keep_workspace = keep_workspace
        self.stages: dict[str, Stage] = {stage.name: stage for stage in STAGES}
        self.records: dict[str, StageRecord] = {name: StageRecord(name) for name in self.stages}
        self.keys: dict[str, str] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.artefacts: dict[str, Artefact] = {}
        self.output_dir = Path(config.output).resolve()

    def make_context(self, workspace: Path, cache: Cache) -> BuildContext:
        return BuildContext(config=self.config, board=self.board, workspace=workspace, cache=cache, output_dir=self.output_dir)

    def compute_keys(self, ctx: BuildContext) -> None:
        for name, stage in self.stages.items():
            upstream = {need: self.keys[need] for need in stage.needs}
            self.keys[name], self.manifests[name] = stage_key(name, stage.version, stage.key_inputs(ctx), upstream)
            self.records[name].key = self.keys[name]

    def preflight(self, ctx: BuildContext) -> None:
        problems = []
        for stage in self.stages.values():
            problems += stage.preflight(ctx)
        if problems:
            raise UsageError("preflight found problems:\n  - " + "\n  - ".join(problems))

    def validate(self) -> None:
        """Config and host checks only: nothing is built or written."""
        check_output_dir(self.output_dir)
        ctx = self.make_context(WORKSPACE_ROOT, Cache(Path(self.config.cache_dir), self.incremental))
        self.preflight(ctx)
        self.compute_keys(ctx)

    def build(self) -> BuildResult:
        check_output_dir(self.output_dir)
        cache = Cache(Path(self.config.cache_dir), self.incremental)
        image = self.output_dir / f"{self.config.name}.img"
        with locked(self.output_dir / ".amberpi.lock", f"the output folder {self.output_dir}"), self.workspace() as workspace:
            LOG.open_log(workspace / "build.log")
            ctx = self.make_context(workspace, cache)
            self.preflight(ctx)
            self.compute_keys(ctx)
            self.timings = cache.load_timings()
            self.started = time.monotonic()
            with locked(cache.root / ".lock", f"the cache {cache.root}"):
                self.resolve(ctx, "disk")
            cache.save_timings({r.name: r.seconds for r in self.records.values() if r.status == "built"})
            return self.publish(ctx, image)

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        WORKSPACE_ROOT.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="amberpi-", dir=WORKSPACE_ROOT))
        try:
            yield path
        except BaseException:
            if LOG.log_path and LOG.log_path.exists():
                failed_log = self.output_dir / f"{self.config.name}.build.log"
                shutil.copy2(LOG.log_path, failed_log)
                LOG.log_path = failed_log
            raise
        finally:
            LOG.close_log()
            if self.keep_workspace:
                LOG.note(f"workspace kept at {path}")
            else:
                remove_tree(path)

    def resolve(self, ctx: BuildContext, name: str) -> Artefact:
        """The artefact of stage `name`: from the cache, or built from its upstreams."""
        if name in self.artefacts:
            return self.artefacts[name]
        stage = self.stages[name]
        key = self.keys[name]
        if stage.cached:
            hit = ctx.cache.lookup(name, key)
            if hit is not None:
                self.mark_skipped_upstream(stage)
                self.announce(stage, ctx, "cached")
                self.records[name].status = "cached"
                self.artefacts[name] = Artefact.load(hit)
                return self.artefacts[name]
            if self.incremental is Incremental.strict:
                raise CacheError(
                    f"stage {name} is not cached and --incremental=strict forbids building it",
                    where=ctx.cache.explain_miss(name, self.manifests[name]),
                    hint="build once without --incremental=strict",
                )
        upstream = {need: self.resolve(ctx, need) for need in stage.needs}
        self.announce(stage, ctx, "start")
        if stage.cached:
            LOG.detail(f"cache miss for {name}: {ctx.cache.explain_miss(name, self.manifests[name])}")
        started = time.monotonic()
        if stage.cached:
            with ctx.cache.staging(name, key, self.manifests[name]) as out:
                artefact = stage.run(ctx, upstream, out)
                artefact.save()
            artefact = Artefact.load(ctx.cache.entry(name, key))
        else:
            out = ctx.workspace / name
            out.mkdir(parents=True, exist_ok=True)
            artefact = stage.run(ctx, upstream, out)
            artefact.save()
        record = self.records[name]
        record.status, record.seconds = "built", time.monotonic() - started
        self.announce(stage, ctx, "done")
        self.artefacts[name] = artefact
        return artefact

    def mark_skipped_upstream(self, stage: Stage) -> None:
        for need in stage.needs:
            if self.records[need].status == "pending":
                self.records[need].status = "skipped"
                self.mark_skipped_upstream(self.stages[need])

    def stage_title(self, stage: Stage, ctx: BuildContext) -> str:
        from amberpi.stages.customize import hook_files
        from amberpi.stages.packages import wanted_packages

        return stage.title.format(
            suite=ctx.config.suite,
            count=len(wanted_packages(ctx)) if stage.name == "packages" else len(hook_files(ctx)),
            compression=ctx.config.squashfs_compression,
            firmware=", Pi firmware, U-Boot" if ctx.board.firmware == "raspi" else "",
        )

    def announce(self, stage: Stage, ctx: BuildContext, event: str) -> None:
        order = list(self.stages)
        position = f"[{order.index(stage.name) + 1}/{len(order)}]"
        elapsed = format_duration(time.monotonic() - self.started)
        record = self.records[stage.name]
        if event == "start":
            remaining = [n for n in order[order.index(stage.name) :] if self.records[n].status == "pending"]
            known = [self.timings[n] for n in remaining if n in self.timings]
            eta = f", ETA {format_duration(sum(known))}" if known and len(known) == len(remaining) else ""
            LOG.note(f"{position} {stage.name:<11} {self.stage_title(stage, ctx)} … (elapsed {elapsed}{eta})")
        elif event == "done":
            LOG.note(f"{position} {stage.name:<11} built in {format_duration(record.seconds)}")
        else:
            LOG.note(f"{position} {stage.name:<11} cached ({self.keys[stage.name][:12]})")

    def publish(self, ctx: BuildContext, image: Path) -> BuildResult:
        """Move the image into the output folder atomically, with its report and log."""
        disk = self.artefacts["disk"]
        squash = self.artefacts["squash"]
        partial = image.with_name(f".{image.name}.partial")
        compressed_partial = partial.with_name(partial.name + ".xz")
        compressed = image.with_name(image.name + ".xz")
        compressed_sums = compressed.with_name(compressed.name + ".sha256")
        try:
            shutil.move(str(disk.path / "disk.img"), partial)
            digest = sha256_file(partial)
            write_rendered(image.with_name(image.name + ".sha256"), "sha256sum.j2", digest=digest, name=image.name)
            report = self.report(ctx, image, digest)
            packages = self.output_dir / f"{self.config.name}.packages"
            write_rendered(packages, "packages.j2", packages=squash.meta["packages"])
            report["packages"] = {"file": packages.name, "sha256": sha256_file(packages)}
            if self.config.compress == "xz":
                LOG.note(f"compressing the image: {compressed.name}")
                # xz keeps the sparse partial and writes its .xz beside it; all cores.
                run(["xz", "-6", "-T0", "-k", "-f", str(partial)], label="xz")
                xz_digest = sha256_file(compressed_partial)
                write_rendered(compressed_sums, "sha256sum.j2", digest=xz_digest, name=compressed.name)
                report["compressed"] = {"file": compressed.name, "bytes": compressed_partial.stat().st_size, "sha256": xz_digest}
            report_path = self.output_dir / f"{self.config.name}.report.json"
            report_path.write_text(json.dumps(report, indent=2) + "\n")
            log_target = self.output_dir / f"{self.config.name}.build.log"
            if LOG.log_path:
                shutil.copy2(LOG.log_path, log_target)
            if compressed_partial.exists():
                os.replace(compressed_partial, compressed)
            else:
                # An older build's download would no longer match this image.
                for stale in (compressed, compressed_sums):
                    stale.unlink(missing_ok=True)
            os.replace(partial, image)
        finally:
            for leftover in (partial, compressed_partial):
                if leftover.exists():
                    leftover.unlink()
        sizes = f"{disk.meta['image_bytes'] >> 20} MiB, squashfs {squash.meta['squashfs_bytes'] >> 20} MiB"
        LOG.note(f"Image: {image} ({sizes}, kernel {squash.meta['kernel_version']})")
        LOG.note(
            f"Done in {format_duration(time.monotonic() - self.started)}: "
            + ", ".join(f"{r.name} {r.status}" for r in self.records.values())
        )
        return BuildResult(image, report_path, list(self.records.values()))

    def report(self, ctx: BuildContext, image: Path, digest: str) -> dict[str, Any]:
        squash = self.artefacts["squash"]
        return {
            "amberpi_version": __version__,
            "image": image.name,
            "sha256": digest,
            "image_bytes": self.artefacts["disk"].meta["image_bytes"],
            "image_id": ctx.image_id,
            "board": ctx.board.name,
            "backend": self.backend,
            "suite": ctx.config.suite,
            "mirror": ctx.config.mirror,
            "kernel_version": squash.meta["kernel_version"],
            "package_count": squash.meta["package_count"],
            "source_date_epoch": squash.meta["source_date_epoch"],
            "initramfs": squash.meta.get("initramfs", "built"),
            "squashfs_bytes": squash.meta["squashfs_bytes"],
            "layout": self.artefacts["disk"].meta["layout"],
            "labels": {"system": ctx.system_label, "kernel": ctx.kernel_label, "persistence": ctx.persistence_label},
            "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 1), "key": r.key} for r in self.records.values()],
            "total_seconds": round(time.monotonic() - self.started, 1),
            "config": {k: v for k, v in self.config.to_json().items() if k != "root_password_hash"},
        }
