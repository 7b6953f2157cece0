"""persistence: p4, the ext4 partition live-boot keeps the overlay's upper layer on."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.context import BuildContext
from amberpi.files import set_mtimes
from amberpi.render import write_rendered
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage

# live-boot's persistence.conf: the whole root is a union with the read-only squashfs.
PERSISTENCE_ENTRIES = ("/ union",)


def partition_uuid(image_id: str, role: str) -> str:
    """A stable UUID per image and partition role."""
    return str(uuid.UUID(hashlib.sha256(f"amberpi:{image_id}:{role}".encode()).hexdigest()[:32]))


def make_ext4(source: Path, target: Path, *, size_mib: int, label: str, fs_uuid: str, epoch: int) -> None:
    """An ext4 image of `source`'s tree: fixed UUID, hash seed and times, so the same tree gives the same bytes."""
    with target.open("wb") as handle:
        handle.truncate(size_mib << 20)
    set_mtimes(source, epoch)
    options = f"root_owner=0:0,hash_seed={fs_uuid}"
    run(
        ["mkfs.ext4", "-F", "-q", "-L", label, "-U", fs_uuid, "-d", str(source), "-E", options, str(target)],
        label="mkfs.ext4",
        # e2fsprogs stamps the superblock and inodes with "now" unless told otherwise.
        env={"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)},
    )
    # -d copies each file's ctime, which no one can set on the source: pin it afterwards.
    paths = ["/", *sorted("/" + str(p.relative_to(source)) for p in source.rglob("*") if not p.is_symlink())]
    commands = "".join(f"set_inode_field {path} ctime @{epoch}\n" for path in paths)
    run(["debugfs", "-w", "-f", "-", str(target)], input=commands.encode(), label="debugfs", capture=True)


class PersistenceStage(Stage):
    name = "persistence"
    title = "Writing the persistence partition (ext4)"
    version = 2
    # Only for the build's timestamp (squash.meta["source_date_epoch"]).
    needs = ("squash",)

    def tools(self, ctx: BuildContext) -> list[str]:
        return ["mkfs.ext4", "debugfs"]

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {"image_id": ctx.image_id, "size": ctx.config.persistence_size_mib, "entries": list(PERSISTENCE_ENTRIES)}

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "tree"
        write_rendered(tree / "persistence.conf", "persistence.conf.j2", entries=PERSISTENCE_ENTRIES)
        image = out / "p4.img"
        fs_uuid = partition_uuid(ctx.image_id, "persistence")
        epoch = upstream["squash"].meta["source_date_epoch"]
        make_ext4(tree, image, size_mib=ctx.config.persistence_size_mib, label=ctx.persistence_label, fs_uuid=fs_uuid, epoch=epoch)
        return Artefact(out, {"uuid": fs_uuid})
