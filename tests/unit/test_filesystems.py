"""ISO9660 (pycdlib), FAT (mtools) and ext4 (debugfs) writers, checked by reading back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from amberpi.fatfs import list_fat, make_fat, read_fat_file
from amberpi.isofs import list_iso, make_iso, read_iso_file, volume_id
from amberpi.stages.persistence import make_ext4, partition_uuid


def make_tree(root: Path) -> Path:
    (root / "live").mkdir(parents=True)
    (root / "live" / "filesystem.squashfs").write_bytes(b"S" * 5000)
    (root / "dtbs" / "broadcom").mkdir(parents=True)
    for name in ("bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb", "bcm2837-rpi-cm3-io3.dtb"):
        (root / "dtbs" / "broadcom" / name).write_bytes(name.encode())
    (root / "vmlinuz").write_bytes(b"kernel")
    return root


def test_iso_round_trip_keeps_rock_ridge_names(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    iso = tmp_path / "p.iso"
    make_iso(tree, iso, volume_id="AMBERPI_SYS_1A2B3C4D")
    files = list_iso(iso)
    assert files["/live/filesystem.squashfs"] == 5000
    assert {"/dtbs/broadcom/bcm2837-rpi-3-b.dtb", "/dtbs/broadcom/bcm2837-rpi-3-b-plus.dtb"} <= set(files)
    assert read_iso_file(iso, "/dtbs/broadcom/bcm2837-rpi-3-b-plus.dtb") == b"bcm2837-rpi-3-b-plus.dtb"
    assert volume_id(iso) == "AMBERPI_SYS_1A2B3C4D"


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso reads the ISO independently")
def test_iso_readable_by_xorriso(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    iso = tmp_path / "p.iso"
    make_iso(tree, iso, volume_id="AMBERPI_KRN_1A2B3C4D")
    out = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"], capture_output=True, text=True, check=True)
    assert "'/live/filesystem.squashfs'" in out.stdout


def test_fat_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "EFI" / "BOOT" / "BOOTAA64.EFI").write_bytes(b"grub")
    (tree / "config.txt").write_text("arm_64bit=1\n")
    image = tmp_path / "p1.img"
    make_fat(tree, image, size_mib=64, label="AMBERPI", volume_id="1a2b3c4d")
    names = list_fat(image)
    assert "/EFI/BOOT/BOOTAA64.EFI" in names and "/config.txt" in names
    assert read_fat_file(image, "/config.txt") == b"arm_64bit=1\n"
    assert image.stat().st_size == 64 << 20


def test_ext4_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "persistence.conf").write_text("/ union\n")
    image = tmp_path / "p4.img"
    fs_uuid = partition_uuid("1a2b3c4d", "persistence")
    make_ext4(tree, image, size_mib=64, label="amberpi-1a2b3c4d", fs_uuid=fs_uuid)
    cat = subprocess.run(["debugfs", "-R", "cat /persistence.conf", str(image)], capture_output=True, text=True, check=True)
    assert cat.stdout == "/ union\n"
    stats = subprocess.run(["debugfs", "-R", "stats", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Filesystem volume name:   amberpi-1a2b3c4d" in stats
    assert f"Filesystem UUID:          {fs_uuid}" in stats
