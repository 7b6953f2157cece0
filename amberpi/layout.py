"""Partition layout math for the MBR image (the Pi boot ROM reads only MBR)."""

from __future__ import annotations

from dataclasses import dataclass

SECTOR = 512
ALIGN = 4 << 20  # 4 MiB: SD card erase blocks, and room before p1 for the MBR


@dataclass(frozen=True)
class Partition:
    number: int
    role: str
    type_id: str  # MBR type byte, hex
    start: int  # bytes
    size: int  # bytes
    bootable: bool = False

    @property
    def start_sector(self) -> int:
        return self.start // SECTOR

    @property
    def size_sectors(self) -> int:
        return self.size // SECTOR


def align_up(value: int, alignment: int = ALIGN) -> int:
    return -(-value // alignment) * alignment


# role, MBR type: FAT32 LBA, Linux (ISO9660 carries no own MBR type), Linux, Linux.
ROLES = (("boot", "c", True), ("system", "83", False), ("kernel", "83", False), ("persistence", "83", False))


def plan_layout(sizes: dict[str, int]) -> list[Partition]:
    """Place the four partitions in order, each start and size aligned to 4 MiB."""
    partitions = []
    offset = ALIGN
    for number, (role, type_id, bootable) in enumerate(ROLES, start=1):
        size = align_up(sizes[role])
        partitions.append(Partition(number, role, type_id, offset, size, bootable))
        offset += size
    return partitions


def disk_size(partitions: list[Partition]) -> int:
    last = partitions[-1]
    return last.start + last.size
