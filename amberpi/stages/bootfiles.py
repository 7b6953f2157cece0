"""bootfiles: what boots the rootfs, kept apart from it: kernel, initrd, DTBs, GRUB's EFI image.

The customize stage makes them inside its (uncached) rootfs; this stage keeps a
copy in the cache, so the partitions can be written again without the rootfs.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.context import BuildContext
from amberpi.stages.base import Artefact, Stage


@dataclass(frozen=True)
class BootfilesInputs:
    pass


class BootfilesStage(Stage[BootfilesInputs]):
    name = "bootfiles"
    cached = True
    needs = ("customize",)

    def inputs(self, build: BuildContext) -> BootfilesInputs:
        return BootfilesInputs()

    def title(self, inputs: BootfilesInputs) -> str:
        return "Keeping the kernel, initrd, DTBs and GRUB's EFI image"

    def run(self, inputs: BootfilesInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        shutil.copytree(upstream["customize"].folder / "boot", out / "boot", symlinks=True)
        return Artefact(out)
