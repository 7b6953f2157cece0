"""A chroot session: an arm64 rootfs with /proc, /sys, /dev, /run and the .deb cache mounted.

Setup is composed with an ExitStack, so a half-done setup rolls back; teardown
runs in reverse order and never hides the error that caused it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from amberpi.errors import describe
from amberpi.mounts import ensure_unmounted, kill_processes_in, mount
from amberpi.run import run
from amberpi.trees import replaced_file, resolve_inside

POLICY_RC_D = "#!/bin/sh\n# Written by amberpi for the build: no service starts inside the chroot.\nexit 101\n"
# What every command in the chroot sees besides run()'s base environment (amberpi/run.py).
CHROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}


class ChrootSession:
    def __init__(self, root: Path, *, apt_cache: Path | None = None) -> None:
        self.root = root.resolve()
        self.apt_cache = apt_cache
        self._stack = ExitStack()

    def __enter__(self) -> ChrootSession:
        with ExitStack() as stack:
            stack.callback(ensure_unmounted, self.root)
            # A fresh sysfs, read-only: the host's /sys (EFI variables, device state) stays out of reach.
            mounts: list[tuple[str, str, str | None, tuple[str, ...]]] = [
                ("proc", "proc", "proc", ("nosuid", "nodev", "noexec")),
                ("sysfs", "sys", "sysfs", ("ro", "nosuid", "nodev", "noexec")),
                ("/dev", "dev", None, ("bind",)),
                ("devpts", "dev/pts", "devpts", ("gid=5", "mode=620", "ptmxmode=666")),
                # Its own /dev/shm: POSIX shared memory must not land in the host's /dev.
                ("tmpfs", "dev/shm", "tmpfs", ("mode=1777", "nosuid", "nodev")),
                ("tmpfs", "run", "tmpfs", ("mode=755", "nosuid", "nodev")),
            ]
            if self.apt_cache:
                self.apt_cache.mkdir(parents=True, exist_ok=True)
                mounts.append((str(self.apt_cache), "var/cache/apt/archives", None, ("bind",)))
            for source, rel, fstype, options in mounts:
                target = resolve_inside(self.root, rel)
                target.mkdir(parents=True, exist_ok=True)
                stack.enter_context(mount(source, target, fstype=fstype, options=options))
            resolv = resolve_inside(self.root, "etc/resolv.conf")
            host_resolv = Path("/etc/resolv.conf")
            stack.enter_context(replaced_file(resolv, host_resolv.read_bytes() if host_resolv.exists() else b""))
            stack.enter_context(replaced_file(resolve_inside(self.root, "usr/sbin/policy-rc.d"), POLICY_RC_D.encode(), 0o755))
            # First on the way out: whatever a command left running in the tree (a daemon that left
            # its process group, which run() kills) is stopped before its mounts are released.
            stack.callback(kill_processes_in, self.root)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._stack.close()
        except Exception as failure:
            if exc is None:
                raise
            # The error that ended the session is what the user must see; the cleanup's goes with it.
            exc.add_note(f"releasing the chroot {self.root} failed too: {describe(failure)}")

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        label: str | None = None,
        where: str | None = None,
        hint: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run argv in the chroot; after `timeout` seconds it is killed with its process group (ToolTimeout)."""
        return run(
            ["chroot", str(self.root), *argv],
            env={**CHROOT_ENV, **(env or {})},
            input=input,
            label=label or Path(argv[0]).name,
            where=where,
            hint=hint,
            timeout=timeout,
        )
