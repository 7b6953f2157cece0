"""A pi3 image's card made ready for `qemu-system-aarch64 -M raspi3b`: for
tests/boot/test_raspi3b.py and bench/boot.py --raspi3b.

QEMU does not run the VideoCore firmware (bootcode.bin, start.elf, config.txt), so QEMU is
handed the U-Boot and device tree the image's p1 carries, as the firmware would; from there
it is the image's own chain: U-Boot's EFI boot of GRUB from p1, GRUB's kernel from p3,
live-boot's system from p2 and persistence on p4, a login on the mini-UART (ttyS1).

Under QEMU the machine resets as soon as systemd starts the Pi's watchdog (bcm2835_wdt;
QEMU's power-management model seems to reset at once rather than count down), so the copy's
grub.cfg also tells the kernel not to load it; a real Pi's watchdog is what only hardware proves.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.imagetools import partition_range
from tests.vm import RaspiVM

DEVICE_TREE = "bcm2837-rpi-3-b.dtb"


def copy_from_p1(image: Path, name: str, target: Path) -> Path:
    offset, _ = partition_range(image, 1)
    subprocess.run(["mcopy", "-n", "-i", f"{image}@@{offset}", f"::{name}", str(target)], check=True)
    return target


def without_the_pi_watchdog(card: Path, folder: Path) -> None:
    """Every entry of the card's GRUB menu passes modprobe.blacklist=bcm2835_wdt (see above)."""
    grub_cfg = copy_from_p1(card, "grub/grub.cfg", folder / "grub.cfg")
    text = grub_cfg.read_text()
    assert text.count(" quickusbmodules") == 1, "the one line of arguments every entry passes"
    grub_cfg.write_text(text.replace(" quickusbmodules", " quickusbmodules modprobe.blacklist=bcm2835_wdt"))
    offset, _ = partition_range(card, 1)
    subprocess.run(["mcopy", "-o", "-i", f"{card}@@{offset}", str(grub_cfg), "::grub/grub.cfg"], check=True)


# The SD card raspi3b_vm makes in the folder it is given.
CARD_NAME = "sd.img"


def raspi3b_vm(image: Path, folder: Path, console_log: Path) -> RaspiVM:
    """A fresh copy of the image as the SD card of a Pi 3 B (not started): FOLDER/CARD_NAME."""
    card = folder / CARD_NAME
    subprocess.run(["cp", "--sparse=always", str(image), str(card)], check=True)
    # QEMU's SD card must be a power of two in size: a larger card, as a real one is.
    size = card.stat().st_size
    with card.open("r+b") as handle:
        handle.truncate(1 << (size - 1).bit_length())
    uboot = copy_from_p1(image, "u-boot.bin", folder / "u-boot.bin")
    device_tree = copy_from_p1(image, DEVICE_TREE, folder / DEVICE_TREE)
    without_the_pi_watchdog(card, folder)
    return RaspiVM(card, console_log=console_log, uboot=uboot, device_tree=device_tree)
