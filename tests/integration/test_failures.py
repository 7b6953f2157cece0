"""Failures mid-build: the error names the cause, mounts are released, no image is left."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, BuiltImage, amberpi, write_test_config

pytestmark = pytest.mark.integration


def amberpi_mounts() -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if "/amberpi-" in line.split()[1]]


def hook_config(tmp_path: Path, body: str) -> Path:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hook = hooks / "9999-test.hook.chroot"
    hook.write_text("#!/bin/sh\n" + body)
    hook.chmod(0o755)
    return write_test_config(tmp_path, hooks_dirs=[str(hooks)])


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
    config = hook_config(tmp_path, "echo HOOK-STARTED\nsleep 600\n")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "amberpi", "--verbose", "--config", str(config), "--output", str(out)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr
    deadline = time.monotonic() + 900
    seen = ""
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen += line
        if "HOOK-STARTED" in line or not line:
            break
    assert "HOOK-STARTED" in seen, seen[-3000:]
    assert amberpi_mounts(), "the chroot is mounted while the hook runs"
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=180)
    assert process.returncode == 130, rest[-3000:]
    assert "interrupted" in rest
    assert amberpi_mounts() == []
    assert not (out / "amberpi-qemu.img").exists()
    leftover = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True).stdout.strip()
    assert leftover == "", "no process of the hook survives"
