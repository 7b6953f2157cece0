"""The Docker engine (amberpi/backends/engine.py): connecting, and its errors, with a fake SDK."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi.backends import engine
from amberpi.errors import BackendError
from tests.fakes import raising, sdk_error

pytestmark = pytest.mark.usefixtures("quiet_log")


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


def test_disk_full_before_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1 << 29})())
    with pytest.raises(BackendError) as info:
        engine.check_free_space({"Docker's data root": Path("/var/lib/docker"), "the output folder": tmp_path})
    text = info.value.render()
    assert "out of disk space: Docker's data root /var/lib/docker has 0.5 GiB free, the build needs about 4 GiB" in text
    assert "docker image prune" in text
