"""The persistence partition left clean at the end of a shutdown (system-shutdown/amberpi-persistence)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.device.devicekit import LIB, ROOTFS, SHELLS, Device, fake_tool, make_device

HOOK = ROOTFS / "usr/lib/systemd/system-shutdown/amberpi-persistence"


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    device = make_device(tmp_path, request.param)
    (device.parts / "p4").write_bytes(b"")
    for tool in ("mount", "umount"):
        fake_tool(device.fakebin, tool, f'echo "{tool} $*" >> "$FAKE_LOG"\n[ "${{FAKE_FAIL:-}}" != "{tool} $*" ] || exit 32\n')
    device.env.update(AMBERPI_LIB=str(LIB), AMBERPI_FINAL_POINT=str(tmp_path / "final"), FAKE_LOG=str(tmp_path / "calls"))
    return device


def calls(device: Device) -> list[str]:
    log = Path(device.env["FAKE_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def in_use(device: Device) -> None:
    """The partition's ext4 is mounted (the kernel lists it under /sys/fs/ext4)."""
    (Path(device.env["AMBERPI_SYS_DIR"]) / "fs/ext4/p4").mkdir(parents=True)


def test_a_mounted_persistence_partition_is_remounted_read_only(device: Device) -> None:
    """Before: nothing unmounted p4 (the root overlay's upper layer lives there), so every
    shutdown left its journal to replay, and the next readonly boot had to leave p4 out."""
    in_use(device)
    result = device.run(HOOK, "poweroff")
    p4, point = device.parts / "p4", device.env["AMBERPI_FINAL_POINT"]
    assert result.returncode == 0 and f"{p4} left clean" in result.stdout
    assert calls(device) == [f"mount -t ext4 {p4} {point}", f"mount -o remount,ro {point}", f"umount {point}"]
    assert not Path(point).exists()


def test_a_partition_this_boot_left_alone_is_not_touched(device: Device) -> None:
    """readonly and toram boots never mounted p4: mounting it now would replay its journal."""
    result = device.run(HOOK, "reboot")
    assert result.returncode == 0 and calls(device) == []


def test_a_failed_remount_says_so_and_never_stops_the_shutdown(device: Device) -> None:
    in_use(device)
    device.env["FAKE_FAIL"] = f"mount -o remount,ro {device.env['AMBERPI_FINAL_POINT']}"
    result = device.run(HOOK, "poweroff")
    assert result.returncode == 0 and "replayed at the next boot" in result.stdout
    assert calls(device)[-1].startswith("umount ")
