"""Shared fixtures. The images are built once per test run and shared by every test."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.measurements import RECORDED, DiskWatch, record

REPO = Path(__file__).resolve().parent.parent
TEST_PASSWORD = "amberpi-test"
# A fixed build time for the file systems tests write themselves.
EPOCH = 1_700_000_000
# Debian's kernel zeroes every page it allocates (CONFIG_INIT_ON_ALLOC_DEFAULT_ON). Under TCG that
# zeroing is most of a boot: the page cache filled through squashfs, the loop device and the ISO
# file took 46-99 s between the hand-over to systemd and its first line, and 11 s without it
# (the same image, 2026-12-07; README, Boot time). A Pi zeroes at memory speed, so images keep the default; the
# images the tests build and boot, and only they, turn it off. No test checks memory initialisation.
EMULATION_CMDLINE = "init_on_alloc=0"
# Fixed salt: the hash, and so the cache key of the customize stage, stays the same across runs.
TEST_PASSWORD_HASH = "$6$amberpitest$h7L/HEj3cYnHrVU5FXukPFq1rREAGg3SVHk7HvCpDKB9UCoedF.jQ23eVBixNm.N/IgiYKcgnw1pd11CZUJ1B1"


def amberpi(*args: str, check: bool = False, timeout: float = 3600, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """Run the CLI as a user would, with this interpreter (the test venv)."""
    result = subprocess.run([sys.executable, "-m", "amberpi", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"amberpi {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@dataclass
class BuiltImage:
    board: str
    path: Path
    report: dict  # type: ignore[type-arg]
    seconds: float
    output: Path


def write_test_config(folder: Path, *, emulated: bool = True, **extra: object) -> Path:
    """The tests' build config (`extra` settings on top); `emulated=False` keeps the shipped kernel command line."""
    import yaml

    # p4 at the image's default size: the kernel update tests prove a backports kernel
    # fits it (staging happens in /var/tmp, in RAM by default).
    data = {"root_password_hash": TEST_PASSWORD_HASH, **extra}
    data["kernel_cmdline"] = " ".join(filter(None, [EMULATION_CMDLINE if emulated else "", str(extra.get("kernel_cmdline", ""))]))
    # The benchmarks pass a scratch folder of the user's choosing that may not exist yet.
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "amberpi-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def build_image(tmp_root: Path, board: str) -> BuiltImage:
    import json

    output = tmp_root / f"out-{board}"
    config = write_test_config(tmp_root)
    started = time.monotonic()
    amberpi("--board", board, "--config", str(config), "--output", str(output), check=True)
    seconds = time.monotonic() - started
    report = json.loads((output / f"amberpi-{board}.report.json").read_text())
    image = output / f"amberpi-{board}.img"
    stages = report["stages"]
    cached = sum(1 for stage in stages if stage["status"] in ("cached", "skipped"))
    record(f"build of {board}: {seconds:.0f}s ({cached}/{len(stages)} stages from the cache), image {image.stat().st_size >> 20} MiB")
    return BuiltImage(board, image, report, seconds, output)


@pytest.fixture(scope="session")
def qemu_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    require_root()
    return build_image(tmp_path_factory.mktemp("qemu"), "qemu")


@pytest.fixture(scope="session")
def pi3_image(tmp_path_factory: pytest.TempPathFactory, qemu_image: BuiltImage) -> BuiltImage:
    # After the qemu image: the pi3 build reuses its cached rootfs and squashfs.
    return build_image(tmp_path_factory.mktemp("pi3"), "pi3")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests build images and must run as root (use `python3 tests/run.py` as root)")


DISK_WATCH: DiskWatch | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global DISK_WATCH
    DISK_WATCH = DiskWatch([Path(tempfile.gettempdir()), Path("/var/cache"), Path("/var/lib/docker")]).__enter__()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if DISK_WATCH is not None:
        DISK_WATCH.__exit__()
        RECORDED.extend(DISK_WATCH.summary())
    if RECORDED:
        terminalreporter.section("measurements")
        for line in RECORDED:
            terminalreporter.write_line(line)
