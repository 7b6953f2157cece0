"""The initramfs media-wait script, under dash and busybox sh, against files standing in for devices."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "amberpi/device/rootfs/etc/initramfs-tools/scripts/live-premount/amberpi-media"
SHELLS = [["dash"], ["busybox", "sh"]]


def run_script(shell: list[str], tmp_path: Path, cmdline: str, wait: int = 1) -> subprocess.CompletedProcess[str]:
    if shutil.which(shell[0]) is None:
        pytest.fail(f"{shell[0]} is not installed (tests/run.py installs it)")
    cmdline_file = tmp_path / "cmdline"
    cmdline_file.write_text(cmdline + "\n")
    functions = tmp_path / "functions"
    functions.write_text('panic() { echo "PANIC: $*"; exit 1; }\n')  # initramfs-tools' panic, which never returns
    env = {
        "PATH": "/usr/bin:/bin",
        "AMBERPI_CMDLINE_FILE": str(cmdline_file),
        "AMBERPI_MEDIA_WAIT": str(wait),
        "AMBERPI_INITRAMFS_FUNCTIONS": str(functions),
    }
    return subprocess.run([*shell, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=30)


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
    assert f"amberpi: system partition {link} found after 0s" in result.stdout


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_missing_media_stops_the_boot_rather_than_scan_other_disks(shell: list[str], tmp_path: Path) -> None:
    """live-boot would go on to boot any disk with a live/filesystem.squashfs: another stick in this device's place."""
    result = run_script(shell, tmp_path, "boot=live live-media=/dev/disk/by-label/AMBERPI_SYS_ABSENT00", wait=2)
    assert result.returncode == 1
    assert "PANIC: amberpi: system partition /dev/disk/by-label/AMBERPI_SYS_ABSENT00 did not appear within 2s" in result.stdout
    assert "Not booting from any other disk in its place" in result.stdout
