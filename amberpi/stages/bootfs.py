"""bootfs: p1, the FAT32 boot partition: GRUB, its menu, and the Pi firmware chain."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.context import BuildContext
from amberpi.errors import StageError
from amberpi.fatfs import make_fat
from amberpi.render import render, write_rendered
from amberpi.stages.base import Artefact, Stage
from amberpi.stages.firmware import FIRMWARE_DIR, UBOOT_DIR

GRUB_TIMEOUT = 3
# Boots a newly installed kernel gets before GRUB falls back to the factory kernel.
KERNEL_TRIES = 2
GRUBENV_BYTES = 1024
UBOOT_NAME = "u-boot.bin"
FIRMWARE_PATTERNS = ("bootcode.bin", "start*.elf", "fixup*.dat", "LICENCE*")


def kernel_cmdline(ctx: BuildContext) -> str:
    """live-boot finds the squashfs and persistence only on this image's partitions."""
    args = [
        "boot=live",
        f"live-media=/dev/disk/by-label/{ctx.system_label}",
        "persistence",
        f"persistence-label={ctx.persistence_label}",
        f"amberpi.id={ctx.image_id}",
        "console=tty1",
        f"console={ctx.board.serial_console}",
        # A kernel that panics reboots, so GRUB can count the try and fall back.
        "panic=10",
    ]
    if ctx.config.kernel_cmdline:
        args.append(ctx.config.kernel_cmdline)
    return " ".join(args)


def write_grubenv(target: Path, variables: list[tuple[str, str]]) -> None:
    """GRUB's environment block: exactly 1024 bytes, '#'-padded, so GRUB can rewrite it in place."""
    unpadded = render("grubenv.j2", variables=variables, padding="")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render("grubenv.j2", variables=variables, padding="#" * (GRUBENV_BYTES - len(unpadded))))
    if target.stat().st_size != GRUBENV_BYTES:
        raise StageError(f"grubenv is {target.stat().st_size} bytes, not {GRUBENV_BYTES}", where=str(target))


def find_grubenv(image: Path, expected: bytes) -> int:
    """Byte offset of grubenv inside the FAT image; it must be one contiguous 1024-byte run."""
    data = image.read_bytes()
    offset = data.find(expected[:512])
    if offset < 0 or offset % 512 or data[offset : offset + len(expected)] != expected or data.find(expected[:512], offset + 1) >= 0:
        raise StageError("grub/grubenv is not stored as one contiguous block in the boot partition", where=str(image))
    return offset


def copy_raspi_firmware(ctx: BuildContext, firmware: Artefact, squash: Artefact, tree: Path) -> None:
    files = firmware.path / "files"
    sources = [p for pattern in FIRMWARE_PATTERNS for p in sorted((files / FIRMWARE_DIR).glob(pattern))]
    if not any(p.name == "start.elf" for p in sources) and not any(p.name.startswith("start4") for p in sources):
        raise StageError("raspi-firmware has no start*.elf", where=str(files / FIRMWARE_DIR), hint="rebuild with --no-cache")
    for source in sources:
        shutil.copy2(source, tree / source.name)
    uboot = files / UBOOT_DIR / ctx.board.uboot
    if not uboot.is_file():
        raise StageError(
            f"U-Boot binary {ctx.board.uboot} is missing",
            where=f"board {ctx.board.name}: uboot",
            hint="use a path from u-boot-rpi, e.g. rpi_arm64/u-boot.bin",
        )
    shutil.copy2(uboot, tree / UBOOT_NAME)
    for dtb in ctx.board.device_trees:
        shutil.copy2(squash.path / "boot" / "dtbs" / dtb, tree / Path(dtb).name)
    write_rendered(tree / "config.txt", "config.txt.j2", board=ctx.board.name, uboot=UBOOT_NAME, sections=ctx.board.config_txt)


class BootfsStage(Stage):
    name = "bootfs"
    title = "Writing the boot partition (FAT32, GRUB{firmware})"
    version = 2
    needs = ("squash", "firmware")

    def tools(self, ctx: BuildContext) -> list[str]:
        return ["mkfs.vfat", "mcopy"]

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {"image_id": ctx.image_id, "cmdline": kernel_cmdline(ctx), "board": ctx.board.name}

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        squash = upstream["squash"]
        tree = out / "tree"
        (tree / "EFI" / "BOOT").mkdir(parents=True)
        shutil.copy2(squash.path / "boot" / "BOOTAA64.EFI", tree / "EFI" / "BOOT" / "BOOTAA64.EFI")
        write_rendered(
            tree / "grub" / "grub.cfg",
            "grub.cfg.j2",
            board=ctx.board.name,
            image_id=ctx.image_id,
            timeout=GRUB_TIMEOUT,
            cmdline=kernel_cmdline(ctx),
            kernel_label=ctx.kernel_label,
            factory_version=squash.meta["kernel_version"],
            tries=KERNEL_TRIES,
        )
        write_grubenv(tree / "grub" / "grubenv", [("amberpi_state", "good"), ("amberpi_version", squash.meta["kernel_version"])])
        if ctx.board.firmware == "raspi":
            copy_raspi_firmware(ctx, upstream["firmware"], squash, tree)
        epoch = squash.meta["source_date_epoch"]
        make_fat(tree, out / "p1.img", size_mib=ctx.config.boot_size_mib, label="AMBERPI", volume_id=ctx.image_id, epoch=epoch)
        # The device rewrites grubenv in place on the raw partition, as GRUB does.
        offset = find_grubenv(out / "p1.img", (tree / "grub" / "grubenv").read_bytes())
        return Artefact(out, {"grubenv_offset": offset})
