"""The Docker engine, through the Docker SDK: connecting, and turning its failures into clear errors.

Every message names the cause and the fix: no engine, no permission on its socket,
no network to the mirror, no disk space.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from amberpi.errors import BackendError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
GIB = 1 << 30
# Free space a build needs, roughly, in each place (the workspace lives in the container's layer).
FREE_GIB = {"Docker's data root": 4, "the build cache": 2, "the output folder": 2}

DISK_FULL_PATTERNS = ("no space left on device", "disk quota exceeded", "not enough free space", "enospc")
NETWORK_PATTERNS = (
    "temporary failure resolving",
    "temporary failure in name resolution",
    "could not resolve",
    "name or service not known",
    "failed getting release file",
    "couldn't download",
    "failed to fetch",
    "unable to connect to",
    "could not connect to",
    "network is unreachable",
    "connection timed out",
    "failed to establish a new connection",
)

ENGINE_FIX = (
    "install Docker (Debian/Ubuntu: sudo apt-get install docker.io; Fedora: sudo dnf install moby-engine) "
    "and start it (sudo systemctl start docker), or build natively as root on a Debian-family host: "
    "sudo python3 build.py --backend native"
)


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception (an OSError from the socket, usually) behind an SDK error."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        nested = current.__cause__ or current.__context__
        if nested is None:
            nested = next((arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)), None)
        if nested is None:
            break
        current = nested
    return current


def engine_error(exc: BaseException) -> BackendError:
    """A clear error for an engine that cannot be used: absent, not allowed, or failing."""
    cause = root_cause(exc)
    host = docker_host()
    text = str(exc)
    if isinstance(cause, PermissionError) or "Permission denied" in text:
        user = user_name()
        return BackendError(
            f"permission denied on the Docker engine's socket {host}: the user {user} is not allowed to use Docker "
            "(not in the docker group)",
            hint=f"sudo usermod -aG docker {user}, then log out and in again (or run `newgrp docker`); "
            "or build as root: sudo python3 build.py",
        )
    refused = (errno.ENOENT, errno.ECONNREFUSED)
    if (isinstance(cause, OSError) and cause.errno in refused) or any(
        word in text for word in ("No such file or directory", "Connection refused", "FileNotFoundError")
    ):
        return BackendError(f"no Docker engine answers at {host} (is Docker installed and running?)", hint=ENGINE_FIX)
    return BackendError(f"the Docker engine at {host} cannot be used: {text}", hint=ENGINE_FIX)


def connect_engine(factory: Callable[[], Any] | None = None) -> Any:
    """A DockerClient whose engine answered a ping, or BackendError saying why not."""
    import docker

    make = factory or docker.from_env
    try:
        client = make()
        client.ping()
    except docker.errors.DockerException as exc:
        raise engine_error(exc) from None
    except OSError as exc:
        raise engine_error(exc) from None
    return client


def free_gib(path: Path) -> float | None:
    """Free GiB on the file system holding `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free / GIB
        except OSError:
            continue
    return None


def space_report(places: dict[str, Path]) -> str:
    parts = []
    for what, path in places.items():
        free = free_gib(path)
        parts.append(f"{what} {path}: {free:.1f} GiB free" if free is not None else f"{what} {path}")
    return "; ".join(parts)


def disk_full_error(places: dict[str, Path], detail: str = "") -> BackendError:
    return BackendError(
        "out of disk space" + (f": {detail}" if detail else ""),
        where=space_report(places),
        hint="free space there (old Docker images: `docker image prune`; an old cache: `python3 build.py clean -f`), "
        "or point --cache-dir and --output at a larger disk",
    )


def check_free_space(places: dict[str, Path], needed: dict[str, int] | None = None) -> None:
    """Stop before any work when a place the build writes to is nearly full."""
    needed = needed or FREE_GIB
    short = []
    for what, path in places.items():
        free = free_gib(path)
        want = needed.get(what, 0)
        if free is not None and free < want:
            short.append(f"{what} {path} has {free:.1f} GiB free, the build needs about {want} GiB")
    if short:
        raise disk_full_error(places, "; ".join(short))


def network_error(mirror: str, *, pypi: bool = False) -> BackendError:
    targets = f"the Debian mirror {mirror}" + (" or PyPI (pypi.org)" if pypi else "")
    return BackendError(
        f"no network: the build could not reach {targets}",
        where="the build container (it shares this host's network)",
        hint=f"check that this host reaches {mirror}"
        + (" and pypi.org" if pypi else "")
        + "; behind a proxy set http_proxy and https_proxy (they are passed on); or choose a reachable mirror with --mirror URL",
    )


def diagnose(lines: Iterable[str], *, mirror: str, places: dict[str, Path], pypi: bool = False) -> BackendError | None:
    """Why a build that printed `lines` failed, when it is the disk or the network."""
    text = "\n".join(lines).lower()
    if any(pattern in text for pattern in DISK_FULL_PATTERNS):
        return disk_full_error(places)
    if any(pattern in text for pattern in NETWORK_PATTERNS):
        return network_error(mirror, pypi=pypi)
    return None


def api_error(exc: BaseException, action: str, places: dict[str, Path]) -> BackendError:
    """An engine refusal while doing `action` (create, start, build...), with its cause."""
    explanation = str(getattr(exc, "explanation", None) or exc)
    if any(pattern in explanation.lower() for pattern in DISK_FULL_PATTERNS):
        return disk_full_error(places, f"the Docker engine could not {action}")
    return BackendError(
        f"the Docker engine could not {action}: {explanation}",
        where=docker_host(),
        hint="check the engine's log (journalctl -u docker); `python3 build.py --backend native` as root avoids Docker",
    )
