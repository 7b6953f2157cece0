"""Helpers shared by the tests that interrupt builds or boot a built image."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, amberpi, write_test_config

HOOK_NAME = "9999-test.hook.chroot"


def build_test_image(output: Path, *, emulated: bool = True, board: str = "qemu") -> Path:
    """The boot tests' image of a board (root password TEST_PASSWORD) built into output through
    the user's build cache, as a user would (build.py): for the benchmarks run outside pytest.
    `emulated=False`: the kernel command line as shipped (see conftest.EMULATION_CMDLINE)."""
    config = write_test_config(output.parent, emulated=emulated)
    build = [sys.executable, str(REPO / "build.py"), "--board", board, "--config", str(config), "--output", str(output)]
    subprocess.run(build, check=True)
    return next(output.glob("*.img"))


@functools.cache
def build_cache_dir() -> Path:
    """The cache folder builds use when no --cache-dir is given (the shared one), as `summary` says."""
    return Path(json.loads(amberpi("summary", "--json", check=True).stdout)["cache_dir"])


def amberpi_mounts() -> list[str]:
    """Mounts of AmberPi's build workspaces still in /proc/mounts."""
    return [line for line in Path("/proc/mounts").read_text().splitlines() if "/amberpi-" in line.split()[1]]


def hook_config(tmp_path: Path, body: str) -> Path:
    """A test config with one extra chroot hook running `body` (called again: the hook edited)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    hook = hooks / HOOK_NAME
    hook.write_text("#!/bin/sh\n" + body)
    hook.chmod(0o755)
    return write_test_config(tmp_path, hooks_dirs=[str(hooks)])


def start_build_in_hook(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """Start a build whose hook says HOOK-STARTED and sleeps; return once it has said so."""
    config = hook_config(tmp_path, "echo HOOK-STARTED\nsleep 600\n")
    argv = [sys.executable, "-m", "amberpi", *args, "--verbose", "--config", str(config), "--output", str(tmp_path / "out")]
    process = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert process.stderr
    seen = ""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen += line
        if "HOOK-STARTED" in line or not line:
            break
    assert "HOOK-STARTED" in seen, seen[-3000:]
    return process


def hook_left_running() -> str:
    return subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True).stdout.strip()
