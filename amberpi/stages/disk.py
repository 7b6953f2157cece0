"""disk: partition a plain file with sfdisk and copy each partition in at its offset."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amberpi.context import BuildContext
from amberpi.digests import CHUNK
from amberpi.errors import StageError
from amberpi.identity import ImageIdentity
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
    data = json.loads(run(["sfdisk", "--json", str(image)], capture=True, label="sfdisk"))
    table: dict[str, Any] = data["partitiontable"]
    return table


def write_disk(image: Path, partitions: list[Partition], files: dict[str, Path], disk_id: str) -> None:
    with image.open("wb") as handle:
        handle.truncate(disk_size(partitions))
    script = render("sfdisk.j2", partitions=partitions, disk_id=disk_id)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", str(image)], input=script.encode(), label="sfdisk")
    for partition in partitions:
        copy_sparse(files[partition.role], image, partition.start)


@dataclass(frozen=True)
class DiskInputs:
    identity: ImageIdentity
    kernel_size_mib: int


class DiskStage(Stage[DiskInputs]):
    name = "disk"
    version = 2
    needs = ("bootfs", "iso", "persistence")
    tools = ("sfdisk",)

    def inputs(self, build: BuildContext) -> DiskInputs:
        return DiskInputs(build.identity, build.config.kernel_size_mib)

    def title(self, inputs: DiskInputs) -> str:
        return "Assembling the MBR disk image"

    def run(self, inputs: DiskInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        files = {
            "boot": upstream["bootfs"].folder / "p1.img",
            "system": upstream["iso"].folder / "p2.iso",
            "kernel": upstream["iso"].folder / "p3.iso",
            "persistence": upstream["persistence"].folder / "p4.img",
        }
        sizes = {role: path.stat().st_size for role, path in files.items()}
        sizes["kernel"] = max(sizes["kernel"], inputs.kernel_size_mib << 20)
        partitions = plan_layout(sizes)
        for partition in partitions:
            if files[partition.role].stat().st_size > partition.size:
                raise StageError(f"{partition.role} partition content does not fit", where=f"p{partition.number}")
        image = out / "disk.img"
        write_disk(image, partitions, files, inputs.identity.image_id)
        layout = [
            {"number": p.number, "role": p.role, "start": p.start, "size": p.size, "type": p.type_id, "bootable": p.bootable}
            for p in partitions
        ]
        return Artefact(out, {"layout": layout, "image_bytes": image.stat().st_size})
