"""Partition layout math."""

from __future__ import annotations

import itertools

from amberpi.layout import ALIGN, SECTOR, align_up, disk_size, plan_layout

MIB = 1 << 20


def test_align_up() -> None:
    assert align_up(0) == 0
    assert align_up(1) == ALIGN
    assert align_up(ALIGN) == ALIGN
    assert align_up(ALIGN + 1) == 2 * ALIGN


def test_four_partitions_in_order_aligned_and_adjacent() -> None:
    parts = plan_layout({"boot": 128 * MIB, "system": 300 * MIB + 5, "kernel": 256 * MIB, "persistence": 1024 * MIB})
    assert [p.role for p in parts] == ["boot", "system", "kernel", "persistence"]
    assert [p.number for p in parts] == [1, 2, 3, 4]
    assert parts[0].start == ALIGN, "room for the MBR before p1"
    for before, after in itertools.pairwise(parts):
        assert after.start == before.start + before.size
    assert all(p.start % ALIGN == 0 and p.size % ALIGN == 0 for p in parts)
    assert parts[1].size == 304 * MIB
    assert disk_size(parts) == parts[3].start + parts[3].size
    assert parts[0].bootable and not any(p.bootable for p in parts[1:])
    assert parts[0].type_id == "c"
    assert parts[0].start_sector == ALIGN // SECTOR
