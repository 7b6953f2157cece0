"""The Docker backend: the same pipeline, run inside the builder container through the Docker SDK.

The host checks what it can (engine, arm64 emulation, disk space), builds or
reuses the builder image, then runs `python -m amberpi build --backend native`
in a container with the repository mounted read-only and the output folder and
cache read-write, at the same paths as on the host. The container's output is
streamed unchanged, its exit status is returned, and it is always removed.
"""

from __future__ import annotations

import collections
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from amberpi.backends.base import BACKEND_ENV, BackendName, BuildRequest, banner
from amberpi.backends.builder import BASE_IMAGE, LABEL, ensure_builder_image
from amberpi.backends.engine import api_error, check_free_space, connect_engine, diagnose
from amberpi.backends.native import OWNER_ENV
from amberpi.config import REPO_ROOT, Config
from amberpi.errors import UsageError
from amberpi.hostsetup import ensure_arm64_emulation
from amberpi.log import LOG

CONTAINER_PYTHON = "/opt/amberpi/venv/bin/python"  # made by docker/Dockerfile
CONFIG_MOUNT = Path("/run/amberpi")  # the resolved config, read-only, inside the container
CONFIG_NAME = "build-config.yaml"
STOP_GRACE = 120.0  # seconds the pipeline gets to unwind (unmount, clean up) after SIGINT
TAIL_LINES = 200
# Bound at the same path in the container, an output or cache folder must not hide the container's
# own system. Refused at or below: the kernel's and the runtime's folders, and those the builder's
# programs, libraries and settings live in (the host's /usr bound over the container's).
FORBIDDEN_ROOTS = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/boot",
)
# Refused at or above: the container's package state, and the build's workspace root (which a bind
# over /var/tmp would move onto the host). A folder beside them (/var/lib/jenkins/out) is fine.
CONTAINER_FOLDERS = ("/var/lib/dpkg", "/var/lib/apt", "/var/tmp")
# What the build reads from its environment (amberpi/archive.py reads AMBERPI_ARCHIVE_MAX_AGE),
# handed on to the build in the container.
PASSED_ENV = (
    "SOURCE_DATE_EPOCH",
    "AMBERPI_ARCHIVE_MAX_AGE",
    "QEMU_CPU",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)

# Capabilities the pipeline uses in the container; every other one is dropped (no privileged=True,
# which also fails on engines whose bounding set lacks CAP_SYS_RESOURCE).
CAPABILITIES = (
    "SYS_ADMIN",  # mount(2): proc, the /sys rbind, /dev bind, devpts, tmpfs and the .deb cache bind of the chroot
    "SYS_CHROOT",  # chroot(8) into the arm64 tree: debootstrap's second stage, apt, hooks, update-initramfs
    "MKNOD",  # debootstrap makes the device nodes of the new tree's /dev
    "CHOWN",  # dpkg, tar and `cp -a` give files their owners (root, _apt, messagebus, ...); outputs to the user
    "FOWNER",  # dpkg and `cp -a` set modes, times and xattrs on files root does not own
    "DAC_OVERRIDE",  # root reads and writes files whatever their mode (dpkg, apt's _apt-owned partial folders)
    "DAC_READ_SEARCH",  # copy trees with unreadable files and folders (/etc/shadow-, private key folders)
    "FSETID",  # keep setuid and setgid bits when dpkg and `cp -a` write them (su, passwd, mount)
    "SETUID",  # apt drops to the _apt user to download; maintainer scripts use su and runuser
    "SETGID",  # the same, for groups
    "SETFCAP",  # postinst scripts set file capabilities (ping's cap_net_raw)
    "KILL",  # stop processes left in the chroot that run as another user (amberpi/mounts.py)
)
SECURITY_OPT = (
    # AppArmor's docker-default profile denies mount(2) even with CAP_SYS_ADMIN (Ubuntu, Debian hosts
    # with AppArmor); engines without AppArmor ignore this. Docker's default seccomp profile stays: it
    # allows mount, umount2 and chroot to a container that holds CAP_SYS_ADMIN and CAP_SYS_CHROOT.
    "apparmor=unconfined",
)


@dataclass(frozen=True)
class Bind:
    host: Path
    target: Path
    read_only: bool


@dataclass
class ContainerPlan:
    """Everything the engine needs to run one build container."""

    image: str
    command: list[str]
    environment: dict[str, str]
    binds: list[Bind]
    working_dir: str
    name: str = field(default_factory=lambda: f"amberpi-build-{os.getpid()}-{secrets.token_hex(3)}")

    def create_kwargs(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "command": self.command,
            "name": self.name,
            "labels": {LABEL: "build"},
            "environment": self.environment,
            "working_dir": self.working_dir,
            # Binds with the engine's default rprivate propagation: the chroot's mounts stay in the
            # container and vanish with it; a missing cache folder is created by the engine.
            "volumes": {str(b.host): {"bind": str(b.target), "mode": "ro" if b.read_only else "rw"} for b in self.binds},
            # The host's network: the mirror (and any proxy) is reached exactly as the host reaches it,
            # with no NAT rules to depend on.
            "network_mode": "host",
            # tini as PID 1 forwards SIGINT to the pipeline and reaps the chroot's orphans.
            "init": True,
            "cap_drop": ["ALL"],
            "cap_add": list(CAPABILITIES),
            "security_opt": list(SECURITY_OPT),
            "privileged": False,
            "stdin_open": False,
            "tty": False,
            "detach": True,
        }


def invoking_owner() -> tuple[int, int]:
    """Who asked for the build: the sudo caller when run through sudo, else this process's user."""
    if os.geteuid() == 0 and os.environ.get("SUDO_UID", "").isdigit() and os.environ.get("SUDO_GID", "").isdigit():
        return int(os.environ["SUDO_UID"]), int(os.environ["SUDO_GID"])
    return os.getuid(), os.getgid()


def is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_bind_path(what: str, path: Path) -> None:
    hidden = [root for root in FORBIDDEN_ROOTS if is_within(path, Path(root))]
    hidden += [folder for folder in CONTAINER_FOLDERS if is_within(Path(folder), path)]
    if path == Path("/") or hidden:
        raise UsageError(
            f"{what} {path} cannot be mounted into the build container",
            where=f"it is mounted at the same path there, over the container's own {hidden[0] if hidden else '/'}",
            hint=f"choose another {what}, e.g. a folder in your home",
        )
    if is_within(REPO_ROOT, path):
        raise UsageError(
            f"with the docker backend {what} must not be the repository folder or hold it ({path})",
            hint=f"choose another {what}, e.g. {REPO_ROOT / 'out'}",
        )


def host_paths(config: Config) -> dict[str, Path]:
    return {"output": Path(config.output).resolve(), "cache": Path(config.cache_dir).resolve()}


def space_places(client: Any, config: Config) -> dict[str, Path]:
    paths = host_paths(config)
    places = {"the build cache": paths["cache"], "the output folder": paths["output"]}
    try:
        root = Path(client.info()["DockerRootDir"])
    except Exception:  # noqa: BLE001 - without it only the two host folders are checked
        return places
    return {"Docker's data root": root, **places}


def plan_container(request: BuildRequest, image: str, config_dir: Path, owner: tuple[int, int]) -> ContainerPlan:
    """The build container for `request`: mounts, command and environment."""
    config = request.config
    paths = host_paths(config)
    check_bind_path("the output folder", paths["output"])
    check_bind_path("the cache folder", paths["cache"])
    binds = [
        Bind(REPO_ROOT, REPO_ROOT, True),
        Bind(paths["output"], paths["output"], False),
        Bind(paths["cache"], paths["cache"], False),
        Bind(config_dir, CONFIG_MOUNT, True),
    ]
    for folder in (*config.hooks_dirs, *config.includes_dirs):
        path = Path(folder).resolve()
        if not any(is_within(path, b.host) for b in binds):
            check_bind_path("the folder", path)
            binds.append(Bind(path, path, True))
    command = [CONTAINER_PYTHON, "-m", "amberpi", "build", "--config", str(CONFIG_MOUNT / CONFIG_NAME)]
    command += ["--backend", BackendName.native.value, "--incremental", request.incremental.value]
    command += ["--verbose"] if request.verbose else []
    command += ["--debug"] if request.debug else []
    environment = {BACKEND_ENV: BackendName.docker.value, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    if owner != (0, 0):
        environment[OWNER_ENV] = f"{owner[0]}:{owner[1]}"
    environment.update({name: os.environ[name] for name in PASSED_ENV if name in os.environ})
    return ContainerPlan(image, command, environment, binds, str(REPO_ROOT))


STAGED_PREFIX = "amberpi-docker-"


def reap_staged_configs(root: Path) -> list[Path]:
    """Staged config folders of builds that were killed (SIGKILL, OOM): they may hold the root password hash.

    A folder's name carries its build's pid; one whose process is gone, and that this user owns, is removed.
    """
    reaped = []
    for folder in sorted(root.glob(f"{STAGED_PREFIX}*-*")):
        pid = folder.name.removeprefix(STAGED_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists() or folder.is_symlink() or folder.stat().st_uid != os.geteuid():
            continue
        remove_staged(folder)
        reaped.append(folder)
    return reaped


def remove_staged(folder: Path) -> None:
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


@contextmanager
def staged_config(config: Config) -> Iterator[Path]:
    """A private folder holding the host-resolved config (mirror, image id, absolute paths).

    It holds the root password hash, which the container's build needs: the folder is this
    user's alone (0700), the file is made 0600 (never wider, whatever the umask), both are
    removed when the build ends, and the next build removes those a killed build left.
    """
    paths = host_paths(config)
    data = config.to_json()
    data.update(output=str(paths["output"]), cache_dir=str(paths["cache"]))
    root = Path(tempfile.gettempdir())
    reap_staged_configs(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{STAGED_PREFIX}{os.getpid()}-", dir=root))
    try:
        folder.chmod(0o700)
        handle = os.open(folder / CONFIG_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as target:
            target.write(yaml.safe_dump(data, sort_keys=False))
        yield folder
    finally:
        remove_staged(folder)


def prepare_output(config: Config, owner: tuple[int, int]) -> Path:
    """The output folder exists and belongs to the invoking user before the container writes to it."""
    from amberpi.pipeline import check_output_dir

    output = host_paths(config)["output"]
    existed = output.exists()
    check_output_dir(output)
    if not existed and os.geteuid() == 0 and owner != (0, 0):
        os.chown(output, *owner)
    return output


class OutputPump:
    """Copy the container's stdout and stderr to ours, byte for byte; keep the last lines."""

    def __init__(self, stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> None:
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr.buffer
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._partial = ""

    def feed(self, out: bytes | None, err: bytes | None) -> None:
        for data, stream in ((out, self.stdout), (err, self.stderr)):
            if not data:
                continue
            stream.write(data)
            stream.flush()
            lines = (self._partial + data.decode(errors="replace")).split("\n")
            self._partial = lines.pop()
            self.tail.extend(lines)

    def lines(self) -> list[str]:
        return [*self.tail, self._partial]


def stop_container(container: Any, pump: OutputPump, grace: float = STOP_GRACE) -> None:
    """SIGINT the pipeline, let it unwind (mounts, workspace), then SIGKILL if it lingers."""
    import docker
    import requests

    LOG.note("interrupted: stopping the build container, which releases its mounts …")
    since = int(time.time()) - 1
    try:
        container.kill(signal="SIGINT")
    except docker.errors.APIError:
        return  # it had already stopped
    try:
        container.wait(timeout=grace)
    except (requests.exceptions.RequestException, docker.errors.APIError):
        LOG.note(f"the build container did not stop within {grace:.0f}s; killing it")
        try:
            container.kill()
        except docker.errors.APIError:
            pass
    try:
        pump.feed(None, container.logs(stdout=False, stderr=True, since=since))
    except docker.errors.APIError:
        pass


def remove_container(client: Any, container: Any, name: str) -> None:
    """Always remove the build container (and its anonymous volumes), found by name if need be."""
    import docker

    try:
        target = container or client.containers.get(name)
        target.remove(force=True, v=True)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        LOG.note(f"warning: could not remove the build container {name}: {exc.explanation or exc}")


def run_container(client: Any, plan: ContainerPlan, *, mirror: str, places: dict[str, Path], pump: OutputPump | None = None) -> int:
    """Run the build container to its end; its exit status. Ctrl-C stops it and re-raises."""
    import docker

    pump = pump or OutputPump()
    container = None
    try:
        try:
            container = client.containers.create(**plan.create_kwargs())
            container.start()
        except docker.errors.APIError as exc:
            raise api_error(exc, "start the build container", places) from None
        try:
            for out, err in container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True):
                pump.feed(out, err)
            code = int(container.wait().get("StatusCode", 1))
        except KeyboardInterrupt:
            stop_container(container, pump)
            raise
    finally:
        remove_container(client, container, plan.name)
    if code not in (0, 130):
        cause = diagnose(pump.lines(), mirror=mirror, places=places)
        if cause:
            LOG.note(cause.render())
    return code


class DockerBackend:
    name = BackendName.docker

    def __init__(self, reason: str = "", client: Any = None) -> None:
        self.reason = reason
        self.client = client

    def engine(self) -> Any:
        if self.client is None:
            self.client = connect_engine()
        return self.client

    def check_host(self, request: BuildRequest) -> Any:
        """Engine, arm64 emulation and disk space, before any work."""
        client = self.engine()
        ensure_arm64_emulation(fix=False)
        for what, path in host_paths(request.config).items():
            check_bind_path(f"the {what} folder", path)
        check_free_space(space_places(client, request.config))
        return client

    def validate(self, request: BuildRequest) -> None:
        import docker

        client = self.check_host(request)
        try:
            client.images.get(BASE_IMAGE)
        except docker.errors.ImageNotFound:
            LOG.note(f"note: the base image {BASE_IMAGE} is missing; create it with `sudo python3 build.py builder-base`")

    def build(self, request: BuildRequest) -> int:
        if request.keep_workspace:
            raise UsageError(
                "--keep-workspace is not available with the docker backend", hint="use --backend native to inspect the workspace"
            )
        LOG.note(banner(request, self.name, self.reason))
        client = self.check_host(request)
        owner = invoking_owner()
        prepare_output(request.config, owner)
        image = ensure_builder_image(client, rebuild=request.rebuild_builder)
        with staged_config(request.config) as config_dir:
            plan = plan_container(request, image, config_dir, owner)
            return run_container(client, plan, mirror=request.config.mirror, places=space_places(client, request.config))
