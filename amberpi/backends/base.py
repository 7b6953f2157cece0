"""The backend contract, and the choice between native and Docker (`--backend auto|native|docker`).

A backend runs the one pipeline somewhere: `native` on this host as root, `docker`
inside the builder container (which runs the native backend in there).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from amberpi.cache import Incremental
from amberpi.config import Config
from amberpi.errors import AmberPiError, UsageError

# Set inside the builder container: the native pipeline there reports itself as `docker`.
BACKEND_ENV = "AMBERPI_BACKEND"
OS_RELEASE = Path("/etc/os-release")
DEBIAN_VERSION = Path("/etc/debian_version")


class BackendName(enum.StrEnum):
    auto = "auto"
    native = "native"
    docker = "docker"


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked for, independent of where it runs."""

    config: Config
    incremental: Incremental = Incremental.yes
    keep_workspace: bool = False
    verbose: bool = False
    debug: bool = False
    rebuild_builder: bool = False


class Backend(Protocol):
    name: BackendName
    reason: str  # why this backend was chosen, shown in the first progress line

    def validate(self, request: BuildRequest) -> None:
        """Check the host (and config) can build; build nothing."""

    def build(self, request: BuildRequest) -> int:
        """Build the image; returns the exit code."""


def banner(request: BuildRequest, backend: BackendName, reason: str = "") -> str:
    """The first progress line of a build."""
    c = request.config
    chosen = f"backend {backend}" + (f" ({reason})" if reason else "")
    return f"AmberPi: building {c.name} (board {c.board}, {c.suite} arm64, {chosen}, mirror {c.mirror})"


def is_debian_family(os_release: Path = OS_RELEASE, debian_version: Path = DEBIAN_VERSION) -> bool:
    if debian_version.exists():
        return True
    try:
        text = os_release.read_text()
    except OSError:
        return False
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    ids = (fields.get("ID", "") + " " + fields.get("ID_LIKE", "")).replace('"', "").split()
    return "debian" in ids


def native_unavailable() -> str | None:
    """Why the native backend cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the native build must run as root (debootstrap, chroot and mounts need it)"
    if not is_debian_family():
        return "the native build needs a Debian-family host (apt, debootstrap); this one is not"
    return None


def docker_unavailable() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    from amberpi.backends.engine import connect_engine

    try:
        connect_engine()
    except AmberPiError as exc:
        return exc.what
    return None


def select_backend(
    choice: BackendName | str,
    *,
    native_probe: Callable[[], str | None] = native_unavailable,
    docker_probe: Callable[[], str | None] = docker_unavailable,
) -> Backend:
    """The backend for `choice`; `auto` takes native when it can run, else a Docker engine that answers."""
    from amberpi.backends.docker import DockerBackend
    from amberpi.backends.native import NativeBackend

    choice = BackendName(choice)
    if choice is BackendName.native:
        return NativeBackend()
    if choice is BackendName.docker:
        return DockerBackend()
    native_problem = native_probe()
    if native_problem is None:
        return NativeBackend(reason="auto: root on a Debian-family host")
    docker_problem = docker_probe()
    if docker_problem is None:
        return DockerBackend(reason=f"auto: {native_reason_short(native_problem)}")
    raise UsageError(
        "no build backend can run here",
        where=f"native: {native_problem}; docker: {docker_problem}",
        hint="either build natively as root on a Debian-family host (sudo python3 build.py ... --backend native), "
        "or use Docker: install and start a Docker engine, let this user use it (sudo usermod -aG docker $USER, "
        "then log in again) and build with --backend docker",
    )


def native_reason_short(problem: str) -> str:
    return "not root" if "root" in problem else "not a Debian-family host"
