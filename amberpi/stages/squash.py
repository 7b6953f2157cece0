"""squash: the customized rootfs as live/filesystem.squashfs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.config import list_boards, load_board
from amberpi.context import BuildContext
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage

# Mount points stay, their contents do not: they are filled at run time.
EXCLUDE = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*")
# What the device never reads, left out to keep the download small (mksquashfs's
# extended wildcards): downloaded .debs and apt's caches (rebuilt at the next `apt
# update`); translations, man pages and docs (the copyright files stay: the licences
# of what is shipped); GRUB's EFI modules (the build made p1's GRUB from them); and the
# factory kernel and initrd, which p2 and p3 hold (amberpi-kernel takes p2's).
SLIM = (
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "usr/share/locale/*",
    "usr/share/man/*",
    "usr/share/doc/*/!(copyright)",
    "usr/lib/grub/*",
    "boot/vmlinuz-*",
    "boot/initrd.img-*",
)


def unused_dtb_folders() -> tuple[str, ...]:
    """The kernel's device-tree folders no board boots from (55 MB of them): the rootfs is
    shared by every board, so the folders any board names stay."""
    vendors = sorted({dtb.split("/")[0] for name in list_boards() for dtb in load_board(name).device_trees if "/" in dtb})
    if not vendors:
        return ("usr/lib/linux-image-*/*",)
    return (f"usr/lib/linux-image-*/!({'|'.join(vendors)})",)


@dataclass(frozen=True)
class SquashInputs:
    compression: str
    exclude: tuple[str, ...]


class SquashStage(Stage[SquashInputs]):
    name = "squash"
    cached = True
    needs = ("customize",)
    uses_facts = ("epoch",)
    tools = ("mksquashfs",)

    def inputs(self, build: BuildContext) -> SquashInputs:
        return SquashInputs(build.config.squashfs_compression, EXCLUDE + SLIM + unused_dtb_folders())

    def title(self, inputs: SquashInputs) -> str:
        return f"Squashing the rootfs ({inputs.compression})"

    def run(self, inputs: SquashInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        squashfs = out / "filesystem.squashfs"
        argv = [
            "mksquashfs",
            str(upstream["customize"].folder / "rootfs"),
            str(squashfs),
            "-noappend",
            "-no-progress",
            "-comp",
            inputs.compression,
            # Any number of threads gives the same bytes: not part of the key.
            "-processors",
            str(os.cpu_count() or 1),
            "-wildcards",
        ]
        for pattern in inputs.exclude:
            argv += ["-e", pattern]
        run(argv, label="mksquashfs", env={"SOURCE_DATE_EPOCH": str(upstream["epoch"].facts["source_date_epoch"])})
        return Artefact(out, {"squashfs_bytes": squashfs.stat().st_size})
