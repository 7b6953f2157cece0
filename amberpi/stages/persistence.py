"""persistence: p4, the ext4 partition live-boot keeps the overlay's upper layer on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.context import BuildContext
from amberpi.filesystems.ext4 import make_ext4
from amberpi.identity import ImageIdentity
from amberpi.render import write_rendered
from amberpi.stages.base import Artefact, Stage

# live-boot's persistence.conf: by default the whole root is a union with the read-only
# squashfs; with resilience.persistent_paths, only those folders are, the rest lives in RAM.
PERSISTENCE_ENTRIES = ("/ union",)


def persistence_entries(paths: list[str]) -> tuple[str, ...]:
    return tuple(f"{path} union" for path in paths) if paths else PERSISTENCE_ENTRIES


def overlay_folders(entries: tuple[str, ...]) -> list[str]:
    """The upper and work folders live-boot uses for each union (rw, work for /; home/rw... for /home).

    Made at build time, so a readonly boot of a fresh card finds the (empty) layers it stacks.
    """
    folders = []
    for entry in entries:
        path = entry.split()[0].strip("/")
        folders += [f"{path}/rw" if path else "rw", f"{path}/work" if path else "work"]
    return folders


@dataclass(frozen=True)
class PersistenceInputs:
    identity: ImageIdentity
    size_mib: int
    entries: tuple[str, ...]


class PersistenceStage(Stage[PersistenceInputs]):
    name = "persistence"
    version = 4
    uses_facts = ("epoch",)
    tools = ("mkfs.ext4", "debugfs")

    def inputs(self, build: BuildContext) -> PersistenceInputs:
        entries = persistence_entries(build.config.resilience.persistent_paths)
        return PersistenceInputs(build.identity, build.config.persistence_size_mib, entries)

    def title(self, inputs: PersistenceInputs) -> str:
        return f"Writing the persistence partition (ext4, {inputs.size_mib} MiB)"

    def run(self, inputs: PersistenceInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "tree"
        write_rendered(tree / "persistence.conf", "persistence.conf.j2", entries=inputs.entries)
        for folder in overlay_folders(inputs.entries):
            (tree / folder).mkdir(mode=0o755, parents=True)
        fs_uuid = inputs.identity.partition_uuid("persistence")
        epoch = int(upstream["epoch"].facts["source_date_epoch"])
        make_ext4(tree, out / "p4.img", size_mib=inputs.size_mib, label=inputs.identity.persistence_label, fs_uuid=fs_uuid, epoch=epoch)
        return Artefact(out, {"uuid": fs_uuid})
