"""Content digests: of a file, and of trees of files (names, modes and contents)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 4 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_paths(paths: list[Path]) -> str:
    """A digest of files' relative names, modes and contents (folders walked in order)."""
    h = hashlib.sha256()
    for base in paths:
        if not base.exists():
            h.update(f"missing:{base.name}".encode())
            continue
        items = [base] if base.is_file() else sorted(p for p in base.rglob("*"))
        for item in items:
            rel = item.name if item == base else str(item.relative_to(base))
            if item.is_symlink():
                h.update(f"L:{rel}:{os.readlink(item)}\0".encode())
            elif item.is_file():
                h.update(f"F:{rel}:{item.stat().st_mode & 0o7777:o}\0".encode())
                h.update(hashlib.sha256(item.read_bytes()).digest())
            elif item.is_dir():
                h.update(f"D:{rel}\0".encode())
    return h.hexdigest()
