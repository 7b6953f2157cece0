"""`flash`: the refusals and the writing, against a fake host: /proc/self/mountinfo, /proc/swaps and
/sys/class/block are folders and files made here, the devices are plain files, and bmaptool, dd
and xz are fakes that record their argv. No real device is ever opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi.errors import UsageError
from amberpi.flash import LIMIT_BYTES, Host, flash, refusals
from tests.conftest import amberpi
from tests.fakes import FakeTools

pytestmark = pytest.mark.usefixtures("quiet_log")

GIB = 1 << 30
ROOT_MOUNT = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n"


class FakeHost:
    """A host with disks sda (the system's) and whatever the test adds, none of them real."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dev = root / "dev"
        self.devices = root / "sys" / "devices"
        self.block = root / "sys" / "class" / "block"
        for folder in (self.dev, self.devices, self.block):
            folder.mkdir(parents=True)
        self.mountinfo = root / "mountinfo"
        self.mountinfo.write_text(ROOT_MOUNT)
        self.swaps = root / "swaps"
        self.swaps.write_text("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
        self.add_disk("sda", 8, 0, 500 * GIB, partitions=2, removable=False, model="Samsung SSD")

    def add_disk(
        self, name: str, major: int, minor: int, size: int, *, partitions: int = 1, removable: bool = True, model: str = "SD Reader"
    ) -> Path:
        disk = self.devices / name
        (disk / "device").mkdir(parents=True)
        (disk / "dev").write_text(f"{major}:{minor}\n")
        (disk / "size").write_text(f"{size // 512}\n")
        (disk / "removable").write_text("1\n" if removable else "0\n")
        (disk / "device" / "model").write_text(model + "\n")
        (disk / "holders").mkdir()
        (self.block / name).symlink_to(disk)
        (self.dev / name).write_bytes(b"")
        for number in range(1, partitions + 1):
            part_name = f"{name}p{number}" if name[-1].isdigit() else f"{name}{number}"
            part = disk / part_name
            part.mkdir()
            (part / "partition").write_text(f"{number}\n")
            (part / "dev").write_text(f"{major}:{minor + number}\n")
            (part / "holders").mkdir()
            (self.block / part_name).symlink_to(part)
            (self.dev / part_name).write_bytes(b"")
        return self.dev / name

    def host(self) -> Host:
        return Host(
            mountinfo=self.mountinfo, swaps=self.swaps, sys_block=self.block, block_device=lambda path: path.parent == self.dev.resolve()
        )


@pytest.fixture
def fake_host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path / "host")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "amberpi-pi3.img"
    with path.open("wb") as handle:
        handle.truncate(64 << 20)
    return path


def write_tools(fake_tools: FakeTools) -> None:
    fake_tools.add("bmaptool", "dd")
    fake_tools.add("xz", stdout="name\tamberpi-pi3.img.xz\ntotals\t1\t1\t1000\t67108864\t0.1\tCRC64\t0\n")


def test_a_card_is_written_with_bmaptool_and_the_block_map(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    write_tools(fake_tools)
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    bmap = image.parent / "amberpi-pi3.img.bmap"
    bmap.write_text("<bmap/>")
    asked: list[str] = []
    flash(image, card, host=fake_host.host(), interactive=lambda: True, ask=lambda prompt: asked.append(prompt) or "yes")
    assert fake_tools.calls("bmaptool") == [["bmaptool", "copy", "--bmap", str(bmap), str(image), str(card)]]
    assert "SD Reader, 32.0 GiB, removable" in asked[0] and "Type yes" in asked[0]


def test_the_download_is_written_with_its_block_map_too(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    write_tools(fake_tools)
    card = fake_host.add_disk("mmcblk0", 179, 0, 16 * GIB)
    download = image.parent / "amberpi-pi3.img.xz"
    download.write_bytes(b"xz")
    bmap = image.parent / "amberpi-pi3.img.bmap"
    bmap.write_text("<bmap/>")
    flash(download, card, yes=True, host=fake_host.host())
    assert fake_tools.calls("bmaptool") == [["bmaptool", "copy", "--bmap", str(bmap), str(download), str(card)]]
    assert fake_tools.calls("xz") == [["xz", "--robot", "--list", str(download)]], "the written size comes from xz's index"


def test_without_a_block_map_dd_writes_a_plain_image(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    write_tools(fake_tools)
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    flash(image, card, yes=True, host=fake_host.host())
    assert fake_tools.calls("dd") == [["dd", f"if={image}", f"of={card}", "bs=4M", "conv=fsync", "status=progress"]]
    assert fake_tools.calls("bmaptool") == []


def test_without_a_block_map_bmaptool_decompresses_a_download(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    write_tools(fake_tools)
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    download = image.parent / "amberpi-pi3.img.xz"
    download.write_bytes(b"xz")
    flash(download, card, yes=True, host=fake_host.host())
    assert fake_tools.calls("bmaptool") == [["bmaptool", "copy", "--nobmap", str(download), str(card)]]


def refused(fake_tools: FakeTools, image: Path, device: Path, host: Host, **options: bool) -> str:
    write_tools(fake_tools)
    with pytest.raises(UsageError) as caught:
        flash(image, device, host=host, yes=options.pop("yes", True), **options)
    assert fake_tools.calls("bmaptool") == [] and fake_tools.calls("dd") == [], "nothing was written"
    assert caught.value.exit_code == 2
    return caught.value.render()


def test_a_mounted_partition_is_refused(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    fake_host.mountinfo.write_text(ROOT_MOUNT + "40 22 8:17 / /media/me/BOOT rw - vfat /dev/sdb1 rw\n")
    text = refused(fake_tools, image, card, fake_host.host())
    assert "/dev/sdb1 is mounted on /media/me/BOOT: unmount it first" in text


def test_a_mount_is_found_by_its_device_number_too(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB, partitions=0)
    fake_host.mountinfo.write_text(ROOT_MOUNT + "41 22 8:16 / /mnt\\040card rw - ext4 /dev/disk/by-label/card rw\n")
    text = refused(fake_tools, image, card, fake_host.host())
    assert "is mounted on /mnt card" in text


def test_the_disk_holding_root_is_refused(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    text = refused(fake_tools, image, fake_host.dev / "sda", fake_host.host(), force=True)
    assert "holds the root file system (/)" in text


def test_root_on_device_mapper_is_traced_to_its_disk(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    dm = fake_host.devices / "dm-0"
    (dm / "slaves").mkdir(parents=True)
    (dm / "dev").write_text("254:0\n")
    (dm / "slaves" / "sdb1").mkdir()
    (fake_host.block / "dm-0").symlink_to(dm)
    (fake_host.devices / "sdb" / "sdb1" / "holders" / "dm-0").mkdir()
    fake_host.mountinfo.write_text("22 1 254:0 / / rw - ext4 /dev/mapper/vg-root rw\n")
    text = refused(fake_tools, image, card, fake_host.host())
    assert "holds the root file system" in text and "in use by dm-0" in text


def test_an_active_swap_area_is_refused(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB, partitions=2)
    fake_host.swaps.write_text(fake_host.swaps.read_text() + "/dev/sdb2\tpartition\t1048572\t0\t-2\n")
    text = refused(fake_tools, image, card, fake_host.host())
    assert "/dev/sdb2 is an active swap area" in text


def test_a_large_disk_is_refused_unless_forced(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    disk = fake_host.add_disk("sdc", 8, 32, 1024 * GIB, removable=False, model="Big Disk")
    text = refused(fake_tools, image, disk, fake_host.host())
    assert f"more than {LIMIT_BYTES >> 30} GiB" in text and "--force" in text
    write_tools(fake_tools)
    flash(image, disk, yes=True, force=True, host=fake_host.host())
    assert len(fake_tools.calls("dd")) == 1


def test_a_device_smaller_than_the_image_or_empty_is_refused(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    small = fake_host.add_disk("sdb", 8, 16, 32 << 20)
    assert "fewer than the image's" in refused(fake_tools, image, small, fake_host.host(), force=True)
    empty = fake_host.add_disk("sdc", 8, 32, 0)
    assert "has no medium" in refused(fake_tools, image, empty, fake_host.host(), force=True)


def test_a_partition_or_a_file_is_not_a_disk(fake_tools: FakeTools, fake_host: FakeHost, image: Path, tmp_path: Path) -> None:
    fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    assert "is a partition of /dev/sdb" in refused(fake_tools, image, fake_host.dev / "sdb1", fake_host.host())
    assert "is not a block device" in refused(fake_tools, image, image, fake_host.host())
    assert "does not exist" in refused(fake_tools, image, fake_host.dev / "sdz", fake_host.host())


def test_no_terminal_no_write_unless_yes(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    text = refused(fake_tools, image, card, fake_host.host(), yes=False, interactive=lambda: False)  # type: ignore[arg-type]
    assert "no terminal to confirm on" in text and "--yes" in text


def test_anything_but_yes_writes_nothing(fake_tools: FakeTools, fake_host: FakeHost, image: Path) -> None:
    write_tools(fake_tools)
    card = fake_host.add_disk("sdb", 8, 16, 32 * GIB)
    with pytest.raises(UsageError, match="not confirmed"):
        flash(image, card, host=fake_host.host(), interactive=lambda: True, ask=lambda prompt: "y")
    assert fake_tools.calls("dd") == []


def test_every_refusal_is_listed_at_once(fake_host: FakeHost) -> None:
    from amberpi.flash import inspect_disk

    host = fake_host.host()
    disk = inspect_disk(host, fake_host.dev / "sda")
    fake_host.swaps.write_text(fake_host.swaps.read_text() + "/dev/sda1\tpartition\t1\t0\t-2\n")
    problems = refusals(host, disk, 1 << 20, force=False)
    assert len(problems) == 4, problems  # root, mounted, swap, size


def test_the_verb_exits_2_on_usage_errors(image: Path) -> None:
    result = amberpi("flash", str(image), "/dev/null-not-a-disk", stdin=None)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert amberpi("flash", str(image)).returncode == 2
