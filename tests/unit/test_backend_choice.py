"""Choosing a backend (amberpi/backends/base.py): explicit choices, the auto matrix and its probes."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from amberpi.backends import base
from amberpi.backends.base import BackendName, select_backend
from amberpi.backends.docker import DockerBackend
from amberpi.backends.native import NativeBackend
from amberpi.errors import UsageError
from tests.fakes import sdk_error

pytestmark = pytest.mark.usefixtures("quiet_log")


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
