"""disk: partition a plain file with sfdisk and copy each partition in at its offset."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.context import BuildContext
from amberpi.errors import StageError
from amberpi.files import CHUNK
from amberpi.layout import Partition, disk_size, plan_layout
from amberpi.render import render
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage


def copy_sparse(source: Path, target: Path, offset: int) -> None:
    """Copy source into target at offset, skipping zero blocks (the image stays sparse)."""
    zero = bytes(CHUNK)
    with source.open("rb") as src, target.open("r+b") as dst:
        position = offset
        while chunk := src.read(CHUNK):
            if chunk != zero[: len(chunk)]:
                dst.seek(position)
                dst.write(chunk)
            position += len(chunk)


def partition_table(image: Path) -> dict[str, Any]:
    """The image's MBR as sfdisk reads it back."""
    data: dict[str, Any] = json.loads(run(["sfdisk", "--json", str(image)], capture=True, label="sfdisk"))
    return data["partitiontable"]


def write_disk(image: Path, partitions: list[Partition], files: dict[str, Path], disk_id: str) -> None:
    with image.open("wb") as handle:
        handle.truncate(disk_size(partitions))
    script = render("sfdisk.j2", partitions=partitions, disk_id=disk_id)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", str(image)], input=script.encode(), label="sfdisk")
    for partition in partitions:
        copy_sparse(files[partition.role], image, partition.start)


class DiskStage(Stage):
    name = "disk"
    title = "Assembling the MBR disk image"
    version = 1
    needs = ("bootfs", "iso", "persistence")

    def tools(self, ctx: BuildContext) -> list[str]:
        return ["sfdisk"]

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {"image_id": ctx.image_id}

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        files = {
            "boot": upstream["bootfs"].path / "p1.img",
            "system": upstream["iso"].path / "p2.iso",
            "kernel": upstream["iso"].path / "p3.iso",
            "persistence": upstream["persistence"].path / "p4.img",
        }
        sizes = {role: path.stat().st_size for role, path in files.items()}
        sizes["kernel"] = max(sizes["kernel"], ctx.config.kernel_size_mib << 20)
        partitions = plan_layout(sizes)
        for partition in partitions:
            if files[partition.role].stat().st_size > partition.size:
                raise StageError(f"{partition.role} partition content does not fit", where=f"p{partition.number}")
        image = out / "disk.img"
        write_disk(image, partitions, files, ctx.image_id)
        layout = [
            {"number": p.number, "role": p.role, "start": p.start, "size": p.size, "type": p.type_id, "bootable": p.bootable}
            for p in partitions
        ]
        return Artefact(out, {"layout": layout, "image_bytes": image.stat().st_size})
