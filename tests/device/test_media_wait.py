"""The initramfs media-wait script, under dash and busybox sh, against files standing in for devices."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.device.devicekit import LIB, LIVE_BOOT_DISK, SYSTEM_LABEL, fake_tool, make_boot_partition

SCRIPT = REPO / "amberpi/device/rootfs/etc/initramfs-tools/scripts/live-premount/amberpi-media"
SHELLS = [["dash"], ["busybox", "sh"]]
BY_LABEL = f"/dev/disk/by-label/{SYSTEM_LABEL}"
# blkid as the scripts parse it; a partition's label is in the file NAME.label beside it.
FAKE_BLKID = '[ -f "$1.label" ] || exit 2\necho "$1: LABEL=\\"$(cat "$1.label")\\" TYPE=\\"iso9660\\""\n'


def run_script(
    shell: list[str], tmp_path: Path, cmdline: str, wait: int = 1, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which(shell[0]) is None:
        pytest.fail(f"{shell[0]} is not installed (tests/run.py installs it)")
    cmdline_file = tmp_path / "cmdline"
    cmdline_file.write_text(cmdline + "\n")
    functions = tmp_path / "functions"
    functions.write_text('panic() { echo "PANIC: $*"; exit 1; }\n')  # initramfs-tools' panic, which never returns
    full_env = {
        "PATH": "/usr/bin:/bin",
        "AMBERPI_LIB": str(LIB),
        "AMBERPI_RUN_DIR": str(tmp_path / "run"),
        "AMBERPI_SYS_DIR": str(tmp_path / "sys"),
        "AMBERPI_DEV_DIR": str(tmp_path / "dev"),
        "AMBERPI_CMDLINE_FILE": str(cmdline_file),
        "AMBERPI_MEDIA_WAIT": str(wait),
        "AMBERPI_INITRAMFS_FUNCTIONS": str(functions),
        **(env or {}),
    }
    return subprocess.run([*shell, str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=60)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_prereqs(shell: list[str], tmp_path: Path) -> None:
    result = subprocess.run([*shell, str(SCRIPT), "prereqs"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == ""


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_no_live_media_returns_at_once(shell: list[str], tmp_path: Path) -> None:
    result = run_script(shell, tmp_path, "boot=live quiet")
    assert result.returncode == 0 and result.stdout == ""


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_present_media_found(shell: list[str], tmp_path: Path) -> None:
    device = tmp_path / "dev-disk-by-label-AMBERPI_SYS_1A2B3C4D"
    device.write_bytes(b"")
    # The script only accepts /dev/ paths from the command line; a symlink under /dev/shm stands in.
    link = Path("/dev/shm") / f"amberpi-test-{tmp_path.name}"
    link.symlink_to(device)
    try:
        result = run_script(shell, tmp_path, f"boot=live live-media={link} persistence")
    finally:
        link.unlink()
    assert result.returncode == 0
    assert f"amberpi: system partition {device} found after 0s" in result.stdout
    assert (tmp_path / "run/system-partition").read_text() == f"{device}\n", "recorded for live-boot and the device tools"


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_missing_media_stops_the_boot_rather_than_scan_other_disks(shell: list[str], tmp_path: Path) -> None:
    """live-boot would go on to boot any disk with a live/filesystem.squashfs: another stick in this device's place."""
    result = run_script(shell, tmp_path, "boot=live live-media=/dev/disk/by-label/AMBERPI_SYS_ABSENT00", wait=2)
    assert result.returncode == 1
    assert "PANIC: amberpi: system partition /dev/disk/by-label/AMBERPI_SYS_ABSENT00 did not appear within 2s" in result.stdout
    assert "Not booting from any other disk in its place" in result.stdout


class Disks:
    """Whole disks as the initramfs sees them: sysfs folders and /dev files, each disk's p1
    a real FAT holding grub/grubenv, its p2 carrying the system partition's label."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sys = tmp / "sys"
        self.dev = tmp / "dev"
        (self.sys / "class/block").mkdir(parents=True)
        self.dev.mkdir()
        self.fakebin = tmp / "fakebin"
        fake_tool(self.fakebin, "blkid", FAKE_BLKID)

    def add(self, name: str, grubenv: dict[str, str], label: str = SYSTEM_LABEL) -> None:
        disk = self.sys / "devices/pci0000:00" / name
        for number in (1, 2):
            part = disk / f"{name}{number}"
            part.mkdir(parents=True)
            (part / "partition").write_text(f"{number}\n")
            (self.sys / "class/block" / part.name).symlink_to(part)
        (self.sys / "class/block" / name).symlink_to(disk)
        make_boot_partition(self.dev / f"{name}1", grubenv)
        (self.dev / f"{name}2").write_bytes(b"")
        (self.dev / f"{name}2.label").write_text(label)

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.fakebin}:/usr/bin:/bin", "AMBERPI_SYS_DIR": str(self.sys), "AMBERPI_DEV_DIR": str(self.dev)}


CLAIMED = {"amberpi_state": "good", "amberpi_token": "5555666677778888", "amberpi_claim": "1111222233334444"}
# A byte copy of the image that never booted: the build's token, no claim.
FRESH_COPY = {"amberpi_state": "good", "amberpi_token": "1111222233334444"}


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("order", ["booted-first", "copy-first"])
def test_the_disk_grub_claimed_is_used_and_a_copy_is_not(shell: list[str], tmp_path: Path, order: str) -> None:
    disks = Disks(tmp_path)
    booted, copy = ("vda", "vdb") if order == "booted-first" else ("vdb", "vda")
    disks.add(copy, FRESH_COPY)
    disks.add(booted, CLAIMED)
    result = run_script(shell, tmp_path, f"boot=live live-media={BY_LABEL} amberpi.claim=1111222233334444", env=disks.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"system partition {disks.dev}/{booted}2 found after 0s on the disk GRUB booted from" in result.stdout
    assert (tmp_path / "run/system-partition").read_text() == f"{disks.dev}/{booted}2\n"
    assert (tmp_path / "run/system-disk").read_text() == f"{disks.dev}/{booted}\n", "live-boot scans this disk only"


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_two_disks_holding_the_claim_stop_the_boot(shell: list[str], tmp_path: Path) -> None:
    """A copy taken between GRUB's claim and the new token: neither can be told apart, neither is used."""
    disks = Disks(tmp_path)
    disks.add("vda", CLAIMED)
    disks.add("vdb", CLAIMED)
    result = run_script(shell, tmp_path, f"boot=live live-media={BY_LABEL} amberpi.claim=1111222233334444", env=disks.env)
    assert result.returncode == 1
    assert f"PANIC: amberpi: 2 disks hold this device's system partition and identity: {disks.dev}/vda2 {disks.dev}/vdb2." in result.stdout
    assert "detach it and boot again" in result.stdout
    assert not (tmp_path / "run/system-partition").exists()


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_mode_that_writes_nothing_finds_its_disk_by_token(shell: list[str], tmp_path: Path) -> None:
    disks = Disks(tmp_path)
    disks.add("vda", FRESH_COPY)
    disks.add("vdb", CLAIMED)
    result = run_script(shell, tmp_path, f"boot=live live-media={BY_LABEL} amberpi.token=5555666677778888", env=disks.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "run/system-partition").read_text() == f"{disks.dev}/vdb2\n"
    # The same token on two disks (a copy that never booted since): said, and neither booted.
    disks.add("vdc", CLAIMED)
    result = run_script(shell, tmp_path, f"boot=live live-media={BY_LABEL} amberpi.token=5555666677778888", env=disks.env)
    assert result.returncode == 1 and "2 disks hold this device's system partition" in result.stdout
    assert "boot once in a mode that keeps changes" in result.stdout


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_no_disk_holding_the_claim_stops_the_boot_naming_the_others(shell: list[str], tmp_path: Path) -> None:
    disks = Disks(tmp_path)
    disks.add("vda", FRESH_COPY)
    disks.add("vdb", {"amberpi_token": "0"}, label="AMBERPI_SYS_0BADC0DE")
    result = run_script(shell, tmp_path, f"boot=live live-media={BY_LABEL} amberpi.claim=1111222233334444", wait=2, env=disks.env)
    assert result.returncode == 1
    expected = "the system partition on the disk GRUB booted from (its grubenv holds amberpi_claim=1111222233334444)"
    assert f"{expected} did not appear within 2s" in result.stdout
    assert f"(partitions labelled {SYSTEM_LABEL}, on disks without that claim: {disks.dev}/vda2)" in result.stdout
    assert "Not booting from any other disk in its place" in result.stdout


LIVE_BOOT_HELPERS = """
sys2dev() { echo "/dev/${1##*/}"; }
subdevices() { for d in "$1"/* "$1"; do [ -e "$d/dev" ] && echo "$d"; done; }
is_in_space_sep_list() { e=$1; shift; for i in "$@"; do [ "$i" = "$e" ] && return 0; done; return 1; }
"""


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_live_boot_scans_only_the_chosen_disk(shell: list[str], tmp_path: Path) -> None:
    """storage_devices() as live-boot calls it, with stand-ins for live-boot's helpers."""
    block = tmp_path / "sys/block"
    for disk in ("vda", "vdb", "loop0"):
        for node in (disk, f"{disk}/{disk}1", f"{disk}/{disk}2"):
            (block / node).mkdir(parents=True)
            (block / node / "dev").write_text("254:0\n")
    run = tmp_path / "run"
    run.mkdir()
    script = f'{LIVE_BOOT_HELPERS}. "{LIVE_BOOT_DISK}"\nstorage_devices "$1" "$2"\n'
    env = {"PATH": "/usr/bin:/bin", "AMBERPI_SYS_DIR": str(tmp_path / "sys"), "AMBERPI_RUN_DIR": str(run)}

    def scan(black: str = "", white: str = "") -> list[str]:
        out = subprocess.run([*shell, "-c", script, "sh", black, white], capture_output=True, text=True, env=env, check=True)
        return sorted(out.stdout.split())

    everything = ["/dev/vda", "/dev/vda1", "/dev/vda2", "/dev/vdb", "/dev/vdb1", "/dev/vdb2"]
    assert scan() == everything, "no choice recorded: every disk, as live-boot does"
    assert scan(black="/dev/vda2") == [d for d in everything if d != "/dev/vda2"]
    assert scan(white="/dev/vdb") == ["/dev/vdb", "/dev/vdb1", "/dev/vdb2"]
    (run / "system-disk").write_text("/dev/vdb\n")
    assert scan() == ["/dev/vdb", "/dev/vdb1", "/dev/vdb2"], "only this boot's disk"
    assert scan(black="/dev/vdb2") == ["/dev/vdb", "/dev/vdb1"]
    assert scan(white="/dev/vda") == [], "a white list cannot bring another disk back"
