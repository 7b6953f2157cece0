"""The pi3 image's own boot chain under `qemu-system-aarch64 -M raspi3b`: one boot.

QEMU does not run the VideoCore firmware (bootcode.bin, start.elf, config.txt), so
the test hands QEMU the U-Boot and device tree that image's p1 carries, as the
firmware would; from there it is the image's own chain: U-Boot's EFI boot of GRUB
from p1, GRUB's kernel from p3, live-boot's system from p2 and persistence on p4,
all on the SD card (mmcblk0), and a login on the mini-UART (ttyS1).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_PASSWORD, BuiltImage
from tests.imagetools import partition_range
from tests.measurements import record
from tests.vm import RaspiVM

pytestmark = pytest.mark.boot


def copy_from_p1(image: Path, name: str, target: Path) -> Path:
    offset, _ = partition_range(image, 1)
    subprocess.run(["mcopy", "-n", "-i", f"{image}@@{offset}", f"::{name}", str(target)], check=True)
    return target


def test_pi3_image_boots_through_its_own_uboot_and_grub(pi3_image: BuiltImage, tmp_path: Path) -> None:
    card = tmp_path / "sd.img"
    subprocess.run(["cp", "--sparse=always", str(pi3_image.path), str(card)], check=True)
    # QEMU's SD card must be a power of two in size: a larger card, as a real one is.
    size = card.stat().st_size
    with card.open("r+b") as handle:
        handle.truncate(1 << (size - 1).bit_length())
    uboot = copy_from_p1(pi3_image.path, "u-boot.bin", tmp_path / "u-boot.bin")
    device_tree = copy_from_p1(pi3_image.path, "bcm2837-rpi-3-b.dtb", tmp_path / "bcm2837-rpi-3-b.dtb")
    vm = RaspiVM(card, console_log=tmp_path / "console.log", uboot=uboot, device_tree=device_tree)
    try:
        vm.start()
        vm.expect("U-Boot", 300)
        vm.expect("GNU GRUB", 600)
        seconds = vm.wait_for_login(1800)
        record(f"pi3 image under -M raspi3b: login after {seconds:.0f}s")
        vm.login("root", TEST_PASSWORD, timeout=300)
        assert "Raspberry Pi 3 Model B" in vm.check("tr -d '\\0' < /proc/device-tree/model")
        cmdline = vm.check("cat /proc/cmdline")
        assert "amberpi.kernel=current" in cmdline and "console=ttyS1,115200" in cmdline, "GRUB booted the kernel on p3"
        assert vm.check("findmnt -n -o SOURCE /run/live/medium") == "/dev/mmcblk0p2"
        assert vm.check("findmnt -n -o SOURCE /run/live/persistence/mmcblk0p4") == "/dev/mmcblk0p4"
        assert vm.check("findmnt -n -o FSTYPE /") == "overlay"
    finally:
        vm.close()
