#!/usr/bin/env python3
"""The test command: installs what the tests need on a fresh Debian host, then runs pytest.

Usage: python3 tests/run.py [pytest arguments]
Needs root (the build and the boot tests use debootstrap, chroot and mounts).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import build  # noqa: E402 - the front door's venv helper, shared on purpose
from amberpi.mirror import debootstrap_default_mirror, detect_host_mirrors  # noqa: E402 - standard library only
from amberpi.tools import missing_tools, packages_for  # noqa: E402 - standard library only

# What the tests call beyond the build's own tools (those the stages declare), each
# mapped to its Debian package by the one table in amberpi/tools.py.
TEST_TOOLS = (
    "qemu-system-aarch64",
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "shellcheck",
    "dash",
    "busybox",
    "openssl",
    "xorriso",
    "grub-editenv",
    "grub-script-check",
    # Runs the real grub.cfg against file-backed disks (tests/unit/test_grub_logic.py).
    "grub-emu",
    "apt-ftparchive",
    "unsquashfs",
    "e2fsck",
    "dockerd",
    # First-boot tests: p1 read back and checked, users written into a root tree, SSH into the guest.
    "mtype",
    "fsck.fat",
    "useradd",
    "chpasswd",
    "ssh",
    "ssh-keygen",
)
# Order matters: fast checks first, then the shared image build, then booting it.
SUITES = ["tests/unit", "tests/device", "tests/integration", "tests/boot"]
# Suites that need no disk to speak of: the rest build and boot images.
LIGHT_SUITES = ("tests/unit", "tests/device")
# Free space a full run needs where pytest writes (the build cache and Docker's vfs
# layers usually share that file system): a full run from an empty cache took at most
# 11.7 GiB (the "disk at" line of its measurements, 2026-11-23), plus room to spare.
SUITE_DISK_GIB = 16


def build_tools(python: Path) -> list[str]:
    """The host tools the build's stages declare (amberpi/pipeline.py host_tools), asked of the venv."""
    query = "import amberpi.pipeline as p; print('\\n'.join(p.host_tools()))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(python), "-P", "-c", query], capture_output=True, text=True, check=True, env=env).stdout.split()


# Under bookworm's QEMU 7.2 the guest stalled for seconds at a time (RCU stalls, soft lockups, a
# boot that never reached a login, an emulated SD host timing out); under bookworm-backports' 10.0
# it did not. Likely why (QEMU's history, not traced here): before 8.1 a guest's 128-bit atomics,
# which the arm64 kernel's slab allocator makes on nearly every allocation, stop every vCPU.
QEMU_MIN = (8, 1)
BACKPORTS_SOURCES = Path("/etc/apt/sources.list.d/amberpi-backports.sources")


def qemu_version() -> tuple[int, int] | None:
    if shutil.which("qemu-system-aarch64") is None:
        return None
    first = subprocess.run(["qemu-system-aarch64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    match = re.search(r"version (\d+)\.(\d+)", first)
    return (int(match.group(1)), int(match.group(2))) if match else None


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    fields = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    return fields.get("VERSION_CODENAME", "").strip('"')


def ensure_recent_qemu(python: Path) -> None:
    """qemu-system-aarch64 >= 8.1: from bookworm-backports on a bookworm host (the host's own mirror)."""
    version = qemu_version()
    if version is not None and version >= QEMU_MIN:
        return
    codename = host_codename()
    if codename != "bookworm" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        found = "none" if version is None else ".".join(map(str, version))
        print(
            f"tests/run.py: qemu-system-aarch64 {found} found; {'.'.join(map(str, QEMU_MIN))} or newer is needed for guests "
            "that do not stall under emulation (install it from your distribution's backports)",
            file=sys.stderr,
        )
        return
    archive, _ = detect_host_mirrors()
    mirror = archive or debootstrap_default_mirror()
    render = "import sys, pathlib, amberpi.hostsetup as h; h.write_backports_source(pathlib.Path(sys.argv[1]), *sys.argv[2:])"
    reason = f"QEMU {'.'.join(map(str, QEMU_MIN))} or newer (the boot tests' emulator)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([str(python), "-P", "-c", render, str(BACKPORTS_SOURCES), codename, mirror, reason], check=True, env=env)
    print(
        f"tests/run.py: installing qemu-system-arm from {codename}-backports ({mirror}), see {BACKPORTS_SOURCES}",
        file=sys.stderr,
        flush=True,
    )
    apt_install(["qemu-system-arm"], "-t", f"{codename}-backports")


def install_host_packages(tools: list[str]) -> None:
    absent = packages_for(missing_tools(tools))
    if not absent:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"tests/run.py: missing Debian packages {' '.join(absent)}; run as root on Debian so they can be installed")
    print(f"tests/run.py: installing host packages: {' '.join(absent)}", file=sys.stderr, flush=True)
    apt_install(absent)


def apt_install(packages: list[str], *options: str) -> None:
    """apt-get update, then install `packages` (`options` such as -t SUITE go to the install)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "-q", "update"], check=True, env=env)
    subprocess.run(["apt-get", "-q", "-y", "install", "--no-install-recommends", *options, *packages], check=True, env=env)


def disk_shortfall(args: list[str], need_gib: float = SUITE_DISK_GIB) -> str | None:
    """Why the run would fill the disk, or None. Checked up front: a full disk mid-run fails
    dozens of tests with confusing errors after many minutes."""
    # pytest runs in the repository, so test paths are relative to it; option values
    # (the `config` of `-k config`) name nothing under tests/ and are left out.
    named = [(REPO / arg.split("::")[0]).resolve() for arg in args if not arg.startswith("-")]
    paths = [path for path in named if path.is_relative_to(REPO / "tests")]
    if paths and all(any(path.is_relative_to(REPO / suite) for suite in LIGHT_SUITES) for path in paths):
        return None
    folder = tempfile.gettempdir()
    free_gib = shutil.disk_usage(folder).free / (1 << 30)
    if free_gib >= need_gib:
        return None
    return (
        f"tests/run.py: only {free_gib:.1f} GiB free in {folder}, and a full run needs about {need_gib:g} GiB "
        "(built images, a from-scratch build, the build cache, Docker's vfs layers). Free some space "
        f"(old test runs: {folder}/pytest-of-*; the build cache: `python3 build.py clean -f`; "
        "Docker: `docker image prune`) or point TMPDIR at a larger disk, then run again."
    )


def main() -> int:
    args = sys.argv[1:] or SUITES
    shortfall = disk_shortfall(args)
    if shortfall:
        print(shortfall, file=sys.stderr)
        return 2
    python = build.ensure_venv([REPO / "requirements.txt", REPO / "requirements-test.txt"])
    ensure_recent_qemu(python)
    install_host_packages([*TEST_TOOLS, *build_tools(python)])
    # One archive state for the whole run (amberpi/archive.py): a Debian update published while
    # the suite runs must not turn a later strict build's cached stages into misses.
    env = {"AMBERPI_ARCHIVE_MAX_AGE": "21600", **os.environ}
    return subprocess.run([str(python), "-m", "pytest", *args], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
