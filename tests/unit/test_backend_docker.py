"""The Docker backend (amberpi/backends/docker.py): the build container's plan, its output, ctrl-c and
every error message, with a fake engine."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import docker
import pytest

from amberpi import hostsetup
from amberpi.backends import docker as docker_backend
from amberpi.backends.base import BuildRequest
from amberpi.backends.docker import DockerBackend
from amberpi.config import REPO_ROOT, Config
from amberpi.errors import BackendError, UsageError
from tests.fakes import MIRROR, FakeClient, FakeContainer, binfmt

pytestmark = pytest.mark.usefixtures("quiet_log")


def request(tmp_path: Path, **config: Any) -> BuildRequest:
    values = {"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "mirror": MIRROR, "image_id": "1a2b3c4d"}
    values.update(config)
    return BuildRequest(Config(**values))


def test_container_plan_least_privilege(tmp_path: Path) -> None:
    plan = docker_backend.plan_container(request(tmp_path), "amberpi/builder:x", tmp_path / "cfg", (1000, 1000))
    kwargs = plan.create_kwargs()
    assert kwargs["privileged"] is False
    assert kwargs["cap_drop"] == ["ALL"]
    assert {"SYS_ADMIN", "SYS_CHROOT", "MKNOD"} <= set(kwargs["cap_add"])
    assert "SYS_RESOURCE" not in kwargs["cap_add"] and "ALL" not in kwargs["cap_add"]
    assert "apparmor=unconfined" in kwargs["security_opt"]
    assert kwargs["init"] is True and kwargs["labels"] == {"io.amberpi.role": "build"}
    volumes = kwargs["volumes"]
    assert volumes[str(REPO_ROOT)] == {"bind": str(REPO_ROOT), "mode": "ro"}
    assert volumes[str(tmp_path / "out")] == {"bind": str(tmp_path / "out"), "mode": "rw"}
    assert volumes[str(tmp_path / "cache")] == {"bind": str(tmp_path / "cache"), "mode": "rw"}
    assert volumes[str(tmp_path / "cfg")] == {"bind": "/run/amberpi", "mode": "ro"}
    command = kwargs["command"]
    assert command[:4] == ["/opt/amberpi/venv/bin/python", "-m", "amberpi", "build"]
    assert command[command.index("--backend") + 1] == "native"
    assert command[command.index("--config") + 1] == "/run/amberpi/build-config.yaml"
    env = kwargs["environment"]
    assert env["AMBERPI_BACKEND"] == "docker" and env["AMBERPI_OUTPUT_OWNER"] == "1000:1000"


def test_every_capability_says_why() -> None:
    source = Path(docker_backend.__file__).read_text()
    for cap in docker_backend.CAPABILITIES:
        line = next(line for line in source.splitlines() if line.strip().startswith(f'"{cap}",'))
        assert "#" in line, f"{cap} needs a comment saying why"


def test_container_plan_mounts_outside_hook_folders(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    plan = docker_backend.plan_container(request(tmp_path, hooks_dirs=[str(hooks)]), "img", tmp_path / "cfg", (0, 0))
    assert plan.create_kwargs()["volumes"][str(hooks)]["mode"] == "ro"
    assert "AMBERPI_OUTPUT_OWNER" not in plan.environment


def test_output_folder_must_not_hold_the_repository(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        docker_backend.plan_container(request(tmp_path, output=str(REPO_ROOT)), "img", tmp_path / "cfg", (0, 0))
    assert "must not be the repository folder or hold it" in info.value.render()


def test_staged_config_is_private_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    req = request(tmp_path, output="relative-out", root_password_hash="$6$salt$hash")
    with docker_backend.staged_config(req.config) as folder:
        path = folder / "build-config.yaml"
        assert path.stat().st_mode & 0o777 == 0o600
        data = yaml.safe_load(path.read_text())
    assert not folder.exists()
    assert data["output"] == str(tmp_path / "relative-out")
    assert data["mirror"] == MIRROR and data["image_id"] == "1a2b3c4d"


def test_invoking_owner_under_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_backend.os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_GID", "5678")
    assert docker_backend.invoking_owner() == (1234, 5678)


def test_container_output_streams_unchanged_and_container_is_removed(tmp_path: Path) -> None:
    container = FakeContainer([(None, b"[1/9] bootstrap  cached\n"), (b"data\n", None), (None, b"partial "), (None, b"line\n")])
    client = FakeClient(container)
    pump = docker_backend.OutputPump(io.BytesIO(), io.BytesIO())
    plan = docker_backend.plan_container(request(tmp_path), "img", tmp_path / "cfg", (0, 0))
    code = docker_backend.run_container(client, plan, mirror=MIRROR, places={}, pump=pump)
    assert code == 0
    assert pump.stderr.getvalue() == b"[1/9] bootstrap  cached\npartial line\n"  # type: ignore[attr-defined]
    assert pump.stdout.getvalue() == b"data\n"  # type: ignore[attr-defined]
    assert container.calls == ["start", "wait", "remove:force=True"]


def test_failing_build_returns_its_status(tmp_path: Path) -> None:
    container = FakeContainer([(None, b"error: hook 9999-test.hook.chroot failed (exit status 3)\n")], code=1)
    pump = docker_backend.OutputPump(io.BytesIO(), io.BytesIO())
    plan = docker_backend.plan_container(request(tmp_path), "img", tmp_path / "cfg", (0, 0))
    assert docker_backend.run_container(FakeClient(container), plan, mirror=MIRROR, places={}, pump=pump) == 1
    assert container.calls[-1] == "remove:force=True"


def test_ctrl_c_stops_and_removes_the_container(tmp_path: Path) -> None:
    container = FakeContainer([(None, b"HOOK-STARTED\n"), (None, b"never shown\n")], interrupt_after=1)
    pump = docker_backend.OutputPump(io.BytesIO(), io.BytesIO())
    plan = docker_backend.plan_container(request(tmp_path), "img", tmp_path / "cfg", (0, 0))
    with pytest.raises(KeyboardInterrupt):
        docker_backend.run_container(FakeClient(container), plan, mirror=MIRROR, places={}, pump=pump)
    assert container.calls == ["start", "kill:SIGINT", "wait", "remove:force=True"]
    assert b"interrupted: stopped, mounts released" in pump.stderr.getvalue()  # type: ignore[attr-defined]


def test_no_network_to_the_mirror(tmp_path: Path, quiet_log: io.StringIO) -> None:
    lines = [
        (None, b"error: `debootstrap --arch=arm64 ...` failed (exit status 1)\n"),
        (None, b"    | E: Failed getting release file http://mirror.example/debian/dists/trixie/Release\n"),
    ]
    pump = docker_backend.OutputPump(io.BytesIO(), io.BytesIO())
    plan = docker_backend.plan_container(request(tmp_path), "img", tmp_path / "cfg", (0, 0))
    assert docker_backend.run_container(FakeClient(FakeContainer(lines, code=1)), plan, mirror=MIRROR, places={}, pump=pump) == 1
    text = quiet_log.getvalue()
    assert f"no network: the build could not reach the Debian mirror {MIRROR}" in text
    assert "http_proxy" in text and "--mirror URL" in text


def test_disk_full_during_the_build(tmp_path: Path, quiet_log: io.StringIO) -> None:
    lines = [(None, b"mksquashfs | Write failed because No space left on device\n")]
    pump = docker_backend.OutputPump(io.BytesIO(), io.BytesIO())
    plan = docker_backend.plan_container(request(tmp_path), "img", tmp_path / "cfg", (0, 0))
    places = {"the build cache": tmp_path}
    assert docker_backend.run_container(FakeClient(FakeContainer(lines, code=1)), plan, mirror=MIRROR, places=places, pump=pump) == 1
    text = quiet_log.getvalue()
    assert "error: out of disk space" in text
    assert f"the build cache {tmp_path}:" in text and "GiB free" in text
    assert "--cache-dir" in text


def test_disk_full_when_the_engine_creates_the_container(tmp_path: Path) -> None:
    error = docker.errors.APIError("500", explanation="mkdir /var/lib/docker/vfs/dir/abc: no space left on device")
    plan = docker_backend.plan_container(request(tmp_path), "img", tmp_path / "cfg", (0, 0))
    with pytest.raises(BackendError) as info:
        docker_backend.run_container(FakeClient(create_error=error), plan, mirror=MIRROR, places={"Docker's data root": tmp_path})
    assert "out of disk space: the Docker engine could not start the build container" in info.value.render()


def test_emulation_is_checked_before_any_docker_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "binfmt"
    folder.mkdir()
    monkeypatch.setattr(hostsetup, "BINFMT_DIR", binfmt(folder, None))
    client = FakeClient(FakeContainer([]))
    with pytest.raises(BackendError) as info:
        DockerBackend(client=client).build(request(tmp_path))
    assert "qemu-aarch64 is not registered" in info.value.render()
    assert client.created == [] and client.built == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "folder", ["/etc", "/usr", "/usr/local/out", "/opt", "/bin", "/lib", "/var/lib", "/var", "/var/lib/dpkg", "/var/tmp", "/run/user/1000"]
)
@pytest.mark.parametrize("what", ["output", "cache_dir"])
def test_folders_of_the_containers_own_system_are_refused(tmp_path: Path, folder: str, what: str) -> None:
    """Before: --output /etc (or /usr, /opt, /var/lib...) was bound over the builder container's own folder."""
    with pytest.raises(UsageError) as info:
        docker_backend.plan_container(request(tmp_path, **{what: folder}), "img", tmp_path / "cfg", (0, 0))
    assert "cannot be mounted into the build container" in info.value.what
    assert info.value.where is not None and "over the container's own" in info.value.where


@pytest.mark.parametrize("folder", ["/var/lib/jenkins/workspace/out", "/srv/images", "/var/cache/amberpi", "/var/tmp/out", "/home/me/out"])
def test_folders_beside_the_containers_own_are_fine(tmp_path: Path, folder: str) -> None:
    plan = docker_backend.plan_container(request(tmp_path, output=folder, cache_dir=folder + "-cache"), "img", tmp_path / "cfg", (0, 0))
    assert plan.create_kwargs()["volumes"][folder] == {"bind": folder, "mode": "rw"}


def test_staged_config_holds_the_secret_only_privately_and_only_while_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    previous = os.umask(0)  # a careless umask changes nothing
    try:
        with docker_backend.staged_config(request(tmp_path, root_password_hash="$6$salt$secrethash").config) as folder:
            assert folder.parent == tmp_path and folder.stat().st_mode & 0o777 == 0o700
            path = folder / "build-config.yaml"
            assert path.stat().st_mode & 0o777 == 0o600 and "secrethash" in path.read_text()
    finally:
        os.umask(previous)
    assert list(tmp_path.iterdir()) == []
    plan = docker_backend.plan_container(request(tmp_path, root_password_hash="$6$salt$secrethash"), "img", tmp_path / "cfg", (0, 0))
    assert "secrethash" not in repr(plan.create_kwargs()), "neither the command nor the environment carries it"


def test_staged_configs_a_killed_build_left_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a build killed outright (SIGKILL, OOM) left the root password hash in /tmp for good."""
    import subprocess
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"amberpi-docker-{gone.pid}-abc"
    alive = tmp_path / f"amberpi-docker-{os.getpid()}-def"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "build-config.yaml").write_text("root_password_hash: $6$salt$secrethash\n")
    with docker_backend.staged_config(request(tmp_path).config):
        pass
    assert not dead.exists(), "its build is gone"
    assert alive.exists(), "a running build's is left alone"


def test_the_archive_age_setting_reaches_the_build_in_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's AMBERPI_ARCHIVE_MAX_AGE was read only by the host: the build in the container
    # asked the mirror again after an hour, and a Debian update in between rebuilt the rootfs.
    monkeypatch.setenv("AMBERPI_ARCHIVE_MAX_AGE", "21600")
    monkeypatch.setenv("QEMU_CPU", "max")
    plan = docker_backend.plan_container(request(tmp_path), "img", tmp_path / "cfg", (0, 0))
    assert plan.environment["AMBERPI_ARCHIVE_MAX_AGE"] == "21600" and plan.environment["QEMU_CPU"] == "max"
