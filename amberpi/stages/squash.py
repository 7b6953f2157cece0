"""squash: the customized rootfs as live/filesystem.squashfs, plus its boot files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.context import BuildContext
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage

# Mount points stay, their contents do not: they are filled at run time.
EXCLUDE = ["proc/*", "sys/*", "dev/*", "run/*", "tmp/*"]


class SquashStage(Stage):
    name = "squash"
    title = "Squashing the rootfs ({compression})"
    version = 1
    cached = True
    needs = ("customize",)

    def tools(self, ctx: BuildContext) -> list[str]:
        return ["mksquashfs"]

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {"compression": ctx.config.squashfs_compression, "exclude": EXCLUDE}

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        customized = upstream["customize"]
        squashfs = out / "filesystem.squashfs"
        argv = [
            "mksquashfs",
            str(customized.path / "rootfs"),
            str(squashfs),
            "-noappend",
            "-no-progress",
            "-comp",
            ctx.config.squashfs_compression,
            "-processors",
            str(os.cpu_count() or 1),
            "-wildcards",
        ]
        for pattern in EXCLUDE:
            argv += ["-e", pattern]
        run(argv, label="mksquashfs", env={"SOURCE_DATE_EPOCH": str(customized.meta["source_date_epoch"])})
        shutil.copytree(customized.path / "boot", out / "boot", symlinks=True)
        meta = dict(customized.meta)
        meta["squashfs_bytes"] = squashfs.stat().st_size
        return Artefact(out, meta)
