"""amberpi-kernel install in each resilience mode: it writes p3 only when the root file system persists."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.device.devicekit import FACTORY, LIB, SHELLS, Device, make_device, require

NEW = "6.16.3+bpo-arm64"
DTB = "broadcom/bcm2837-rpi-3-b.dtb"
SQUASHFS_ROOT = "overlay / overlay rw,noatime,lowerdir=/run/live/rootfs/filesystem.squashfs/"


def add_kernel(root: Path, version: str) -> None:
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot" / f"vmlinuz-{version}").write_bytes(b"K" * 3000 + version.encode())
    (root / "boot" / f"initrd.img-{version}").write_bytes(b"I" * 2000 + version.encode())
    (root / "usr/lib/modules" / version).mkdir(parents=True, exist_ok=True)
    dtb = root / f"usr/lib/linux-image-{version}" / DTB
    dtb.parent.mkdir(parents=True, exist_ok=True)
    dtb.write_bytes(b"\xd0\x0d\xfe\xed" + version.encode())


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    require("xorriso")
    device = make_device(tmp_path, request.param)
    root = tmp_path / "root"
    add_kernel(root, FACTORY)
    add_kernel(root, NEW)
    with (device.parts / "p3").open("wb") as handle:
        handle.truncate(8 << 20)
    (device.parts / "p4").write_bytes(b"")
    device.env.update(AMBERPI_LIB=str(LIB), AMBERPI_ROOT=str(root), AMBERPI_WORK_DIR=str(tmp_path / "work"))
    return device


def unchanged(device: Device) -> tuple[str, str]:
    return hashlib.sha256((device.parts / "p3").read_bytes()).hexdigest(), hashlib.sha256(device.p1_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("readonly", "it runs in readonly mode: the root file system's changes live in RAM"),
        ("toram", "it runs in toram mode: the whole system lives in RAM"),
    ],
)
def test_refused_without_a_persistent_root(device: Device, mode: str, why: str) -> None:
    device.set_state(MODE=mode, SOURCE="device")
    device.set_mounts(f"{SQUASHFS_ROOT},upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work 0 0")
    before = unchanged(device)
    result = device.tool("amberpi-kernel", "install", NEW)
    assert result.returncode == 3
    assert f"this system runs without persistence of its root file system ({why})" in result.stderr
    assert "'amberpi-mode set persistent --once', reboot, and install it again" in result.stderr
    assert unchanged(device) == before


def test_refused_in_readonly_with_the_partition_shown_read_only(device: Device) -> None:
    """live-boot's persistence-read-only: p4 mounted ro, its rw/ a lower layer, the upper layer on tmpfs."""
    device.set_state(MODE="readonly", SOURCE="config", P4_VIEW="ro", SUPERBLOCK="clean", PERSISTENCE_DEVICE=str(device.parts / "p4"))
    device.set_mounts(
        f"{device.parts / 'p4'} /run/live/persistence/mmcblk0p4 ext4 ro,noatime 0 0",
        "tmpfs /run/live/overlay tmpfs rw,noatime,mode=755 0 0",
        "overlay / overlay rw,noatime,lowerdir=/run/live/persistence/mmcblk0p4/rw:/run/live/rootfs/filesystem.squashfs/,"
        "upperdir=/run/live/overlay//root/rw,workdir=/run/live/overlay//root/work,redirect_dir=on 0 0",
    )
    before = unchanged(device)
    result = device.tool("amberpi-kernel", "install", NEW)
    assert result.returncode == 3
    assert "this system runs without persistence of its root file system (it runs in readonly mode" in result.stderr
    assert "'amberpi-mode set persistent --once', reboot, and install it again" in result.stderr
    assert unchanged(device) == before


def test_refused_when_only_selected_paths_persist(device: Device) -> None:
    device.set_state(MODE="persistent", SOURCE="config")
    device.set_mounts(
        f"{device.parts / 'p4'} /run/live/persistence/mmcblk0p4 ext4 rw,noatime 0 0",
        f"{SQUASHFS_ROOT},upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work 0 0",
        "overlay /home overlay rw,noatime,lowerdir=/run/live/rootfs/filesystem.squashfs/home,"
        "upperdir=/run/live/persistence/mmcblk0p4/home/rw,workdir=/run/live/persistence/mmcblk0p4/home/work 0 0",
    )
    before = unchanged(device)
    result = device.tool("amberpi-kernel", "install", NEW)
    assert result.returncode == 3 and "only selected paths persist (persistence.conf), not the root file system" in result.stderr
    assert unchanged(device) == before


def test_refused_when_the_persistence_partition_is_not_in_use(device: Device) -> None:
    device.set_state(MODE="persistent", SOURCE="config", REASON="live-boot did not mount it")
    result = device.tool("amberpi-kernel", "install", NEW)
    assert result.returncode == 3 and "its persistence partition is not in use (live-boot did not mount it)" in result.stderr


@pytest.mark.parametrize("mode", ["persistent", "toram-persistent"])
def test_installs_when_the_root_persists(device: Device, mode: str) -> None:
    device.set_state(MODE=mode, SOURCE="config")
    device.set_mounts(
        f"{device.parts / 'p4'} /run/live/persistence/mmcblk0p4 ext4 rw,noatime 0 0",
        f"{SQUASHFS_ROOT},upperdir=/run/live/persistence/mmcblk0p4/rw,workdir=/run/live/persistence/mmcblk0p4/work,redirect_dir=on 0 0",
    )
    result = device.tool("amberpi-kernel", "install", NEW)
    assert result.returncode == 0, result.stderr
    assert device.grubenv()["amberpi_state"] == "new" and device.grubenv()["amberpi_version"] == NEW


def test_the_factory_kernel_needs_no_persistent_root(device: Device) -> None:
    """Its modules are on the system partition: only selected paths persisting is enough. On trial, as every write."""
    device.set_state(MODE="persistent", SOURCE="config")
    result = device.tool("amberpi-kernel", "install", FACTORY)
    assert result.returncode == 0, result.stderr
    assert device.grubenv()["amberpi_state"] == "new"


@pytest.mark.parametrize("mode", ["readonly", "toram"])
def test_a_mode_that_writes_nothing_never_writes_the_factory_kernel(device: Device, mode: str) -> None:
    """An apt upgrade in readonly mode regenerates the factory initrd: it stays in RAM, the card is not written."""
    device.set_state(MODE=mode, SOURCE="config")
    before = unchanged(device)
    result = device.tool("amberpi-kernel", "install", FACTORY)
    assert result.returncode == 3
    assert f"this boot runs in {mode} mode, which writes nothing to the card" in result.stderr
    assert unchanged(device) == before


def test_a_trial_without_its_modules_is_not_confirmed(tmp_path: Path) -> None:
    """A boot in readonly mode does not see the overlay, so the new kernel ran without its modules."""
    write = "2026-01-02-03-04-05-00"
    for shell in SHELLS:
        (tmp_path / shell[0]).mkdir()
        on_trial = {"amberpi_state": "new", "amberpi_version": NEW, "amberpi_tries": "1", "amberpi_krn_uuid": write}
        device = make_device(tmp_path / shell[0], shell, grubenv=on_trial)
        device.env.update(AMBERPI_LIB=str(LIB), AMBERPI_ROOT=str(tmp_path / shell[0] / "root"))
        device.set_cmdline(f"boot=live amberpi.id=1a2b3c4d amberpi.kernel=trial amberpi.krn_uuid={write}")
        device.set_state(MODE="readonly", SOURCE="device")
        result = device.tool("amberpi-kernel", "confirm")
        assert result.returncode == 0
        assert f"kernel {NEW} is not confirmed: this boot (readonly) runs without its modules" in result.stdout
        assert device.grubenv() == on_trial
        add_kernel(tmp_path / shell[0] / "root", NEW)
        assert "booted fine" in device.tool("amberpi-kernel", "confirm").stdout
        assert device.grubenv() == {"amberpi_state": "good", "amberpi_version": NEW, "amberpi_krn_uuid": write}


def test_status_names_the_unused_partition_as_the_reason_modules_are_missing(tmp_path: Path) -> None:
    """A readonly boot that left the persistence partition out: the modules are there, just not in this boot."""
    for shell in SHELLS:
        (tmp_path / shell[0]).mkdir()
        device = make_device(tmp_path / shell[0], shell, grubenv={"amberpi_state": "good", "amberpi_version": NEW})
        root = tmp_path / shell[0] / "root"
        add_kernel(root, FACTORY)
        device.env.update(AMBERPI_LIB=str(LIB), AMBERPI_ROOT=str(root))
        device.set_state(MODE="readonly", P4_VIEW="none", REASON="the persistence partition was not shut down cleanly")
        status = device.tool("amberpi-kernel", "status").stdout
        assert f"why: this boot does not use the persistence partition, which holds the modules of {NEW}" in status
        assert "(the persistence partition was not shut down cleanly)" in status and "was it reset?" not in status
