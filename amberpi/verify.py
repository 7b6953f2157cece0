"""verify: check an image (or its .img.xz) against its checksums and build report, and show
what it holds: partitions, labels, kernel, packages, build info. No mount, no root.

The image is read once, start to end (an .img.xz is decompressed on the way, by Python's
lzma), hashed, and only the bytes this needs are kept: the MBR; each partition's first
sectors (the FAT boot sector, the ext4 superblock, the ISO9660 volume descriptors and
directories, which pycdlib reads from those bytes); then the files those directories
point to further on (p2's .disk/info and .disk/amberpi.conf, p3's version). A copy that
is truncated, or differs by one byte, fails with what differs named.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import lzma
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycdlib.pycdlib
import pycdlib.pycdlibexception

from amberpi.errors import AmberPiError, UsageError
from amberpi.layout import SECTOR

CHUNK = 4 << 20
# ISO9660 metadata (volume descriptors, path tables, directories) comes before any file's
# data on the images AmberPi writes (pycdlib lays them out so); this much of each ISO
# partition is kept for it.
ISO_HEAD = 4 << 20
ISO_BLOCK = 2048
# The files read from the ISO partitions, where they exist.
ISO_FILES = ("/.disk/info", "/.disk/amberpi.conf", "/version")
# Larger files are not what this reads (a version file, a build's info).
ISO_FILE_LIMIT = 1 << 20
MBR_TYPES = {"c": "FAT32 (LBA)", "b": "FAT32", "e": "FAT16 (LBA)", "6": "FAT16", "83": "Linux", "ee": "GPT protective"}


class VerifyError(AmberPiError):
    """The image differs from its checksum or report, or is not a whole AmberPi image; exit code 1."""


@dataclass
class PartitionInfo:
    number: int
    type_id: str
    bootable: bool
    start: int  # bytes
    size: int  # bytes
    filesystem: str = "unknown"
    label: str = ""
    serial: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class ImageInfo:
    """What reading the image found, and what is wrong with it."""

    path: Path
    compressed: bool
    size: int = 0
    sha256: str = ""
    compressed_size: int = 0
    compressed_sha256: str = ""
    disk_id: str = ""
    partitions: list[PartitionInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def partition(self, number: int) -> PartitionInfo | None:
        return next((p for p in self.partitions if p.number == number), None)

    def file(self, name: str) -> str | None:
        """A file read from an ISO partition ("/.disk/info", "/version"), from whichever holds it."""
        return next((p.files[name] for p in self.partitions if name in p.files), None)


# --- reading the stream once --------------------------------------------------------------


Want = tuple[int, int, Callable[[bytes], None]]


class Capture:
    """The byte ranges a reader asked for, filled in as the image streams past.

    A range is asked for with `want(offset, length, then)`; `then` gets its bytes once the
    stream has passed them, and may ask for more ranges further on (not behind: the stream
    is read once).
    """

    def __init__(self) -> None:
        self.position = 0
        self.pending: list[tuple[int, int, Callable[[bytes], None], bytearray]] = []
        self.missed: list[str] = []

    def want(self, offset: int, length: int, then: Callable[[bytes], None], what: str) -> None:
        if offset < self.position:
            self.missed.append(what)
        elif length <= 0:
            then(b"")
        else:
            self.pending.append((offset, length, then, bytearray(length)))

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the stream; every range they complete is handed on, in order."""
        start, end = self.position, self.position + len(chunk)
        while True:
            ready = None
            for index, (offset, length, _, buffer) in enumerate(self.pending):
                if offset >= end or offset + length <= start:
                    continue
                low, high = max(offset, start), min(offset + length, end)
                buffer[low - offset : high - offset] = chunk[low - start : high - start]
                if offset + length <= end and ready is None:
                    ready = index
            if ready is None:
                break
            _, _, then, buffer = self.pending.pop(ready)
            then(bytes(buffer))
        self.position = end


def read_plain(path: Path, info: ImageInfo) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def read_xz(path: Path, info: ImageInfo) -> Iterator[bytes]:
    """The decompressed bytes of an .xz file; its own digest and size go into `info` on the way."""
    digest = hashlib.sha256()
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    with path.open("rb") as handle:
        while True:
            data = handle.read(1 << 20)
            digest.update(data)
            info.compressed_size += len(data)
            if not data:
                break
            while data or not (decompressor.needs_input or decompressor.eof):
                if decompressor.eof:
                    # Another stream after the first (xz files may be concatenated).
                    data, decompressor = decompressor.unused_data + data, lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
                    continue
                try:
                    out = decompressor.decompress(data, max_length=CHUNK)
                except lzma.LZMAError as exc:
                    info.problems.append(f"{path.name}: the xz data is corrupt ({exc}) after {info.size} bytes of image")
                    info.compressed_sha256 = digest.hexdigest()
                    return
                data = b""
                if out:
                    yield out
    info.compressed_sha256 = digest.hexdigest()
    if not decompressor.eof:
        info.problems.append(f"{path.name}: the xz data ends before its end marker (truncated) after {info.size} bytes of image")


def read_image(path: Path) -> ImageInfo:
    """Stream the image once: its digest and size, partitions, labels and the small files named above."""
    compressed = path.name.endswith(".xz")
    info = ImageInfo(path, compressed)
    capture = Capture()
    capture.want(0, SECTOR, lambda data: read_mbr(data, info, capture), "the MBR")
    digest = hashlib.sha256()
    for chunk in (read_xz if compressed else read_plain)(path, info):
        digest.update(chunk)
        capture.feed(chunk)
        info.size += len(chunk)
    info.sha256 = digest.hexdigest()
    for partition in info.partitions:
        if partition.end > info.size:
            info.problems.append(
                f"p{partition.number} ends at byte {partition.end} but the image has only {info.size} bytes: it is truncated"
            )
    info.problems += [f"{what} could not be read in one pass" for what in capture.missed]
    return info


# --- what the bytes say --------------------------------------------------------------------


def read_mbr(data: bytes, info: ImageInfo, capture: Capture) -> None:
    if len(data) < SECTOR or data[510:512] != b"\x55\xaa":
        info.problems.append("no MBR partition table in the first sector: not an AmberPi image")
        return
    info.disk_id = f"0x{struct.unpack_from('<I', data, 440)[0]:08x}"
    for number in range(1, 5):
        entry = data[446 + 16 * (number - 1) : 446 + 16 * number]
        type_byte = entry[4]
        first, count = struct.unpack_from("<II", entry, 8)
        if type_byte == 0 or count == 0:
            continue
        partition = PartitionInfo(number, f"{type_byte:x}", entry[0] == 0x80, first * SECTOR, count * SECTOR)
        info.partitions.append(partition)
        if partition.type_id == "ee":
            info.problems.append("a GPT disk (protective MBR): AmberPi images are MBR disks")
            return
        capture.want(
            partition.start, min(ISO_HEAD, partition.size), functools.partial(read_head, partition=partition, capture=capture), f"p{number}"
        )


def read_head(head: bytes, *, partition: PartitionInfo, capture: Capture) -> None:
    """Tell the file system from its first bytes, and read its label."""
    if len(head) >= 512 and head[510:512] == b"\x55\xaa" and head[82:90] == b"FAT32   ":
        partition.filesystem = "FAT32"
        partition.label = head[71:82].decode("ascii", errors="replace").strip()
        partition.serial = f"{struct.unpack_from('<I', head, 67)[0]:08x}"
    elif len(head) >= 512 and head[510:512] == b"\x55\xaa" and head[54:59] == b"FAT16":
        partition.filesystem = "FAT16"
        partition.label = head[43:54].decode("ascii", errors="replace").strip()
        partition.serial = f"{struct.unpack_from('<I', head, 39)[0]:08x}"
    elif len(head) >= 2048 and head[1024 + 56 : 1024 + 58] == b"\x53\xef":
        partition.filesystem = "ext4"
        partition.label = head[1024 + 120 : 1024 + 136].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    elif len(head) > 16 * ISO_BLOCK + 6 and head[16 * ISO_BLOCK + 1 : 16 * ISO_BLOCK + 6] == b"CD001":
        partition.filesystem = "ISO9660"
        read_iso(head, partition, capture)


class Head(io.RawIOBase):
    """The first bytes of an ISO partition as a file of the partition's size, for pycdlib:
    reading past what was kept is an error, not zeros."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.offset = data, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.offset = {io.SEEK_SET: 0, io.SEEK_CUR: self.offset, io.SEEK_END: self.size}[whence] + offset
        return self.offset

    def tell(self) -> int:
        return self.offset

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), max(0, self.size - self.offset))
        have = min(want, len(self.data) - self.offset)
        if want > 0 and have <= 0:
            raise EOFError(f"ISO9660 metadata beyond the first {len(self.data) >> 20} MiB of the partition")
        buffer[:have] = self.data[self.offset : self.offset + have]
        self.offset += have
        return have


def read_iso(head: bytes, partition: PartitionInfo, capture: Capture) -> None:
    """The volume id (pycdlib, from the kept bytes), and the wanted files' places further on."""
    iso = pycdlib.pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BufferedReader(Head(head, partition.size)))
    except (pycdlib.pycdlibexception.PyCdlibException, EOFError) as exc:
        partition.filesystem = f"ISO9660 (unreadable: {exc})"
        return
    try:
        partition.label = iso.pvd.volume_identifier.decode("ascii", errors="replace").strip()
        for name in ISO_FILES:
            try:
                record = iso.get_record(rr_path=name)
            # pycdlib 1.14 raises IndexError, not its own exception, for some missing paths.
            except (pycdlib.pycdlibexception.PyCdlibException, IndexError):
                continue
            length = record.get_data_length()
            if record.is_dir() or length > ISO_FILE_LIMIT:
                continue
            offset = record.extent_location() * ISO_BLOCK

            def keep(data: bytes, name: str = name) -> None:
                partition.files[name] = data.decode("utf-8", errors="replace")

            if offset + length <= len(head):
                keep(head[offset : offset + length])
            else:
                capture.want(partition.start + offset, length, keep, f"p{partition.number}:{name}")
    finally:
        iso.close()


# --- what it is checked against ------------------------------------------------------------


def image_stem(path: Path) -> str:
    """amberpi-pi3 for amberpi-pi3.img and amberpi-pi3.img.xz: the name of the build's other files."""
    name = path.name.removesuffix(".xz")
    return name.removesuffix(".img")


def sidecar_digest(path: Path) -> str | None:
    """The digest a .sha256 file states (sha256sum's format), or None when there is none."""
    if not path.is_file():
        return None
    fields = path.read_text(errors="replace").split()
    return fields[0].lower() if fields else ""


def check(info: ImageInfo) -> None:
    """Compare what was read with the checksum files and the report beside the image; every
    difference goes into info.problems."""
    folder = info.path.parent
    image_name = info.path.name.removesuffix(".xz")
    sums = [(folder / f"{image_name}.sha256", info.sha256, image_name)]
    if info.compressed:
        sums.insert(0, (folder / f"{info.path.name}.sha256", info.compressed_sha256, info.path.name))
    for sidecar, actual, what in sums:
        expected = sidecar_digest(sidecar)
        if expected is None:
            continue
        if expected != actual:
            info.problems.append(f"{what}: sha256 {actual} differs from {expected} in {sidecar.name}")
        else:
            info.checked.append(f"sha256 of {what} matches {sidecar.name}")
    report_path = folder / f"{image_stem(info.path)}.report.json"
    report = read_report(report_path, info)
    if report is not None:
        check_report(report, report_path.name, info)
    if not info.checked and not any("differs" in problem for problem in info.problems):
        info.problems.append(f"nothing to check {info.path.name} against: no {info.path.name}.sha256 and no {report_path.name} beside it")
    check_consistency(info)


def read_report(path: Path, info: ImageInfo) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        info.problems.append(f"{path.name} is not a readable build report: {exc}")
        return None
    return report if isinstance(report, dict) else None


def check_report(report: dict[str, Any], name: str, info: ImageInfo) -> None:
    def compare(what: str, expected: Any, actual: Any) -> None:
        if expected is None:
            return
        if expected != actual:
            info.problems.append(f"{what} is {actual} but {name} says {expected}")
        else:
            info.checked.append(f"{what} matches {name}")

    compare("the image's size", report.get("image_bytes"), info.size)
    compare("the image's sha256", report.get("sha256"), info.sha256)
    compressed = report.get("compressed")
    if info.compressed and isinstance(compressed, dict):
        compare(f"the size of {info.path.name}", compressed.get("bytes"), info.compressed_size)
        compare(f"the sha256 of {info.path.name}", compressed.get("sha256"), info.compressed_sha256)
    version = (info.file("/version") or "").strip()
    if version:
        compare("the kernel (p3's version)", report.get("kernel_version"), version)
    labels = report.get("labels")
    for number, role in ((2, "system"), (3, "kernel"), (4, "persistence")):
        partition = info.partition(number)
        if isinstance(labels, dict) and partition is not None and partition.label and labels.get(role):
            compare(f"p{number}'s label", labels[role], partition.label)


def build_conf(info: ImageInfo) -> dict[str, str]:
    """p2's .disk/amberpi.conf as key → value."""
    text = info.file("/.disk/amberpi.conf") or ""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def check_consistency(info: ImageInfo) -> None:
    """The image against itself: the labels its build info names are the partitions' labels."""
    conf = build_conf(info)
    if not conf:
        return
    expected = {2: conf.get("system_label"), 3: conf.get("kernel_label"), 4: conf.get("persistence_label")}
    for number, label in expected.items():
        partition = info.partition(number)
        if label and partition is not None and partition.label and partition.label != label:
            info.problems.append(f"p{number}'s label is {partition.label} but .disk/amberpi.conf names {label}")
    boot = info.partition(1)
    if boot is not None and boot.serial and conf.get("image_id") and boot.serial != conf["image_id"]:
        info.problems.append(f"p1's volume serial is {boot.serial} but the image id is {conf['image_id']}")


# --- the verb ------------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value >> 20} MiB" if value % (1 << 20) == 0 else f"{value / (1 << 20):.1f} MiB"


def package_count(info: ImageInfo) -> str:
    """The package count, from the build's files beside the image (the image's packages are in its squashfs)."""
    stem = image_stem(info.path)

    def from_manifest(text: str) -> int:
        return len(json.loads(text)["packages"])

    def from_report(text: str) -> int:
        return int(json.loads(text)["package_count"])

    def from_lines(text: str) -> int:
        return len([line for line in text.splitlines() if line.strip()])

    readers: list[tuple[str, Callable[[str], int]]] = [
        (f"{stem}.manifest.json", from_manifest),
        (f"{stem}.report.json", from_report),
        (f"{stem}.packages", from_lines),
    ]
    for name, count in readers:
        try:
            return f"{count((info.path.parent / name).read_text())} (from {name})"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return f"unknown (none of {stem}.manifest.json, .report.json, .packages beside the image)"


def describe(info: ImageInfo) -> list[str]:
    """What the image holds, as the lines `verify` prints."""
    lines = [f"image      {info.path}", f"size       {info.size} bytes ({mib(info.size)}), sha256 {info.sha256}"]
    if info.compressed:
        lines.append(f"download   {info.compressed_size} bytes, sha256 {info.compressed_sha256}")
    lines.append(f"disk id    {info.disk_id or '-'}")
    for p in info.partitions:
        kind = MBR_TYPES.get(p.type_id, "type " + p.type_id)
        label = f" label {p.label}" if p.label else ""
        serial = f" serial {p.serial}" if p.serial else ""
        boot = ", bootable" if p.bootable else ""
        lines.append(f"p{p.number}         {mib(p.start)} +{mib(p.size)}, {kind}{boot}: {p.filesystem}{label}{serial}")
    version = (info.file("/version") or "").strip()
    lines.append(f"kernel     {version or 'unknown (no /version on an ISO partition)'}")
    lines.append(f"packages   {package_count(info)}")
    disk_info = (info.file("/.disk/info") or "").strip()
    lines.append(f"build      {disk_info or 'unknown (no .disk/info)'}")
    lines += [f"           {key}={value}" for key, value in build_conf(info).items()]
    lines += [f"checked    {line}" for line in info.checked]
    return lines


def verify(path: Path, out: Callable[[str], None] = print) -> ImageInfo:
    """Read, describe and check `path`; raises VerifyError naming every difference."""
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="give the path of an image (.img) or its download (.img.xz)")
    if not path.is_file():
        raise UsageError(f"{path} is not a file", hint="give the path of an image (.img) or its download (.img.xz)")
    try:
        info = read_image(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    check(info)
    for line in describe(info):
        out(line)
    if info.problems:
        count = len(info.problems)
        raise VerifyError(
            f"{path.name} does not verify ({count} problem{'s' if count != 1 else ''}):\n  - " + "\n  - ".join(info.problems),
            where=str(path),
            hint="download or copy it again; a build writes the image, its .sha256 and its report together",
        )
    out(f"OK         {path.name} verifies")
    return info
