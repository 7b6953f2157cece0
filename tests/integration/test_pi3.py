"""The pi3 image: Pi firmware, U-Boot, DTB and config.txt on p1, the same GRUB as qemu."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi.filesystems.fat import list_fat, read_fat_file
from tests.conftest import BuiltImage
from tests.imagetools import extract_partition, partition_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pi3_boot(pi3_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_partition(pi3_image.path, 1, tmp_path_factory.mktemp("pi3") / "p1.img")


def test_firmware_and_uboot(pi3_boot: Path) -> None:
    names = set(list_fat(pi3_boot))
    for required in ("/bootcode.bin", "/start.elf", "/fixup.dat", "/u-boot.bin", "/bcm2837-rpi-3-b.dtb", "/config.txt"):
        assert required in names, f"{required} missing from p1"
    assert read_fat_file(pi3_boot, "/bcm2837-rpi-3-b.dtb")[:4] == b"\xd0\x0d\xfe\xed", "a flattened device tree"
    assert b"U-Boot" in read_fat_file(pi3_boot, "/u-boot.bin")


def test_config_txt_chains_uboot(pi3_boot: Path) -> None:
    text = read_fat_file(pi3_boot, "/config.txt").decode()
    assert "arm_64bit=1" in text.splitlines()
    assert "kernel=u-boot.bin" in text.splitlines()
    assert "device_tree=bcm2837-rpi-3-b.dtb" in text.splitlines()


def test_same_grub_as_qemu(pi3_boot: Path, qemu_image: BuiltImage, tmp_path: Path) -> None:
    qemu_boot = extract_partition(qemu_image.path, 1, tmp_path / "qemu-p1.img")
    grub = "/EFI/BOOT/BOOTAA64.EFI"
    assert read_fat_file(pi3_boot, grub) == read_fat_file(qemu_boot, grub)
    cfg = read_fat_file(pi3_boot, "/grub/grub.cfg").decode()
    assert "console=ttyS1,115200" in cfg


def test_pi3_layout_and_reuse(pi3_image: BuiltImage) -> None:
    table = partition_table(pi3_image.path)
    assert [p["type"] for p in table["partitions"]] == ["c", "83", "83", "83"]
    statuses = {s["name"]: s["status"] for s in pi3_image.report["stages"]}
    assert statuses["squash"] == "cached", "the pi3 build reuses the rootfs the qemu build made"
