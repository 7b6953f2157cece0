#!/usr/bin/env python3
"""The test command: installs what the tests need on a fresh Debian host, then runs pytest.

Usage: python3 tests/run.py [pytest arguments]
Needs root (the build and the boot tests use debootstrap, chroot and mounts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import build  # noqa: E402 - the front door's venv helper, shared on purpose
from amberpi.hostpackages import HOST_PACKAGES as BUILD_PACKAGES  # noqa: E402 - standard library only

# What the tests use beyond the build's own host tools (the build installs those).
TEST_PACKAGES = (
    "qemu-system-arm",
    "qemu-efi-aarch64",
    "shellcheck",
    "dash",
    "busybox",
    "openssl",
    "xorriso",
    "grub-common",
    # Runs the real grub.cfg against file-backed disks (tests/unit/test_grub_logic.py).
    "grub-emu",
    "apt-utils",
    "docker.io",
)
# Order matters: fast checks first, then the shared image build, then booting it.
SUITES = ["tests/unit", "tests/device", "tests/integration", "tests/boot"]


def missing(packages: tuple[str, ...]) -> list[str]:
    absent = []
    for package in packages:
        result = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in result.stdout:
            absent.append(package)
    return absent


def install_host_packages() -> None:
    absent = missing(TEST_PACKAGES + BUILD_PACKAGES)
    if not absent:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"tests/run.py: missing Debian packages {' '.join(absent)}; run as root on Debian so they can be installed")
    print(f"tests/run.py: installing host packages: {' '.join(absent)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "-q", "update"], check=True, env=env)
    subprocess.run(["apt-get", "-q", "-y", "install", "--no-install-recommends", *absent], check=True, env=env)


def main() -> int:
    install_host_packages()
    python = build.ensure_venv([REPO / "requirements.txt", REPO / "requirements-test.txt"])
    args = sys.argv[1:] or SUITES
    return subprocess.run([str(python), "-m", "pytest", *args], cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
