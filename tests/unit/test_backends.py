"""Backends: the auto choice, the build container's plan, and every error message, with a fake engine."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import urllib3

from amberpi import hostsetup
from amberpi.backends import base, builder, engine, native
from amberpi.backends import docker as docker_backend
from amberpi.backends.base import BackendName, BuildRequest, select_backend
from amberpi.backends.docker import DockerBackend
from amberpi.backends.native import NativeBackend
from amberpi.config import REPO_ROOT, Config
from amberpi.errors import BackendError, UsageError
from amberpi.log import LOG

MIRROR = "http://mirror.example/debian"


@pytest.fixture(autouse=True)
def quiet_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(LOG, "stream", stream)
    return stream


def sdk_error(cause: OSError) -> docker.errors.DockerException:
    """The exception chain docker.from_env() raises when the socket fails (as seen from a real SDK)."""
    try:
        try:
            try:
                raise cause
            except OSError as exc:
                raise urllib3.exceptions.ProtocolError("Connection aborted.", exc) from None
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
    except requests.exceptions.ConnectionError as exc:
        try:
            raise docker.errors.DockerException(f"Error while fetching server API version: {exc}") from exc
        except docker.errors.DockerException as final:
            return final


# --- choosing a backend -------------------------------------------------------------------


def test_explicit_choices_need_no_probe() -> None:
    def never() -> str | None:
        raise AssertionError("no probe for an explicit backend")

    assert isinstance(select_backend("native", native_probe=never, docker_probe=never), NativeBackend)
    assert isinstance(select_backend("docker", native_probe=never, docker_probe=never), DockerBackend)


@pytest.mark.parametrize(
    ("native_problem", "docker_problem", "chosen", "reason"),
    [
        (None, None, BackendName.native, "auto: root on a Debian-family host"),
        (None, "no Docker engine answers", BackendName.native, "auto: root on a Debian-family host"),
        ("the native build must run as root", None, BackendName.docker, "auto: not root"),
        ("the native build needs a Debian-family host", None, BackendName.docker, "auto: not a Debian-family host"),
    ],
)
def test_auto_matrix(native_problem: str | None, docker_problem: str | None, chosen: BackendName, reason: str) -> None:
    backend = select_backend("auto", native_probe=lambda: native_problem, docker_probe=lambda: docker_problem)
    assert backend.name is chosen
    assert backend.reason == reason


def test_auto_does_not_touch_docker_when_native_can_run() -> None:
    def docker_probe() -> str | None:
        raise AssertionError("docker probed although native can run")

    assert select_backend("auto", native_probe=lambda: None, docker_probe=docker_probe).name is BackendName.native


def test_auto_without_any_backend_names_both_ways_out() -> None:
    with pytest.raises(UsageError) as info:
        select_backend(
            "auto",
            native_probe=lambda: "the native build must run as root (debootstrap, chroot and mounts need it)",
            docker_probe=lambda: "no Docker engine answers at unix:///var/run/docker.sock",
        )
    text = info.value.render()
    assert info.value.exit_code == 2
    assert "no build backend can run here" in text
    assert "native: the native build must run as root" in text
    assert "docker: no Docker engine answers at unix:///var/run/docker.sock" in text
    assert "sudo python3 build.py ... --backend native" in text and "--backend docker" in text
    assert "usermod -aG docker" in text


def test_native_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base.os, "geteuid", lambda: 1000)
    assert "must run as root" in (base.native_unavailable() or "")


@pytest.mark.parametrize(
    ("os_release", "expected"),
    [
        ('ID=debian\nVERSION_ID="12"\n', True),
        ("ID=ubuntu\nID_LIKE=debian\n", True),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', True),
        ("ID=fedora\nVERSION_ID=40\n", False),
        ("ID=arch\n", False),
    ],
)
def test_debian_family(tmp_path: Path, os_release: str, expected: bool) -> None:
    (tmp_path / "os-release").write_text(os_release)
    assert base.is_debian_family(tmp_path / "os-release", tmp_path / "no-debian_version") is expected


def test_docker_probe_reports_the_engine_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker, "from_env", lambda: (_ for _ in ()).throw(sdk_error(FileNotFoundError(2, "No such file or directory"))))
    assert "no Docker engine answers" in (base.docker_unavailable() or "")


# --- engine errors --------------------------------------------------------------------------


def raising(exc: BaseException) -> Any:
    def factory() -> Any:
        raise exc

    return factory


def test_engine_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    with pytest.raises(BackendError) as info:
        engine.connect_engine(raising(sdk_error(FileNotFoundError(2, "No such file or directory"))))
    text = info.value.render()
    assert "no Docker engine answers at unix:///var/run/docker.sock" in text
    assert "apt-get install docker.io" in text and "systemctl start docker" in text
    assert "--backend native" in text


def test_engine_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    with pytest.raises(BackendError) as info:
        engine.connect_engine(raising(sdk_error(ConnectionRefusedError(111, "Connection refused"))))
    assert "no Docker engine answers at unix:///run/user/1000/docker.sock" in info.value.render()


def test_engine_permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(engine, "user_name", lambda: "alice")
    with pytest.raises(BackendError) as info:
        engine.connect_engine(raising(sdk_error(PermissionError(13, "Permission denied"))))
    text = info.value.render()
    assert "permission denied on the Docker engine's socket unix:///var/run/docker.sock" in text
    assert "the user alice is not allowed to use Docker (not in the docker group)" in text
    assert "sudo usermod -aG docker alice" in text and "log out and in again" in text


def test_engine_that_answers() -> None:
    class Client:
        pinged = False

        def ping(self) -> bool:
            Client.pinged = True
            return True

    assert isinstance(engine.connect_engine(Client), Client) and Client.pinged


# --- arm64 emulation --------------------------------------------------------------------------


def binfmt(tmp_path: Path, entry: str | None, *, mounted: bool = True) -> Path:
    if mounted:
        (tmp_path / "register").write_text("")
    if entry is not None:
        (tmp_path / "qemu-aarch64").write_text(entry)
    return tmp_path


GOOD_ENTRY = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"


@pytest.mark.parametrize(
    ("entry", "mounted", "problem", "fix"),
    [
        (None, False, "binfmt_misc is not mounted at", "sudo mount -t binfmt_misc binfmt_misc"),
        (None, True, "qemu-aarch64 is not registered with binfmt_misc", "apt-get install qemu-user-static binfmt-support"),
        ("enabled\nflags: P\n", True, "registered without the F (fix binary) flag", "echo -1 | sudo tee"),
        ("disabled\nflags: PF\n", True, "is disabled", "dnf install qemu-user-static"),
    ],
)
def test_binfmt_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entry: str | None, mounted: bool, problem: str, fix: str) -> None:
    monkeypatch.setattr(hostsetup, "BINFMT_DIR", binfmt(tmp_path, entry, mounted=mounted))
    with pytest.raises(BackendError) as info:
        hostsetup.ensure_arm64_emulation(fix=False)
    text = info.value.render()
    assert problem in text and fix in text
    assert ":qemu-aarch64:M::" in text and ":FP'" in text, "the one-off registration is spelled out"


def test_binfmt_ready(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hostsetup, "BINFMT_DIR", binfmt(tmp_path, GOOD_ENTRY))
    assert hostsetup.arm64_emulation_problem() is None
    hostsetup.ensure_arm64_emulation(fix=False)


# --- a fake engine ----------------------------------------------------------------------------


class FakeContainer:
    def __init__(self, chunks: list[tuple[bytes | None, bytes | None]], code: int = 0, interrupt_after: int | None = None) -> None:
        self.chunks = chunks
        self.code = code
        self.interrupt_after = interrupt_after
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def attach(self, **kwargs: Any) -> Any:
        assert kwargs["demux"] and kwargs["stream"] and kwargs["logs"]
        for index, chunk in enumerate(self.chunks):
            if self.interrupt_after is not None and index == self.interrupt_after:
                raise KeyboardInterrupt
            yield chunk

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        self.calls.append("wait")
        return {"StatusCode": 130 if "kill:SIGINT" in self.calls else self.code}

    def kill(self, signal: str | None = None) -> None:
        self.calls.append(f"kill:{signal}")

    def logs(self, **kwargs: Any) -> bytes:
        return b"interrupted: stopped, mounts released, no image written\n"

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.calls.append(f"remove:force={force}")


class FakeImages:
    def __init__(self, present: set[str]) -> None:
        self.present = present
        self.pulled: list[str] = []

    def get(self, name: str) -> Any:
        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return type("Image", (), {"id": f"sha256:{name}", "short_id": name, "attrs": {"Size": 600 << 20}, "tags": [name]})()

    def pull(self, name: str, tag: str) -> Any:
        self.pulled.append(f"{name}:{tag}")
        raise docker.errors.APIError("pull failed", explanation="dial tcp: lookup registry-1.docker.io: no such host")

    def list(self, name: str) -> list[Any]:
        return []

    def remove(self, image: str) -> None:
        self.present.discard(image)


class FakeClient:
    def __init__(
        self, container: FakeContainer | None = None, images: set[str] | None = None, create_error: Exception | None = None
    ) -> None:
        self.container = container
        self.create_error = create_error
        self.created: list[dict[str, Any]] = []
        self.images = FakeImages(images or set())
        self.containers = self
        self.built: list[str] = []
        self.api = self

    # containers
    def create(self, **kwargs: Any) -> FakeContainer:
        self.created.append(kwargs)
        if self.create_error:
            raise self.create_error
        assert self.container
        return self.container

    def get(self, name: str) -> FakeContainer:
        raise docker.errors.NotFound(name)

    # api
    def build(self, **kwargs: Any) -> Any:
        self.built.append(kwargs["tag"])
        yield {"stream": "Step 1/1 : FROM amberpi/debian-base:bookworm\n"}
        yield {"stream": "Successfully built 0123\n"}
        self.images.present.add(kwargs["tag"])

    def info(self) -> dict[str, str]:
        return {"DockerRootDir": "/var/lib/docker"}

    def ping(self) -> bool:
        return True


def request(tmp_path: Path, **config: Any) -> BuildRequest:
    values = {"output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "mirror": MIRROR, "image_id": "1a2b3c4d"}
    values.update(config)
    return BuildRequest(Config(**values))


# --- the build container ----------------------------------------------------------------------


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


def test_disk_full_before_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1 << 29})())
    with pytest.raises(BackendError) as info:
        engine.check_free_space({"Docker's data root": Path("/var/lib/docker"), "the output folder": tmp_path})
    text = info.value.render()
    assert "out of disk space: Docker's data root /var/lib/docker has 0.5 GiB free, the build needs about 4 GiB" in text
    assert "docker image prune" in text


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


# --- builder and base images ------------------------------------------------------------------


def test_builder_tag_follows_its_inputs() -> None:
    files = {"docker/Dockerfile": b"FROM x\n", "requirements.txt": b"plumbum==1.9.0\n"}
    args = {"HOST_PACKAGES": "debootstrap"}
    tag = builder.builder_tag(files, args, "sha256:base")
    assert tag.startswith("amberpi/builder:") and tag == builder.builder_tag(dict(files), dict(args), "sha256:base")
    assert tag != builder.builder_tag({**files, "docker/Dockerfile": b"FROM y\n"}, args, "sha256:base")
    assert tag != builder.builder_tag(files, {"HOST_PACKAGES": "debootstrap zstd"}, "sha256:base")
    assert tag != builder.builder_tag(files, args, "sha256:other-base")


def test_builder_inputs_cover_the_dockerfile_and_host_packages() -> None:
    files, args = builder.builder_inputs()
    assert "docker/Dockerfile" in files and "requirements.txt" in files
    assert args["HOST_PACKAGES"].split() == list(hostsetup.HOST_PACKAGES)


def test_builder_image_is_reused_then_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(images={builder.BASE_IMAGE})
    tag = builder.ensure_builder_image(client)
    assert client.built == [tag]
    assert builder.ensure_builder_image(client) == tag and client.built == [tag], "current image reused"
    builder.ensure_builder_image(client, rebuild=True)
    assert client.built == [tag, tag], "--rebuild-builder forces it"
    assert client.images.pulled == [], "never pulls when the base exists"


def test_missing_base_without_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(images=set())
    with pytest.raises(BackendError) as info:
        builder.ensure_builder_image(client)
    text = info.value.render()
    assert "the builder's base image amberpi/debian-base:bookworm does not exist and debian:bookworm cannot be pulled" in text
    assert "sudo python3 build.py --bootstrap-builder-base" in text
    assert client.built == []


def test_builder_network_failure_names_pypi(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(images={builder.BASE_IMAGE})

    def failing_build(**kwargs: Any) -> Any:
        yield {"stream": "ERROR: Could not find a version (Failed to establish a new connection)\n"}
        yield {"error": "The command '/bin/sh -c pip install' returned a non-zero code: 1"}

    monkeypatch.setattr(client, "build", failing_build)
    with pytest.raises(BackendError) as info:
        builder.ensure_builder_image(client)
    assert "building the builder image failed, no network" in info.value.render() and "pypi.org" in info.value.render()


def test_bootstrap_base_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(builder.os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError) as info:
        builder.bootstrap_base_image(FakeClient(), MIRROR, tmp_path)
    assert "sudo python3 build.py --bootstrap-builder-base" in info.value.render()


# --- the native side of a docker build --------------------------------------------------------


def test_report_names_the_docker_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBERPI_BACKEND", "docker")
    assert native.reported_backend() is BackendName.docker
    monkeypatch.delenv("AMBERPI_BACKEND")
    assert native.reported_backend() is BackendName.native


def test_outputs_handed_to_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("amberpi-qemu.img", "amberpi-qemu.report.json", ".amberpi.lock", "someone-else.txt"):
        (tmp_path / name).write_text("")
    changed: list[str] = []
    monkeypatch.setattr(native.os, "lchown", lambda path, uid, gid: changed.append(Path(path).name))
    native.hand_over_outputs(tmp_path, "amberpi-qemu", (os.getuid() + 1, os.getgid()))
    assert sorted(changed) == [".amberpi.lock", "amberpi-qemu.img", "amberpi-qemu.report.json"]
