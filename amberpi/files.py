"""Small file helpers shared by stages."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

CHUNK = 4 << 20


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link when on the same file system (cheap for the squashfs), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_range(path: Path, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def set_mtimes(tree: Path, epoch: int) -> None:
    """Pin every time in a staging tree the build wrote itself (copies, not links into the cache)."""
    for path in [*tree.rglob("*"), tree]:
        if not path.is_symlink():
            os.utime(path, (epoch, epoch))
