"""ext4 images from a folder, with mkfs.ext4 -d (no loop mounts)."""

from __future__ import annotations

from pathlib import Path

from amberpi.run import run
from amberpi.trees import set_mtimes


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
