"""Operations on file trees: resolve inside a root, copy, copy over, link, move, date, remove."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from amberpi.errors import StageError
from amberpi.mounts import ensure_unmounted
from amberpi.run import run


def resolve_inside(root: Path, path: str) -> Path:
    """Resolve `path` inside `root` following symlinks, never escaping root."""
    root = root.resolve()
    current = root
    parts = [p for p in Path(path).parts if p not in ("/", "")]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise StageError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in Path(target).parts if p not in ("/", "")] + parts
            continue
        current = candidate
    return current


def copy_tree(source: Path, target: Path) -> None:
    """Copy a rootfs preserving owners, modes, links, devices and xattrs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        remove_tree(target)
    run(["cp", "-a", "--reflink=auto", str(source), str(target)], label="cp")


def copy_over(source: Path, tree: Path) -> None:
    """Copy a folder's contents over a rootfs, following no symlink out of it; files become root's."""
    for item in sorted(source.rglob("*")):
        rel = item.relative_to(source)
        if item.name == ".gitkeep":
            continue
        # The folder is resolved inside the tree; the last component is not followed: an
        # include at a path that is a symlink in the tree replaces the link, as `cp` would.
        target = resolve_inside(tree, str(rel.parent)) / rel.name
        if item.is_dir() and not item.is_symlink():
            if target.is_symlink() and not target.is_dir():
                target.unlink()
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        if item.is_symlink():
            os.symlink(os.readlink(item), target)
        else:
            shutil.copy2(item, target)
            os.chown(target, 0, 0)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link when on the same file system (cheap for the squashfs), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def gzip_file(source: Path, target: Path) -> None:
    """target: source gzip-compressed, the same bytes for the same input (no name, no date)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as plain, target.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed:
            shutil.copyfileobj(plain, packed, 4 << 20)


def move_file(source: Path, target: Path) -> None:
    """Rename, or copy keeping holes when target is on another file system (a sparse image stays sparse)."""
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    run(["cp", "--sparse=always", "--preserve=mode,timestamps", str(source), str(target)], label="cp")
    source.unlink()


# What debootstrap copies from the build host into the tree's /etc (its setup_etc).
BUILD_HOST_FILES = ("hostname", "resolv.conf")


def forget_build_host(tree: Path) -> None:
    """Drop the build host's hostname and resolver from a fresh tree.

    /etc/resolv.conf is left empty (a chroot session puts the host's there while it
    runs, amberpi/chroot.py); /etc/hostname goes (customize writes the device's).
    """
    etc = resolve_inside(tree, "etc")
    for name in BUILD_HOST_FILES:
        path = etc / name  # the link itself, if it is one: never what it points at
        if path.exists() or path.is_symlink():
            path.unlink()
    if etc.is_dir():
        (etc / "resolv.conf").write_text("")


def set_mtimes(tree: Path, epoch: int) -> None:
    """Pin every time in a staging tree the build wrote itself (copies, not links into the cache)."""
    for path in [*tree.rglob("*"), tree]:
        if not path.is_symlink():
            os.utime(path, (epoch, epoch))


@contextmanager
def replaced_file(path: Path, content: bytes | None, mode: int = 0o644) -> Iterator[None]:
    """Put `content` at path for the duration of the block; the original comes back afterwards."""
    backup = path.with_name(path.name + ".amberpi-orig")
    had_original = path.exists() or path.is_symlink()
    if had_original:
        os.replace(path, backup)
    try:
        if content is not None:
            path.write_bytes(content)
            path.chmod(mode)
        yield
    finally:
        if path.exists() or path.is_symlink():
            path.unlink()
        if had_original:
            os.replace(backup, path)


def foreign_mounts(path: Path) -> list[str]:
    """Folders below path on another file system than path itself: mounts nobody told us about."""
    device = path.lstat().st_dev
    found = []
    for folder, subfolders, _files in os.walk(path):
        for name in list(subfolders):
            child = Path(folder) / name
            try:
                info = child.lstat()
            except FileNotFoundError:
                continue
            if info.st_dev != device:
                found.append(str(child))
                subfolders.remove(name)
    return found


def remove_tree(path: Path) -> None:
    """Delete a build tree, never through a mount: unmount what is ours, refuse what is not."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    ensure_unmounted(path)
    crossing = foreign_mounts(path)
    if crossing:
        raise StageError(
            f"{path} holds other file systems; not deleting it",
            where=", ".join(crossing[:5]),
            hint="unmount them first",
        )
    shutil.rmtree(path)
