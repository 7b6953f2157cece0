"""amberpi-mode on the host, under dash and busybox sh: GRUB's environment block on a real FAT p1.

The device's choice is amberpi_mode_device (in grub.cfg amberpi_mode is the
mode of the boot under way); GRUB uses up amberpi_mode_once by saving it empty.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.device.devicekit import FACTORY, SHELLS, Device, make_device

MODES = "persistent readonly toram toram-persistent"


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    return make_device(tmp_path, request.param)


def fat_is_clean(device: Device) -> None:
    fsck = subprocess.run(["fsck.vfat", "-n", str(device.parts / "p1")], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_set_keeps_the_kernel_bookkeeping(device: Device) -> None:
    result = device.tool("amberpi-mode", "set", "readonly")
    assert result.returncode == 0, result.stderr
    assert "from the next boot on, the device runs in readonly mode" in result.stdout
    assert device.grubenv() == {"amberpi_state": "good", "amberpi_version": FACTORY, "amberpi_mode_device": "readonly"}
    assert device.tool("amberpi-mode", "set", "toram").returncode == 0
    assert device.grubenv()["amberpi_mode_device"] == "toram"
    fat_is_clean(device)


def test_set_once_in_either_order(device: Device) -> None:
    device.set_profile(DEFAULT_MODE="readonly")
    result = device.tool("amberpi-mode", "set", "persistent", "--once")
    assert result.returncode == 0, result.stderr
    assert "the next boot (only) runs in persistent mode; then readonly mode (build default)" in result.stdout
    assert device.grubenv()["amberpi_mode_once"] == "persistent"
    assert device.tool("amberpi-mode", "set", "--once", "toram-persistent").returncode == 0
    assert device.grubenv()["amberpi_mode_once"] == "toram-persistent"
    assert "amberpi_mode_device" not in device.grubenv() and "amberpi_mode" not in device.grubenv()


@pytest.mark.parametrize(
    "args",
    [
        ("set", "nonsense"),
        ("set",),
        ("set", "readonly", "toram"),
        ("set", "readonly", "--twice"),
        ("set", "--once"),
        ("clear", "--all"),
        ("frobnicate",),
        (),
    ],
    ids=lambda a: "-".join(a) or "none",
)
def test_bad_input_changes_nothing(device: Device, args: tuple[str, ...]) -> None:
    before = device.p1_bytes()
    result = device.tool("amberpi-mode", *args)
    assert result.returncode == 2
    assert MODES in result.stderr
    assert device.p1_bytes() == before


def test_clear(device: Device) -> None:
    assert device.tool("amberpi-mode", "set", "readonly").returncode == 0
    assert device.tool("amberpi-mode", "set", "toram", "--once").returncode == 0
    result = device.tool("amberpi-mode", "clear", "--once")
    assert result.returncode == 0 and "no one-time mode is pending" in result.stdout
    assert device.grubenv()["amberpi_mode_device"] == "readonly" and "amberpi_mode_once" not in device.grubenv()
    result = device.tool("amberpi-mode", "clear")
    assert result.returncode == 0 and "the next boot runs in persistent mode (build default)" in result.stdout
    assert device.grubenv() == {"amberpi_state": "good", "amberpi_version": FACTORY}
    fat_is_clean(device)


def test_status(device: Device) -> None:
    device.set_profile(
        DEFAULT_MODE="readonly", MAINTENANCE_MODE="persistent", JUMPER_CHIP="gpiochip0", JUMPER_LINE="17", JUMPER_ACTIVE="low"
    )
    device.set_state(
        MODE="readonly", SOURCE="jumper", SOURCE_TEXT="jumper on gpiochip0 line 17", REQUESTED="persistent",
        REASON="the persistence partition /dev/mmcblk0p4 is damaged", JUMPER="on", P4_VIEW="none",
        PERSISTENCE_DEVICE="/dev/mmcblk0p4",
    )  # fmt: skip
    assert device.tool("amberpi-mode", "set", "persistent").returncode == 0
    status = device.tool("amberpi-mode", "status")
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "this boot:      readonly (jumper on gpiochip0 line 17)" in out
    assert "requested:      persistent" in out and "why not:        the persistence partition /dev/mmcblk0p4 is damaged" in out
    assert "persistence:    not used in this boot (P4_VIEW=none)" in out
    assert "next boot:      persistent mode (device setting)" in out
    assert "build default: readonly" in out
    assert "jumper:       gpiochip0 line 17, active low: persistent mode (read at boot: on)" in out
    assert device.tool("amberpi-mode", "set", "toram", "--once").returncode == 0
    assert "next boot:      toram mode (set --once, that boot only)" in device.tool("amberpi-mode", "status").stdout


def test_status_without_a_recorded_mode(device: Device) -> None:
    status = device.tool("amberpi-mode", "status")
    assert status.returncode == 0
    assert "this boot:      unknown" in status.stdout
    assert "next boot:      persistent mode (build default)" in status.stdout


def test_list(device: Device) -> None:
    result = device.tool("amberpi-mode", "list")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == MODES.split()


@pytest.mark.parametrize(
    ("state", "line"),
    [
        ({"MODE": "persistent", "REQUESTED": "persistent", "P4_VIEW": "rw"}, "/dev/mmcblk0p4 read-write: changes are kept (P4_VIEW=rw)"),
        (
            {"MODE": "readonly", "REQUESTED": "readonly", "P4_VIEW": "ro", "SUPERBLOCK": "clean"},
            "/dev/mmcblk0p4 shown read-only: what persistent mode saved; changes since this boot are gone at reboot (P4_VIEW=ro)",
        ),
        (
            {"MODE": "readonly", "REQUESTED": "readonly", "P4_VIEW": "none", "REASON": "the partition was not shut down cleanly"},
            "not used (P4_VIEW=none): the partition was not shut down cleanly",
        ),
        ({"MODE": "toram", "REQUESTED": "toram", "P4_VIEW": "none"}, "not used in this boot (P4_VIEW=none)"),
    ],
    ids=["rw", "ro", "none-with-reason", "toram"],
)
def test_status_shows_the_view_of_the_persistence_partition(device: Device, state: dict[str, str], line: str) -> None:
    device.set_state(SOURCE="config", SOURCE_TEXT="build default", PERSISTENCE_DEVICE="/dev/mmcblk0p4", **state)
    out = device.tool("amberpi-mode", "status").stdout
    assert f"persistence:    {line}" in out
    assert "why not:" not in out


def test_an_empty_once_value_is_no_value(tmp_path: Path) -> None:
    """GRUB cannot delete a variable: it uses up amberpi_mode_once by saving it empty."""
    for shell in SHELLS:
        folder = tmp_path / shell[0]
        folder.mkdir()
        variables = {"amberpi_state": "good", "amberpi_version": FACTORY, "amberpi_mode_device": "readonly", "amberpi_mode_once": ""}
        device = make_device(folder, shell, grubenv=variables)
        assert device.grubenv()["amberpi_mode_once"] == ""
        status = device.tool("amberpi-mode", "status")
        assert status.returncode == 0, status.stderr
        assert "next boot:      readonly mode (device setting)" in status.stdout
        assert "  once:         none" in status.stdout and "  device:       readonly" in status.stdout
        result = device.tool("amberpi-mode", "set", "persistent", "--once")
        assert "the next boot (only) runs in persistent mode; then readonly mode (device setting)" in result.stdout
        assert device.grubenv()["amberpi_mode_once"] == "persistent"
        assert "next boot:      persistent mode (set --once, that boot only)" in device.tool("amberpi-mode", "status").stdout
        # GRUB uses it up again; then a device setting change keeps the empty value as GRUB wrote it.
        (folder / "again").mkdir()
        device2 = make_device(folder / "again", shell, grubenv=variables)
        assert device2.tool("amberpi-mode", "set", "toram").returncode == 0
        assert device2.grubenv() == {**variables, "amberpi_mode_device": "toram"}
        assert "next boot:      toram mode (device setting)" in device2.tool("amberpi-mode", "status").stdout
        result = device2.tool("amberpi-mode", "clear", "--once")
        assert result.returncode == 0 and "amberpi_mode_once" not in device2.grubenv()


def test_the_device_setting_is_amberpi_mode_device(tmp_path: Path) -> None:
    """amberpi_mode in the block (grub.cfg's name for the boot under way) is not the device's choice."""
    for shell in SHELLS:
        folder = tmp_path / shell[0]
        folder.mkdir()
        device = make_device(folder, shell, grubenv={"amberpi_state": "good", "amberpi_version": FACTORY, "amberpi_mode": "toram"})
        device.set_profile(DEFAULT_MODE="persistent")
        out = device.tool("amberpi-mode", "status").stdout
        assert "next boot:      persistent mode (build default)" in out and "  device:       none" in out
        assert device.tool("amberpi-mode", "set", "readonly").returncode == 0
        assert device.grubenv()["amberpi_mode_device"] == "readonly"
        assert "next boot:      readonly mode (device setting)" in device.tool("amberpi-mode", "status").stdout
        assert device.tool("amberpi-mode", "clear").returncode == 0
        assert "amberpi_mode_device" not in device.grubenv()
