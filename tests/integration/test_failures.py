"""Failures mid-build: the error names the cause, mounts are released, no image is left."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.buildtools import amberpi_mounts, hook_config, hook_left_running, start_build_in_hook
from tests.conftest import BuiltImage, amberpi

pytestmark = pytest.mark.integration


def test_failing_hook_stops_the_build(qemu_image: BuiltImage, tmp_path: Path) -> None:
    config = hook_config(tmp_path, "echo 'about to fail' >&2\nexit 3\n")
    out = tmp_path / "out"
    result = amberpi("--config", str(config), "--output", str(out))
    assert result.returncode == 1
    assert "hook 9999-test.hook.chroot failed (exit status 3)" in result.stderr
    assert str(tmp_path / "hooks" / "9999-test.hook.chroot") in result.stderr
    assert amberpi_mounts() == []
    assert not (out / "amberpi-qemu.img").exists()
    assert not list(out.glob(".*.partial"))
    log = (out / "amberpi-qemu.build.log").read_text()
    assert "about to fail" in log


def test_ctrl_c_mid_chroot_releases_mounts(qemu_image: BuiltImage, tmp_path: Path) -> None:
    process = start_build_in_hook(tmp_path)
    assert amberpi_mounts(), "the chroot is mounted while the hook runs"
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=180)
    assert process.returncode == 130, rest[-3000:]
    assert "interrupted" in rest
    assert amberpi_mounts() == []
    assert not (tmp_path / "out" / "amberpi-qemu.img").exists()
    assert hook_left_running() == "", "no process of the hook survives"
