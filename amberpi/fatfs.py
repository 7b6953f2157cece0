"""FAT32 images from a folder, with dosfstools and mtools (no loop mounts)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from amberpi.run import run

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def make_fat(source: Path, target: Path, *, size_mib: int, label: str, volume_id: str) -> None:
    if target.exists():
        target.unlink()
    run(["mkfs.vfat", "-F", "32", "-n", label, "-i", volume_id, "-C", str(target), str(size_mib * 1024)], label="mkfs.vfat")
    for item in sorted(source.iterdir()):
        run(["mcopy", "-i", str(target), "-s", "-p", "-m", "-Q", str(item), "::/"], label="mcopy", env=MTOOLS_ENV)


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
