"""FAT32 images from a folder, with dosfstools and mtools (no loop mounts)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from amberpi.run import run
from amberpi.trees import set_mtimes

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def make_fat(source: Path, target: Path, *, size_mib: int, label: str, volume_id: str, epoch: int) -> None:
    """A FAT32 image of `source`'s tree; every date is epoch, so the same tree gives the same bytes."""
    if target.exists():
        target.unlink()
    set_mtimes(source, epoch)
    env = {**MTOOLS_ENV, "SOURCE_DATE_EPOCH": str(epoch)}
    argv = ["mkfs.vfat", "--invariant", "-F", "32", "-n", label, "-i", volume_id, "-C", str(target), str(size_mib * 1024)]
    run(argv, label="mkfs.vfat", env=env)
    for item in sorted(source.iterdir()):
        # -m keeps the (pinned) modification times.
        run(["mcopy", "-i", str(target), "-s", "-p", "-m", "-Q", str(item), "::/"], label="mcopy", env=env)


def list_fat(image: Path) -> list[str]:
    """Every path in a FAT image, read back with mtools."""
    out = run(["mdir", "-i", str(image), "-/", "-b", "::/"], capture=True, label="mdir", env=MTOOLS_ENV)
    return sorted(line.strip().removeprefix("::") for line in out.splitlines() if line.strip())


def read_fat_file(image: Path, path: str) -> bytes:
    """A file's bytes, copied out with mcopy (mtype would translate text)."""
    with tempfile.TemporaryDirectory(prefix="amberpi-fat-") as folder:
        target = Path(folder) / "file"
        run(["mcopy", "-i", str(image), "-n", f"::{path}", str(target)], label="mcopy", env=MTOOLS_ENV)
        return target.read_bytes()
