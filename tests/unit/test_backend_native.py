"""The native backend (amberpi/backends/native.py), and its side of a docker build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amberpi.backends import native
from amberpi.backends.base import BackendName

pytestmark = pytest.mark.usefixtures("quiet_log")


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
