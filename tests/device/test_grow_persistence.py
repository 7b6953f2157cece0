"""amberpi-grow-persistence on a file-backed disk image, under dash and busybox sh.

The disk is a plain file partitioned by sfdisk like the image (MBR, p4 ext4
last), then made larger as a bigger card would be. The script rewrites the
table in the file itself; only the block-device calls are faked: partx (the
kernel is told) is recorded, and dumpe2fs/resize2fs work on p4 extracted from
the disk at its offset and put back, as the kernel's online resize would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.device.devicekit import LIB, SHELLS, Device, fake_tool, make_device, make_ext4

MIB = 1 << 20
# p1 FAT, p2 and p3 ISO9660 (random bytes stand in), p4 ext4: starts and sizes in MiB.
LAYOUT = [(1, 8, "c"), (9, 6, "83"), (15, 4, "83"), (19, 16, "83")]
IMAGE_MIB = 35

# The fakes find p4 in the disk from its partition table, as the kernel would.
P4_HELPERS = r"""
disk="$AMBERPI_DISK"
start=$(sfdisk --dump "$disk" | sed -n 's/.*4 : start= *\([0-9]*\),.*/\1/p')
size=$(sfdisk --dump "$disk" | sed -n 's/.*4 : start=.*size= *\([0-9]*\),.*/\1/p')
work="$FAKE_WORK/p4.img"
dd if="$disk" of="$work" bs=512 skip="$start" count="$size" status=none
"""


def table(disk: Path) -> list[dict[str, object]]:
    return json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout)["partitiontable"][
        "partitions"
    ]


def region(disk: Path, start_mib: int, size_mib: int) -> bytes:
    with disk.open("rb") as handle:
        handle.seek(start_mib * MIB)
        return handle.read(size_mib * MIB)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_disk(tmp: Path, grow_mib: int) -> Path:
    disk = tmp / "disk.img"
    with disk.open("wb") as handle:
        handle.truncate(IMAGE_MIB * MIB)
    script = "label: dos\n" + "".join(
        f"start={s * 2048}, size={n * 2048}, type={t}{', bootable' if i == 0 else ''}\n" for i, (s, n, t) in enumerate(LAYOUT)
    )
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)], input=script, text=True, check=True, capture_output=True)
    with disk.open("r+b") as handle:
        for start, size, _ in LAYOUT[:3]:
            handle.seek(start * MIB)
            handle.write(hashlib.sha256(str(start).encode()).digest() * (size * MIB // 32))
        p4 = tmp / "p4-build.img"
        make_ext4(p4, size_mib=LAYOUT[3][1])
        handle.seek(LAYOUT[3][0] * MIB)
        handle.write(p4.read_bytes())
    with disk.open("r+b") as handle:
        handle.truncate((IMAGE_MIB + grow_mib) * MIB)
    return disk


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    device = make_device(tmp_path, request.param)
    (device.parts / "p4").write_bytes(b"")  # the partition's name; the fakes find its bytes in the disk
    mounted = tmp_path / "p4-mounted"
    mounted.mkdir()
    work = tmp_path / "fake-work"
    work.mkdir()
    device.env.update(AMBERPI_LIB=str(LIB), AMBERPI_PERSISTENCE_MOUNT=str(mounted), FAKE_WORK=str(work))
    device.set_state(MODE="persistent", SOURCE="config")
    fake_tool(device.fakebin, "partx", 'echo "partx $*" >> "$FAKE_WORK/calls"\n')
    # The real tools by absolute path: the fakes shadow them on PATH.
    dumpe2fs, resize2fs, e2fsck = (shutil.which(tool) for tool in ("dumpe2fs", "resize2fs", "e2fsck"))
    fake_tool(device.fakebin, "dumpe2fs", P4_HELPERS + f'exec {dumpe2fs} -h "$work" 2>/dev/null\n')
    fake_tool(
        device.fakebin,
        "resize2fs",
        P4_HELPERS
        + 'echo "resize2fs $*" >> "$FAKE_WORK/calls"\n'
        # Offline stands in for online: resize2fs wants a fresh check of an unmounted image.
        + f'{e2fsck} -f -y "$work" >/dev/null 2>&1; {resize2fs} "$work" || exit 1\n'
        + 'dd if="$work" of="$disk" bs=512 seek="$start" conv=notrunc status=none\n',
    )
    return device


def use_disk(device: Device, disk: Path) -> None:
    device.env["AMBERPI_DISK"] = str(disk)


def calls(device: Device) -> list[str]:
    path = Path(device.env["FAKE_WORK"]) / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_grows_p4_to_the_end_of_a_larger_card(device: Device, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, grow_mib=20)
    use_disk(device, disk)
    before = [digest(region(disk, s, n)) for s, n, _ in LAYOUT[:3]]
    table_before = table(disk)
    result = device.tool("amberpi-grow-persistence")
    assert result.returncode == 0, result.stderr
    assert "partition 4 of" in result.stdout and "16 MiB -> 36 MiB" in result.stdout
    assert "growing the file system" in result.stdout
    after = table(disk)
    assert after[:3] == table_before[:3], "p1-p3 entries unchanged"
    assert after[3]["start"] == table_before[3]["start"]
    assert after[3]["start"] + after[3]["size"] == disk.stat().st_size // 512, "p4 ends at the disk's end"
    assert [digest(region(disk, s, n)) for s, n, _ in LAYOUT[:3]] == before, "p1-p3 bytes unchanged"
    assert calls(device) == [f"partx -u --nr 4 {disk}", f"resize2fs {device.parts / 'p4'}"]
    # The ext4 fills the partition and checks clean.
    p4 = tmp_path / "p4-after.img"
    p4.write_bytes(region(disk, LAYOUT[3][0], 36))
    assert subprocess.run(["e2fsck", "-f", "-n", str(p4)], capture_output=True).returncode == 0
    info = subprocess.run(["dumpe2fs", "-h", str(p4)], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    assert int(fields["Block count"]) * int(fields["Block size"]) == 36 * MIB
    # Again: nothing to do, nothing written.
    snapshot = digest(disk.read_bytes())
    result = device.tool("amberpi-grow-persistence")
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert digest(disk.read_bytes()) == snapshot
    assert len(calls(device)) == 2


def test_a_card_of_the_image_size_is_left_alone(device: Device, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, grow_mib=0)
    use_disk(device, disk)
    snapshot = digest(disk.read_bytes())
    result = device.tool("amberpi-grow-persistence")
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert digest(disk.read_bytes()) == snapshot and calls(device) == []


def test_a_cut_before_the_file_system_grew_is_finished(device: Device, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, grow_mib=20)
    use_disk(device, disk)
    (device.fakebin / "resize2fs").rename(device.fakebin / "resize2fs.real")
    fake_tool(device.fakebin, "resize2fs", "exit 1\n")
    assert device.tool("amberpi-grow-persistence").returncode == 1
    assert table(disk)[3]["size"] == 36 * 2048
    (device.fakebin / "resize2fs.real").rename(device.fakebin / "resize2fs")
    result = device.tool("amberpi-grow-persistence")
    assert result.returncode == 0 and "growing the file system" in result.stdout and "partition 4 of" not in result.stdout


@pytest.mark.parametrize(("mode", "view"), [("readonly", "none"), ("readonly", "ro"), ("toram", "none")])
def test_skipped_without_persistence(device: Device, tmp_path: Path, mode: str, view: str) -> None:
    """readonly with the partition shown read-only has it mounted, and still never writes the card."""
    disk = make_disk(tmp_path, grow_mib=20)
    use_disk(device, disk)
    device.set_state(MODE=mode, P4_VIEW=view)
    if view == "none":
        del device.env["AMBERPI_PERSISTENCE_MOUNT"]
    snapshot = digest(disk.read_bytes())
    result = device.tool("amberpi-grow-persistence")
    assert result.returncode == 0 and f"skipped: this boot (mode {mode}) does not use the persistence partition" in result.stdout
    assert digest(disk.read_bytes()) == snapshot


def test_skipped_when_disabled(device: Device, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, grow_mib=20)
    use_disk(device, disk)
    device.set_profile(GROW_PERSISTENCE="no")
    snapshot = digest(disk.read_bytes())
    assert "skipped: GROW_PERSISTENCE=no" in device.tool("amberpi-grow-persistence").stdout
    assert digest(disk.read_bytes()) == snapshot


def test_skipped_on_a_gpt_disk(device: Device, tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    with disk.open("wb") as handle:
        handle.truncate(64 * MIB)
    subprocess.run(["sfdisk", "-q", str(disk)], input="label: gpt\n,8M\n,8M\n,8M\n,16M\n", text=True, check=True, capture_output=True)
    use_disk(device, disk)
    snapshot = digest(disk.read_bytes())
    result = device.tool("amberpi-grow-persistence")
    assert result.returncode == 0 and "GPT" in result.stdout
    assert digest(disk.read_bytes()) == snapshot
