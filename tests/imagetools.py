"""Read a built disk image back without mounting it: partition table, partitions as files."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

SECTOR = 512


def partition_table(image: Path) -> dict[str, Any]:
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True).stdout
    table: dict[str, Any] = json.loads(out)["partitiontable"]
    return table


def partition_range(image: Path, number: int) -> tuple[int, int]:
    """(offset, length) in bytes of partition `number` (1-based)."""
    part = partition_table(image)["partitions"][number - 1]
    return part["start"] * SECTOR, part["size"] * SECTOR


def extract_partition(image: Path, number: int, target: Path) -> Path:
    """Partition `number` as a file of its own, sparse: an empty 2 GiB persistence partition costs no disk."""
    offset, length = partition_range(image, number)
    with image.open("rb") as src, target.open("wb") as dst:
        src.seek(offset)
        remaining = length
        while remaining:
            chunk = src.read(min(4 << 20, remaining))
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), 1)
            else:
                dst.write(chunk)
            remaining -= len(chunk)
        dst.truncate(length - remaining)
    return target


def squashfs_cat(squashfs: Path, path: str) -> bytes:
    return subprocess.run(["unsquashfs", "-cat", str(squashfs), path], capture_output=True, check=True).stdout


def squashfs_list(squashfs: Path) -> set[str]:
    out = subprocess.run(["unsquashfs", "-lc", "-d", "", str(squashfs)], capture_output=True, text=True, check=True).stdout
    return {line.strip().lstrip("/") for line in out.splitlines() if line.strip().strip("/")}


def sha256_range(path: Path, offset: int, length: int) -> str:
    """The digest of `length` bytes of a file from `offset`: one partition of a disk image."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(4 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_range(path, 0, path.stat().st_size)


GRUBENV_HEADER = b"# GRUB Environment Block\n"


def read_only_hashes(image: Path) -> dict[int, str]:
    """p2 and p3 whole; p1 with GRUB's 1024-byte environment block (found at a sector start)
    left out: GRUB rewrites it at every boot, the running system writes nothing there."""
    hashes = {number: sha256_range(image, *partition_range(image, number)) for number in (2, 3)}
    offset, length = partition_range(image, 1)
    with image.open("rb") as handle:
        handle.seek(offset)
        p1 = bytearray(handle.read(length))
    at = next(i for i in range(0, len(p1), SECTOR) if p1[i : i + len(GRUBENV_HEADER)] == GRUBENV_HEADER)
    p1[at : at + 1024] = bytes(1024)
    hashes[1] = hashlib.sha256(p1).hexdigest()
    return hashes


ISO_VOLUME_DATE = 16 * 2048 + 830  # the primary volume descriptor's modification date


def iso_identity(iso: Path) -> str:
    """An ISO's identity as GRUB's `probe --fs-uuid` shows it: its volume date, YYYY-MM-DD-hh-mm-ss-cc."""
    with iso.open("rb") as handle:
        handle.seek(ISO_VOLUME_DATE)
        digits = handle.read(16).decode(errors="replace")
    return "-".join([digits[0:4], *(digits[i : i + 2] for i in range(4, 16, 2))])
