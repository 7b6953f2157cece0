"""flash: write an image to an SD card or USB stick, refusing the devices it must not touch.

Refused, always: anything that is not a whole-disk block device; a disk with a mounted
partition (or mounted itself), an active swap area, or a device-mapper/RAID user on it;
the disk that holds the root file system; a device smaller than the image. Refused unless
--force: a device larger than LIMIT_BYTES (a card reader holds a card, not a 1 TB disk).
The user confirms on a terminal by typing `yes`; without a terminal, only --yes writes.

With the image's .bmap beside it, bmaptool writes only the blocks that hold data and
checks each against the map's checksums; without one, dd writes a plain image and
bmaptool --nobmap an .img.xz. Every tool runs through amberpi.run. The kernel's views of
the host (/proc/self/mountinfo, /proc/swaps, /sys/class/block) are parameters (`Host`),
so the tests use folders made to look like them, never a real device.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amberpi.errors import UsageError
from amberpi.log import LOG
from amberpi.run import run
from amberpi.stages.release import ReleaseNames
from amberpi.verify import image_stem

LIMIT_BYTES = 256 << 30
SECTOR = 512


def is_block_device(path: Path) -> bool:
    return stat.S_ISBLK(path.stat().st_mode)


@dataclass(frozen=True)
class Host:
    """Where the kernel tells what is mounted and which block devices there are."""

    mountinfo: Path = Path("/proc/self/mountinfo")
    swaps: Path = Path("/proc/swaps")
    sys_block: Path = Path("/sys/class/block")
    block_device: Callable[[Path], bool] = field(default=is_block_device)


@dataclass(frozen=True)
class Mount:
    devnum: str  # major:minor
    point: str
    source: str


@dataclass(frozen=True)
class Disk:
    """A whole-disk block device as sysfs describes it."""

    path: Path
    name: str
    size: int
    model: str
    removable: bool
    partitions: tuple[str, ...]

    @property
    def names(self) -> set[str]:
        return {self.name, *self.partitions}


def read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 for a space)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts(host: Host) -> list[Mount]:
    found = []
    for line in read_text(host.mountinfo).splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        found.append(Mount(fields[2], unescape(fields[4]), after[1] if len(after) > 1 else ""))
    return found


def block_name(source: str) -> str:
    """The kernel's name of the block device a mount or swap source names (/dev/sdb1 → sdb1)."""
    return Path(os.path.realpath(source)).name if source.startswith("/dev/") else ""


def devnums(host: Host, names: set[str]) -> set[str]:
    return {read_text(host.sys_block / name / "dev") for name in names} - {""}


def disks_under(host: Host, name: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The whole disks a block device lives on: itself, a partition's disk, or a device-mapper
    or RAID device's underlying disks (its `slaves`)."""
    entry = host.sys_block / name
    if not name or name in seen or not entry.exists():
        return set()
    slaves = sorted(p.name for p in (entry / "slaves").iterdir()) if (entry / "slaves").is_dir() else []
    if slaves:
        return set().union(*(disks_under(host, slave, seen | {name}) for slave in slaves))
    if (entry / "partition").exists():
        return {entry.resolve().parent.name}
    return {name}


def root_disks(host: Host) -> set[str]:
    """The disks holding the root file system (empty when the kernel does not say: an overlay root)."""
    root = next((m for m in reversed(mounts(host)) if m.point == "/"), None)
    if root is None:
        return set()
    names = (
        {entry.name for entry in host.sys_block.iterdir() if read_text(entry / "dev") == root.devnum} if host.sys_block.is_dir() else set()
    )
    names.add(block_name(root.source))
    return set().union(*(disks_under(host, name) for name in names if name))


def inspect_disk(host: Host, device: Path) -> Disk:
    """The whole disk `device` names, or a UsageError saying why it is not one."""
    if not device.exists():
        raise UsageError(f"{device} does not exist", hint="give the card's whole-disk device, e.g. /dev/sdb or /dev/mmcblk0 (see `lsblk`)")
    resolved = device.resolve()
    if not host.block_device(resolved):
        raise UsageError(f"{device} is not a block device", hint="give the card's whole-disk device, e.g. /dev/sdb (see `lsblk`)")
    name = resolved.name
    entry = host.sys_block / name
    if not entry.exists():
        raise UsageError(f"{device} is not a disk the kernel lists ({entry} is missing)", hint="see `lsblk` for the card's device")
    if (entry / "partition").exists():
        disk = entry.resolve().parent.name
        raise UsageError(f"{device} is a partition of /dev/{disk}", hint=f"give the whole disk: /dev/{disk}")
    partitions = tuple(sorted(child.name for child in entry.iterdir() if (child / "partition").exists()))
    sectors = read_text(entry / "size")
    model = " ".join(filter(None, (read_text(entry / "device" / "vendor"), read_text(entry / "device" / "model"))))
    return Disk(device, name, int(sectors) * SECTOR if sectors.isdigit() else 0, model, read_text(entry / "removable") == "1", partitions)


def refusals(host: Host, disk: Disk, image_bytes: int, *, force: bool) -> list[str]:
    """Every reason not to write `disk` (the size limit only without `force`)."""
    problems = []
    if disk.name in root_disks(host):
        problems.append(f"{disk.path} holds the root file system (/) of this system")
    numbers = devnums(host, disk.names)
    for mount in mounts(host):
        if mount.devnum in numbers or block_name(mount.source) in disk.names:
            problems.append(f"{mount.source or mount.devnum} is mounted on {mount.point}: unmount it first (umount {mount.point})")
    for line in read_text(host.swaps).splitlines()[1:]:
        fields = line.split()
        if fields and block_name(fields[0]) in disk.names:
            problems.append(f"{fields[0]} is an active swap area: swapoff {fields[0]} first")
    for name in sorted(disk.names):
        holders = host.sys_block / name / "holders"
        users = sorted(p.name for p in holders.iterdir()) if holders.is_dir() else []
        if users:
            problems.append(f"/dev/{name} is in use by {', '.join(users)} (device-mapper, LVM, RAID or encryption)")
    if disk.size == 0:
        problems.append(f"{disk.path} has no medium (size 0): insert the card")
    elif disk.size < image_bytes:
        problems.append(f"{disk.path} holds {disk.size} bytes, fewer than the image's {image_bytes}")
    elif disk.size > LIMIT_BYTES and not force:
        problems.append(
            f"{disk.path} is {disk.size / (1 << 30):.0f} GiB, more than {LIMIT_BYTES >> 30} GiB: more like a disk than a card "
            "(--force writes it anyway)"
        )
    return problems


def bmap_of(image: Path) -> Path:
    """The block map a release publishes beside the image and its download (X.img.bmap)."""
    return image.parent / ReleaseNames(image_stem(image)).bmap


def image_size(image: Path) -> int:
    """The written size: the file's, or an .img.xz's uncompressed size from xz's index."""
    if not image.name.endswith(".xz"):
        return image.stat().st_size
    listing = run(["xz", "--robot", "--list", str(image)], capture=True, label="xz")
    totals = next((line.split("\t") for line in listing.splitlines() if line.startswith("totals\t")), [])
    if len(totals) < 5 or not totals[4].isdigit():
        raise UsageError(f"cannot tell the size of the image in {image}", hint="check it with `python3 build.py verify IMAGE`")
    return int(totals[4])


def write_command(image: Path, device: Path) -> list[str]:
    bmap = bmap_of(image)
    if bmap.is_file():
        return ["bmaptool", "copy", "--bmap", str(bmap), str(image), str(device)]
    if image.name.endswith(".xz"):
        return ["bmaptool", "copy", "--nobmap", str(image), str(device)]
    return ["dd", f"if={image}", f"of={device}", "bs=4M", "conv=fsync", "status=progress"]


def describe(disk: Disk) -> str:
    kind = "removable" if disk.removable else "not removable"
    return f"{disk.path} ({disk.model or 'unknown model'}, {disk.size / (1 << 30):.1f} GiB, {kind})"


def flash(
    image: Path,
    device: Path,
    *,
    yes: bool = False,
    force: bool = False,
    host: Host | None = None,
    interactive: Callable[[], bool] | None = None,
    ask: Callable[[str], str] = input,
) -> None:
    """Write `image` to `device` after the checks above and the user's confirmation."""
    host = host or Host()
    if not image.is_file():
        raise UsageError(f"{image} is not a file", hint="give an image (.img) or its download (.img.xz)")
    disk = inspect_disk(host, device)
    size = image_size(image)
    problems = refusals(host, disk, size, force=force)
    if problems:
        raise UsageError(f"refusing to write {disk.path}:\n  - " + "\n  - ".join(problems), where=describe(disk))
    if not os.access(disk.path, os.W_OK):
        raise UsageError(f"{disk.path} is not writable by this user", hint="run it as root: sudo python3 build.py flash IMAGE DEVICE")
    if not yes:
        is_terminal = interactive or (lambda: os.isatty(0))
        if not is_terminal():
            raise UsageError("no terminal to confirm on", hint="add --yes to write without asking (for scripts)")
        answer = ask(f"Write {image.name} ({size >> 20} MiB) to {describe(disk)}? Everything on it is lost. Type yes: ")
        if answer.strip().lower() != "yes":
            raise UsageError("not confirmed: nothing was written")
    argv = write_command(image, disk.path)
    LOG.note(f"writing {image.name} to {disk.path} with {argv[0]}" + (f" and {bmap_of(image).name}" if "--bmap" in argv else ""))
    run(argv, label=argv[0], hint="check the card and the reader, then try again")
    LOG.note(f"written: {disk.path} holds {image.name}; eject it before you pull it out")
