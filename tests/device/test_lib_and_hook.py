"""The shared library (partitions found through sysfs, the command line, state files) and the initramfs hook."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.device.devicekit import LIB, LIVE_BOOT_DISK, ROOTFS, SHELLS

HOOK = ROOTFS / "etc/initramfs-tools/hooks/amberpi"


def lib(shell: list[str], env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*shell, "-c", f'set -eu; PROG=test; . "{LIB}"; {code}'], capture_output=True, text=True, env={"PATH": os.environ["PATH"], **env}
    )


def fake_machine(tmp: Path) -> dict[str, str]:
    """/dev and /sys of a Pi booted from mmcblk0, with a second AmberPi stick (sda) of another image."""
    dev, sys_ = tmp / "dev", tmp / "sys"
    (dev / "disk/by-label").mkdir(parents=True)
    (sys_ / "class/block").mkdir(parents=True)
    for disk, labels in (("mmcblk0", "1A2B3C4D"), ("sda", "99999999")):
        prefix = "p" if disk[-1].isdigit() else ""
        disk_dir = sys_ / "devices/platform" / disk / "block" / disk
        (disk_dir / "queue").mkdir(parents=True)
        (disk_dir / "dev").write_text("179:0\n")
        (dev / disk).write_text("")
        for number in range(1, 5):
            name = f"{disk}{prefix}{number}"
            (disk_dir / name).mkdir()
            (disk_dir / name / "partition").write_text(f"{number}\n")
            (sys_ / "class/block" / name).symlink_to(disk_dir / name)
            (dev / name).write_text("")
        (dev / "disk/by-label" / f"AMBERPI_SYS_{labels}").symlink_to(dev / f"{disk}{prefix}2")
    cmdline = tmp / "cmdline"
    cmdline.write_text("boot=live live-media=/dev/disk/by-label/AMBERPI_SYS_1A2B3C4D amberpi.id=1a2b3c4d persistence\n")
    return {
        "AMBERPI_DEV_DIR": str(dev),
        "AMBERPI_SYS_DIR": str(sys_),
        "AMBERPI_CMDLINE_FILE": str(cmdline),
        "AMBERPI_MEDIUM_DIR": str(tmp / "not-mounted"),
        "AMBERPI_MOUNTS_FILE": str(tmp / "mounts"),
    }


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_partitions_are_found_on_the_system_partitions_disk(shell: list[str], tmp_path: Path) -> None:
    env = fake_machine(tmp_path)
    dev = tmp_path / "dev"
    result = lib(shell, env, "partition_device 4; partition_device 1; disk_device; system_label; persistence_label")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        str(dev / "mmcblk0p4"),
        str(dev / "mmcblk0p1"),
        str(dev / "mmcblk0"),
        "AMBERPI_SYS_1A2B3C4D",
        "amberpi-1a2b3c4d",
    ]
    # The other stick's image: its own disk.
    env["AMBERPI_CMDLINE_FILE"] = str(tmp_path / "other")
    (tmp_path / "other").write_text("boot=live amberpi.id=99999999\n")
    assert lib(shell, env, "partition_device 3").stdout.strip() == str(dev / "sda3")


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_missing_partitions(shell: list[str], tmp_path: Path) -> None:
    env = fake_machine(tmp_path)
    result = lib(shell, env, "partition_device 5")
    assert result.returncode == 1 and "has no partition 5" in result.stderr
    result = lib(shell, env, "find_partition 5 || echo none")
    assert result.returncode == 0 and result.stdout.strip() == "none" and result.stderr == ""
    (tmp_path / "dev/disk/by-label/AMBERPI_SYS_1A2B3C4D").unlink()
    result = lib(shell, env, "partition_device 4")
    assert result.returncode == 1 and "cannot find this image's system partition" in result.stderr


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_persistence_mount_and_root_upper(shell: list[str], tmp_path: Path) -> None:
    env = fake_machine(tmp_path)
    p4 = tmp_path / "dev/mmcblk0p4"
    mounts = Path(env["AMBERPI_MOUNTS_FILE"])
    mounts.write_text(
        f"{tmp_path}/dev/sda4 /run/live/persistence/sda4 ext4 rw 0 0\n"
        "overlay / overlay rw,noatime,lowerdir=/run/live/rootfs/filesystem.squashfs/,"
        "upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work 0 0\n"
    )
    result = lib(shell, env, "persistence_mount || echo none; root_upper || echo ram")
    assert result.stdout.split() == ["none", "ram"], "another disk's persistence is not ours"
    mounts.write_text(
        f"{p4} /run/live/persistence/mmcblk0p4 ext4 rw,noatime 0 0\n"
        "overlay / overlay rw,noatime,lowerdir=/run/live/rootfs/filesystem.squashfs/,"
        "upperdir=/run/live/persistence/mmcblk0p4/rw,workdir=/run/live/persistence/mmcblk0p4/work,redirect_dir=on 0 0\n"
    )
    result = lib(shell, env, "persistence_mount; root_upper")
    assert result.stdout.split() == ["/run/live/persistence/mmcblk0p4", "/run/live/persistence/mmcblk0p4/rw"]
    # readonly: live-boot's persistence-read-only stacks p4's rw/ under an upper layer on tmpfs.
    mounts.write_text(
        f"{p4} /run/live/persistence/mmcblk0p4 ext4 ro,noatime 0 0\n"
        "overlay / overlay rw,noatime,lowerdir=/run/live/persistence/mmcblk0p4/rw:/run/live/rootfs/filesystem.squashfs/,"
        "upperdir=/run/live/overlay//root/rw,workdir=/run/live/overlay//root/work,redirect_dir=on 0 0\n"
    )
    result = lib(shell, env, "persistence_mount; root_upper || echo ram")
    assert result.stdout.split() == ["/run/live/persistence/mmcblk0p4", "ram"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_command_line_and_state_files(shell: list[str], tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("amberpi.mode=readonly quiet amberpi.mode=toram x=1=2\n")
    state = tmp_path / "state"
    state.write_text("MODE=readonly\nREASON='it'\\''s \"damaged\"'\nEMPTY=\nQUOTED=\"a b\"\n")
    result = lib(
        shell,
        {"AMBERPI_CMDLINE_FILE": str(cmdline)},
        f"cmdline_value amberpi.mode; cmdline_last amberpi.mode; cmdline_count amberpi.mode; cmdline_value x; cmdline_value none; "
        f"kv_get {state} REASON; kv_get {state} EMPTY fallback; kv_get {state} QUOTED; kv_get {state}.missing MODE dflt",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["readonly", "toram", "2", "1=2", 'it\'s "damaged"', "fallback", "a b", "dflt"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_image_settings_come_from_the_initramfs_copy_first(shell: list[str], tmp_path: Path) -> None:
    """In toram the medium in RAM has no .disk/: the copy the initramfs kept in /run/amberpi/disk is read."""
    medium, run = tmp_path / "medium", tmp_path / "run"
    (medium / ".disk").mkdir(parents=True)
    (medium / ".disk" / "amberpi.conf").write_text("factory_version=on-the-medium\n")
    env = {"AMBERPI_MEDIUM_DIR": str(medium), "AMBERPI_RUN_DIR": str(run)}
    assert lib(shell, env, "image_conf factory_version").stdout.strip() == "on-the-medium"
    (run / "disk").mkdir(parents=True)
    (run / "disk" / "amberpi.conf").write_text("factory_version=kept-at-boot\n")
    shutil.rmtree(medium / ".disk")
    assert lib(shell, env, "image_conf factory_version").stdout.strip() == "kept-at-boot"


# --- the initramfs hook -----------------------------------------------------------

FAKE_HOOK_FUNCTIONS = """
copy_exec() {
	echo "copy_exec $*" >> "$FAKE_LOG"
}
"""


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_hook_copies_what_the_script_needs(shell: list[str], tmp_path: Path) -> None:
    functions = tmp_path / "hook-functions"
    functions.write_text(FAKE_HOOK_FUNCTIONS)
    destdir = tmp_path / "initrd"
    destdir.mkdir()
    e2fsck = tmp_path / "e2fsck"
    e2fsck.write_text("#!/bin/sh\n")
    e2fsck.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "DESTDIR": str(destdir),
        "AMBERPI_HOOK_FUNCTIONS": str(functions),
        "AMBERPI_LIB": str(LIB),
        "AMBERPI_LIVE_BOOT_DISK": str(LIVE_BOOT_DISK),
        "AMBERPI_HOOK_TOOLS": f"{e2fsck} {tmp_path}/gpioget",
        "AMBERPI_GCONV_DIRS": f"{tmp_path}/gconv {tmp_path}/no-gconv",
        "FAKE_LOG": str(tmp_path / "log"),
    }
    (tmp_path / "gconv").mkdir()
    for name in ("IBM850.so", "gconv-modules.cache"):
        (tmp_path / "gconv" / name).write_text(name)
    assert subprocess.run([*shell, str(HOOK), "prereqs"], capture_output=True, text=True).stdout.strip() == ""
    result = subprocess.run([*shell, str(HOOK)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (destdir / "usr/lib/amberpi/lib.sh").read_bytes() == LIB.read_bytes()
    # Last in live-boot's name order, so its storage_devices() is the one live-boot calls.
    assert (destdir / "usr/lib/live/boot/9999-amberpi-disk").read_bytes() == LIVE_BOOT_DISK.read_bytes()
    assert (tmp_path / "log").read_text().splitlines() == [f"copy_exec {e2fsck}", f"copy_exec {tmp_path}/gconv/IBM850.so"]
    # mtype's code page: without it mtools cannot read p1 in the initramfs.
    assert (destdir / str(tmp_path / "gconv/gconv-modules.cache").lstrip("/")).read_text() == "gconv-modules.cache"
    assert f"{tmp_path}/gpioget is not installed" in result.stderr
    assert "broken_system_clock = 1" in (destdir / "etc/e2fsck.conf").read_text()
    env["AMBERPI_LIVE_BOOT_DISK"] = str(tmp_path / "missing-scan")
    result = subprocess.run([*shell, str(HOOK)], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "missing-scan is missing" in result.stderr
    env["AMBERPI_LIB"] = str(tmp_path / "missing")
    result = subprocess.run([*shell, str(HOOK)], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "is missing" in result.stderr


MODULES_HOOK = ROOTFS / "etc/initramfs-tools/hooks/amberpi-modules"
FAKE_MODULE_FUNCTIONS = """
auto_add_modules() { echo "auto_add_modules $*" >> "$FAKE_LOG"; }
manual_add_modules() { echo "manual_add_modules $*" >> "$FAKE_LOG"; }
apply_add_modules() { echo "apply_add_modules" >> "$FAKE_LOG"; }
"""


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_modules_hook_takes_the_local_boot_categories_only_with_a_list(shell: list[str], tmp_path: Path) -> None:
    functions = tmp_path / "hook-functions"
    functions.write_text(FAKE_MODULE_FUNCTIONS)
    log = tmp_path / "log"
    # What live-boot's hook has copied in before: its network drivers, beside the storage ones.
    destdir, modules_dir = tmp_path / "initrd", "/lib/modules/6.12.0-arm64"
    kernel = destdir / modules_dir.lstrip("/") / "kernel/drivers"
    for module in ("net/virtio_net.ko.xz", "net/usb/lan78xx.ko.xz", "mmc/host/sdhci-iproc.ko.xz"):
        (kernel / module).parent.mkdir(parents=True, exist_ok=True)
        (kernel / module).write_text("")
    env = {"PATH": os.environ["PATH"], "AMBERPI_HOOK_FUNCTIONS": str(functions), "FAKE_LOG": str(log), "DESTDIR": str(destdir)}
    env["MODULESDIR"] = modules_dir
    assert subprocess.run([*shell, str(MODULES_HOOK), "prereqs"], capture_output=True, text=True).stdout.strip() == ""
    result = subprocess.run([*shell, str(MODULES_HOOK)], capture_output=True, text=True, env={**env, "MODULES": "most"})
    assert result.returncode == 0 and not log.exists(), "MODULES=most (a user's choice) chooses by itself"
    assert (kernel / "net/virtio_net.ko.xz").exists()
    result = subprocess.run([*shell, str(MODULES_HOOK)], capture_output=True, text=True, env={**env, "MODULES": "list"})
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls == ["auto_add_modules base block mmc usb_storage", "manual_add_modules sd_mod virtio_scsi", "apply_add_modules"]
    assert not {"net", "scsi", "fb"} & set(calls[0].split()), "no network drivers, host adapters or panels"
    assert not (kernel / "net").exists(), "live-boot's network drivers taken out again"
    assert (kernel / "mmc/host/sdhci-iproc.ko.xz").exists()


def test_the_image_asks_for_the_modules_list() -> None:
    conf = (ROOTFS / "etc/initramfs-tools/conf.d/amberpi-modules").read_text()
    assert [line for line in conf.splitlines() if not line.startswith("#")] == ["MODULES=list"]


NO_NETWORK_MODULES = ROOTFS / "etc/live/boot/amberpi-no-network-modules"


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_live_boots_hook_adds_no_network_drivers_and_every_other_category_still(shell: list[str], tmp_path: Path) -> None:
    """live-boot's hook sources hook-functions, then /etc/live/boot/*, then asks for `net`: the
    override makes that call do nothing and hands any other to initramfs-tools' own function."""
    functions = tmp_path / "hook-functions"
    functions.write_text(FAKE_MODULE_FUNCTIONS)
    log = tmp_path / "log"
    live_hook = tmp_path / "live"
    live_hook.write_text(
        f'#!/bin/sh\nset -e\n. "$AMBERPI_HOOK_FUNCTIONS"\nfor _FILE in {tmp_path}/boot/*; do . "$_FILE"; done\n'
        "auto_add_modules net\nauto_add_modules base block\nmanual_add_modules loop\n"
    )
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / NO_NETWORK_MODULES.name).write_text(NO_NETWORK_MODULES.read_text())
    env = {"PATH": os.environ["PATH"], "AMBERPI_HOOK_FUNCTIONS": str(functions), "FAKE_LOG": str(log)}
    result = subprocess.run([*shell, str(live_hook)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["auto_add_modules base block", "manual_add_modules loop"]
    # At boot live-boot may read the file as configuration: it only defines a function.
    sourced = subprocess.run([*shell, "-c", f'set -e; . "{NO_NETWORK_MODULES}"; echo sourced'], capture_output=True, text=True)
    assert (sourced.returncode, sourced.stdout) == (0, "sourced\n")
