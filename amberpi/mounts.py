"""Mounts and chroot sessions as context managers that always clean up.

Setup is composed with an ExitStack, so a half-done setup rolls back; teardown
runs in reverse order, keeps going past failures, and reports every failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from amberpi.errors import AmberPiError, StageError
from amberpi.log import LOG
from amberpi.run import run

POLICY_RC_D = "#!/bin/sh\n# Written by amberpi for the build: no service starts inside the chroot.\nexit 101\n"


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


def mounted_under(root: Path) -> list[str]:
    """Mount points at or below root, deepest first (from /proc/mounts)."""
    root_str = str(root.resolve())
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
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


@contextmanager
def mount(source: str, target: Path, *, fstype: str | None = None, options: Sequence[str] = ()) -> Iterator[Path]:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    argv += [source, str(target)]
    run(argv, label="mount")
    try:
        yield target
    finally:
        kill_processes_in(target)
        try:
            run(["umount", str(target)], label="umount")
        except AmberPiError:
            run(["umount", "--lazy", str(target)], label="umount")


@contextmanager
def replaced_file(path: Path, content: bytes | None, mode: int = 0o644) -> Iterator[None]:
    """Put `content` at path for the duration (or copy from the host when content is a Path)."""
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


class ChrootSession:
    """A rootfs with /proc, /sys, /dev, /run and a package cache mounted, ready for chroot."""

    def __init__(self, root: Path, *, apt_cache: Path | None = None) -> None:
        self.root = root.resolve()
        self.apt_cache = apt_cache
        self._stack = ExitStack()

    def __enter__(self) -> ChrootSession:
        with ExitStack() as stack:
            stack.callback(self._final_check)
            binds: list[tuple[str, str, str | None, tuple[str, ...]]] = [
                ("proc", "proc", "proc", ("nosuid", "nodev", "noexec")),
                ("/sys", "sys", None, ("rbind",)),
                ("/dev", "dev", None, ("bind",)),
                ("devpts", "dev/pts", "devpts", ("gid=5", "mode=620", "ptmxmode=666")),
                ("tmpfs", "run", "tmpfs", ("mode=755", "nosuid", "nodev")),
            ]
            if self.apt_cache:
                self.apt_cache.mkdir(parents=True, exist_ok=True)
                binds.append((str(self.apt_cache), "var/cache/apt/archives", None, ("bind",)))
            for source, rel, fstype, options in binds:
                target = resolve_inside(self.root, rel)
                target.mkdir(parents=True, exist_ok=True)
                if rel == "sys":
                    stack.enter_context(self._rbind(source, target))
                else:
                    stack.enter_context(mount(source, target, fstype=fstype, options=options))
            resolv = resolve_inside(self.root, "etc/resolv.conf")
            host_resolv = Path("/etc/resolv.conf")
            stack.enter_context(replaced_file(resolv, host_resolv.read_bytes() if host_resolv.exists() else b""))
            stack.enter_context(replaced_file(resolve_inside(self.root, "usr/sbin/policy-rc.d"), POLICY_RC_D.encode(), 0o755))
            self._stack = stack.pop_all()
        return self

    @contextmanager
    def _rbind(self, source: str, target: Path) -> Iterator[None]:
        run(["mount", "--rbind", "--make-rslave", source, str(target)], label="mount")
        try:
            yield
        finally:
            problems = unmount_all(target)
            if problems:
                LOG.note("warning: " + "; ".join(problems))

    def _final_check(self) -> None:
        leftover = mounted_under(self.root)
        if leftover:
            problems = unmount_all(self.root)
            if problems:
                raise StageError(
                    "could not release mounts in the build root",
                    where=", ".join(problems),
                    hint="stop processes using them, then run `python build.py clean`",
                )

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, label: str | None = None, **kwargs) -> str:  # type: ignore[no-untyped-def]
        chroot_env = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
        chroot_env.update(env or {})
        return run(["chroot", str(self.root), *argv], env=chroot_env, label=label or Path(argv[0]).name, **kwargs)


def remove_tree(path: Path) -> None:
    """Delete a build tree, refusing while anything is still mounted inside it."""
    if not path.exists():
        return
    problems = unmount_all(path)
    if problems or mounted_under(path):
        raise StageError(f"{path} still has mounts; not deleting it", where="; ".join(problems))
    shutil.rmtree(path, ignore_errors=False)
