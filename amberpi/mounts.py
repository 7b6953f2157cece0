"""Mounts as context managers that always clean up, and the mount table read right.

Teardown keeps going past failures and reports every one; a teardown failure
never hides the error that caused the unwind (errors.cleanup_after).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from amberpi.errors import AmberPiError, StageError, cleanup_after
from amberpi.log import LOG
from amberpi.run import run

MOUNT_TABLE = Path("/proc/mounts")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def decode_mount_field(field: str) -> str:
    """A path as the kernel escapes it in /proc/mounts: space, tab, newline and backslash are octal."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def mounted_under(root: Path, table: Path = MOUNT_TABLE) -> list[str]:
    """Mount points at or below root, deepest first."""
    root_str = str(root.resolve())
    points = []
    for line in table.read_text().splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = decode_mount_field(fields[1])
        if point == root_str or point.startswith(root_str + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def kill_processes_in(root: Path) -> None:
    """Stop processes whose root directory is inside `root` (left by an interrupted chroot)."""
    root_str = str(root.resolve())
    for attempt in range(2):
        victims = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                proc_root = os.readlink(proc / "root")
            except OSError:
                continue
            if proc_root == root_str or proc_root.startswith(root_str + "/"):
                victims.append(int(proc.name))
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1.0)


def unmount_all(root: Path) -> list[str]:
    """Unmount everything below root; returns the problems it could not fix."""
    problems = []
    kill_processes_in(root)
    for point in mounted_under(root):
        try:
            run(["umount", point], label="umount")
        except AmberPiError:
            try:
                run(["umount", "--lazy", point], label="umount")
            except AmberPiError as exc:
                problems.append(f"{point}: {exc.what}")
    return problems


def release(target: Path) -> None:
    """Unmount `target` (lazily when busy) after stopping what runs inside it."""
    kill_processes_in(target)
    try:
        run(["umount", str(target)], label="umount")
    except AmberPiError:
        run(["umount", "--lazy", str(target)], label="umount")


@contextmanager
def mount(source: str, target: Path, *, fstype: str | None = None, options: Sequence[str] = ()) -> Iterator[Path]:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    argv += [source, str(target)]
    run(argv, label="mount")
    with cleanup_after(lambda: release(target)):
        yield target


@contextmanager
def rbind(source: str, target: Path) -> Iterator[Path]:
    """A recursive bind that does not propagate back to the host."""
    run(["mount", "--rbind", "--make-rslave", source, str(target)], label="mount")

    def release_all() -> None:
        problems = unmount_all(target)
        if problems:
            LOG.note("warning: " + "; ".join(problems))

    with cleanup_after(release_all):
        yield target


def ensure_unmounted(root: Path) -> None:
    """Nothing may stay mounted under root: unmount what is left, or say what could not be."""
    if not mounted_under(root):
        return
    problems = unmount_all(root)
    if problems or mounted_under(root):
        raise StageError(
            f"could not release the mounts under {root}",
            where="; ".join(problems) or ", ".join(mounted_under(root)),
            hint="stop the processes using them (fuser -vm PATH), then `umount -R` them",
        )
