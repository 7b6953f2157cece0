"""The Docker backend end to end, on a real engine: same image as the native build, owned by the user.

Session flow: an engine (the host's, or `dockerd --storage-driver=vfs` started
here and stopped at the end), the base image debootstrapped and imported locally
(no registry), the builder image built through the SDK, then the qemu board built
by a non-root user in the docker group (auto picks docker), reusing the native
build's cache. The native `qemu_image` fixture runs first so its stages are cached.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from amberpi.backends.builder import BASE_IMAGE, LABEL, ensure_builder_image
from amberpi.backends.docker import PASSED_ENV as BUILD_ENV
from amberpi.backends.engine import connect_engine
from amberpi.errors import AmberPiError
from tests.buildtools import amberpi_mounts, hook_left_running, start_build_in_hook
from tests.conftest import REPO, BuiltImage, amberpi, require_root, write_test_config
from tests.imagetools import partition_range, partition_table, sha256_file, sha256_range
from tests.measurements import record

pytestmark = pytest.mark.integration

TEST_USER = "amberpi-docker-test"
# The user's environment, as both builds see it: what the build reads (a SOURCE_DATE_EPOCH set for
# the native build must date the docker build too, or the keys differ from the epoch stage on),
# and what pip needs to make the user's venv.
PASSED_ENV = (*BUILD_ENV, "PIP_INDEX_URL", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def engine_or_none() -> Any:
    try:
        return connect_engine()
    except AmberPiError:
        return None


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Docker engine that answers: this host's, or one started here (vfs) and stopped at the end."""
    require_root()
    client = engine_or_none()
    daemon = None
    if client is None:
        if shutil.which("dockerd") is None:
            pytest.fail("dockerd is not installed (tests/run.py installs docker.io)")
        folder = tmp_path_factory.mktemp("dockerd")
        log = (folder / "dockerd.log").open("wb")
        daemon = subprocess.Popen(
            ["dockerd", "--storage-driver=vfs", "--pidfile", str(folder / "dockerd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while client is None and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(1)
            client = engine_or_none()
        if client is None:
            daemon.terminate()
            pytest.fail(f"dockerd did not start; its log: {(folder / 'dockerd.log').read_text()[-3000:]}")
    yield client
    if daemon is not None:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()


@pytest.fixture(scope="session")
def builder_image(docker_client: Any) -> str:
    """The base image made here with debootstrap (never pulled), then the builder image via the SDK."""
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        started = time.monotonic()
        amberpi("builder-base", check=True)
        record(f"base image {BASE_IMAGE} made in {time.monotonic() - started:.0f}s")
    started = time.monotonic()
    tag = ensure_builder_image(docker_client)
    size = int(docker_client.images.get(tag).attrs["Size"]) >> 20
    record(f"builder image {tag}: {size} MiB, ready in {time.monotonic() - started:.0f}s")
    return tag


@dataclass
class DockerUser:
    name: str
    uid: int
    gid: int
    home: Path


@pytest.fixture(scope="session")
def docker_user(docker_client: Any) -> Iterator[DockerUser]:
    """A non-root user in the docker group, with a folder of its own."""
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER], check=True)
    subprocess.run(["usermod", "-aG", "docker", TEST_USER], check=True)
    entry = pwd.getpwnam(TEST_USER)
    assert entry.pw_name in grp.getgrnam("docker").gr_mem
    home = Path(tempfile.mkdtemp(prefix="amberpi-docker-user-", dir="/var/tmp"))
    os.chown(home, entry.pw_uid, entry.pw_gid)
    yield DockerUser(TEST_USER, entry.pw_uid, entry.pw_gid, home)
    shutil.rmtree(home, ignore_errors=True)


def run_as(user: DockerUser, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """`python3 build.py ARGS` as the user, the way they would type it (own venv, nothing from root)."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(user.home), "AMBERPI_VENV": str(user.home / "venv")}
    env.update({name: os.environ[name] for name in PASSED_ENV if name in os.environ})
    argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", python, str(REPO / "build.py"), *args]
    return subprocess.run(argv, cwd=user.home, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def docker_image(qemu_image: BuiltImage, builder_image: str, docker_user: DockerUser) -> BuiltImage:
    """The qemu board built by the non-root user: auto picks docker; the native build's cache is reused.

    With the native image's id in its config (each build otherwise draws its own), so the two
    images can be compared byte for byte."""
    import json

    config = write_test_config(docker_user.home, image_id=qemu_image.report["image_id"])
    os.chown(config, docker_user.uid, docker_user.gid)
    output = docker_user.home / "out"
    started = time.monotonic()
    result = run_as(docker_user, "--board", "qemu", "--config", str(config), "--output", str(output))
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    first = next(line for line in result.stderr.splitlines() if line.startswith("AmberPi: building"))
    assert "backend docker (auto: not root)" in first, "not root: auto picks docker, and the first progress line says so"
    record(f"docker build of qemu: {seconds:.0f}s (native in this session: {qemu_image.seconds:.0f}s)")
    report = json.loads((output / "amberpi-qemu.report.json").read_text())
    return BuiltImage("qemu", output / "amberpi-qemu.img", report, seconds, output)


def test_report_says_docker(docker_image: BuiltImage, qemu_image: BuiltImage) -> None:
    assert docker_image.report["backend"] == "docker"
    assert qemu_image.report["backend"] == "native"
    statuses = {s["name"]: s["status"] for s in docker_image.report["stages"]}
    native_keys = {s["name"]: s["key"] for s in qemu_image.report["stages"]}
    docker_keys = {s["name"]: s["key"] for s in docker_image.report["stages"]}
    differing = [name for name in native_keys if docker_keys.get(name) != native_keys[name]]
    # Same config, same environment, same cache, same pipeline: the rootfs and squashfs stages are the native build's.
    assert docker_keys["squash"] == native_keys["squash"], f"stages keyed differently from the native build: {differing}"
    assert statuses["squash"] == "cached", f"the docker build reuses the native build's cached stages: {statuses}"


def test_same_image_as_native(docker_image: BuiltImage, qemu_image: BuiltImage) -> None:
    """Same config, same cache, the same image id: the docker build writes the very bytes the
    native build wrote, so what the boot tests see of the native image holds for it (it is not
    booted again). When they differ, the partitions are compared to name where."""
    assert docker_image.report["image_id"] == qemu_image.report["image_id"]
    docker_table, native_table = (partition_table(image.path) for image in (docker_image, qemu_image))
    assert docker_table["id"] == native_table["id"]
    assert [{k: p.get(k) for k in ("start", "size", "type", "bootable")} for p in docker_table["partitions"]] == [
        {k: p.get(k) for k in ("start", "size", "type", "bootable")} for p in native_table["partitions"]
    ]
    assert docker_image.report["layout"] == qemu_image.report["layout"]
    if sha256_file(docker_image.path) != qemu_image.report["sha256"]:
        for number in (1, 2, 3, 4):
            hashes = [sha256_range(image.path, *partition_range(image.path, number)) for image in (docker_image, qemu_image)]
            assert hashes[0] == hashes[1], f"p{number} differs between the docker and the native build"
        pytest.fail("the images differ outside their partitions")
    assert docker_image.report["sha256"] == qemu_image.report["sha256"]


def test_outputs_belong_to_the_invoking_user(docker_image: BuiltImage, docker_user: DockerUser) -> None:
    names = {p.name for p in docker_image.output.iterdir()}
    assert {"amberpi-qemu.img", "amberpi-qemu.img.sha256", "amberpi-qemu.report.json", "amberpi-qemu.build.log"} <= names
    for path in [docker_image.output, *docker_image.output.iterdir()]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (docker_user.uid, docker_user.gid), f"{path} is owned by {info.st_uid}:{info.st_gid}"


def test_no_container_left_after_a_build(docker_image: BuiltImage, docker_client: Any) -> None:
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL}=build"}) == []


def test_ctrl_c_mid_chroot_stops_the_container(docker_image: BuiltImage, docker_client: Any, tmp_path: Path) -> None:
    process = start_build_in_hook(tmp_path, "--backend", "docker")
    assert docker_client.containers.list(filters={"label": f"{LABEL}=build"}), "the build container runs the hook"
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130, rest[-3000:]
    assert "interrupted" in rest
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL}=build"}) == []
    assert amberpi_mounts() == []
    out = tmp_path / "out"
    assert not (out / "amberpi-qemu.img").exists() and not list(out.glob(".*.partial"))
    assert hook_left_running() == "", "no process of the hook survives"
    cache = Path(docker_image.report["config"]["cache_dir"])
    partial = [p for stage in cache.iterdir() if stage.is_dir() for p in stage.glob(".tmp-*")]
    assert partial == [], "the cache holds no half-written entry"
