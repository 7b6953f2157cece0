"""persistence: p4, the ext4 partition live-boot keeps the overlay's upper layer on."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.context import BuildContext
from amberpi.render import write_rendered
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage

# live-boot's persistence.conf: the whole root is a union with the read-only squashfs.
PERSISTENCE_ENTRIES = ("/ union",)


def partition_uuid(image_id: str, role: str) -> str:
    """A stable UUID per image and partition role."""
    return str(uuid.UUID(hashlib.sha256(f"amberpi:{image_id}:{role}".encode()).hexdigest()[:32]))


def make_ext4(source: Path, target: Path, *, size_mib: int, label: str, fs_uuid: str) -> None:
    with target.open("wb") as handle:
        handle.truncate(size_mib << 20)
    run(
        ["mkfs.ext4", "-F", "-q", "-L", label, "-U", fs_uuid, "-d", str(source), "-E", "root_owner=0:0", str(target)],
        label="mkfs.ext4",
    )


class PersistenceStage(Stage):
    name = "persistence"
    title = "Writing the persistence partition (ext4)"
    version = 1

    def tools(self, ctx: BuildContext) -> list[str]:
        return ["mkfs.ext4"]

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {"image_id": ctx.image_id, "size": ctx.config.persistence_size_mib, "entries": list(PERSISTENCE_ENTRIES)}

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "tree"
        write_rendered(tree / "persistence.conf", "persistence.conf.j2", entries=PERSISTENCE_ENTRIES)
        image = out / "p4.img"
        fs_uuid = partition_uuid(ctx.image_id, "persistence")
        make_ext4(tree, image, size_mib=ctx.config.persistence_size_mib, label=ctx.persistence_label, fs_uuid=fs_uuid)
        return Artefact(out, {"uuid": fs_uuid})
