"""ISO9660 (pycdlib), FAT (mtools) and ext4 (debugfs) writers, checked by reading back."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from amberpi.filesystems.ext4 import make_ext4
from amberpi.filesystems.fat import list_fat, make_fat, read_fat_file
from amberpi.filesystems.iso9660 import list_iso, make_iso, read_iso_file, volume_id
from amberpi.identity import ImageIdentity
from tests.conftest import EPOCH

OTHER_UUID = ImageIdentity("x").partition_uuid("y")


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
    make_iso(tree, iso, volume_id="AMBERPI_SYS_1A2B3C4D", epoch=EPOCH)
    files = list_iso(iso)
    assert files["/live/filesystem.squashfs"] == 5000
    assert {"/dtbs/broadcom/bcm2837-rpi-3-b.dtb", "/dtbs/broadcom/bcm2837-rpi-3-b-plus.dtb"} <= set(files)
    assert read_iso_file(iso, "/dtbs/broadcom/bcm2837-rpi-3-b-plus.dtb") == b"bcm2837-rpi-3-b-plus.dtb"
    assert volume_id(iso) == "AMBERPI_SYS_1A2B3C4D"


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso reads the ISO independently")
def test_iso_readable_by_xorriso(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    iso = tmp_path / "p.iso"
    make_iso(tree, iso, volume_id="AMBERPI_KRN_1A2B3C4D", epoch=EPOCH)
    out = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"], capture_output=True, text=True, check=True)
    assert "'/live/filesystem.squashfs'" in out.stdout


def test_fat_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "EFI" / "BOOT" / "BOOTAA64.EFI").write_bytes(b"grub")
    (tree / "config.txt").write_text("arm_64bit=1\n")
    image = tmp_path / "p1.img"
    make_fat(tree, image, size_mib=64, label="AMBERPI", volume_id="1a2b3c4d", epoch=EPOCH)
    names = list_fat(image)
    assert "/EFI/BOOT/BOOTAA64.EFI" in names and "/config.txt" in names
    assert read_fat_file(image, "/config.txt") == b"arm_64bit=1\n"
    assert image.stat().st_size == 64 << 20


def test_ext4_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "persistence.conf").write_text("/ union\n")
    image = tmp_path / "p4.img"
    fs_uuid = ImageIdentity("1a2b3c4d").partition_uuid("persistence")
    make_ext4(tree, image, size_mib=64, label="amberpi-1a2b3c4d", fs_uuid=fs_uuid, epoch=EPOCH)
    cat = subprocess.run(["debugfs", "-R", "cat /persistence.conf", str(image)], capture_output=True, text=True, check=True)
    assert cat.stdout == "/ union\n"
    stats = subprocess.run(["debugfs", "-R", "stats", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Filesystem volume name:   amberpi-1a2b3c4d" in stats
    assert f"Filesystem UUID:          {fs_uuid}" in stats


def test_same_tree_and_epoch_give_the_same_bytes(tmp_path: Path) -> None:
    """Reproducible builds: no writer stamps the clock, the local zone or a random value."""
    images: dict[str, list[bytes]] = {"iso": [], "fat": [], "ext4": []}
    for run in ("a", "b"):
        tree = make_tree(tmp_path / run / "tree")
        make_iso(tree, tmp_path / run / "p.iso", volume_id="AMBERPI_SYS_1A2B3C4D", epoch=EPOCH)
        make_fat(tree, tmp_path / run / "p.fat", size_mib=64, label="AMBERPI", volume_id="1a2b3c4d", epoch=EPOCH)
        make_ext4(tree, tmp_path / run / "p.ext4", size_mib=64, label="amberpi-1a2b3c4d", fs_uuid=OTHER_UUID, epoch=EPOCH)
        for kind, suffix in (("iso", "iso"), ("fat", "fat"), ("ext4", "ext4")):
            images[kind].append((tmp_path / run / f"p.{suffix}").read_bytes())
        time.sleep(1.1)  # the clock moves on between the two runs
    for kind, (first, second) in images.items():
        assert first == second, f"two {kind} images of the same tree differ"
    other = tmp_path / "other.iso"
    make_iso(make_tree(tmp_path / "c" / "tree"), other, volume_id="AMBERPI_SYS_1A2B3C4D", epoch=EPOCH + 1)
    assert other.read_bytes() != images["iso"][0], "the epoch is what the dates come from"
