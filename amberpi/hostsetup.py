"""Make the native host able to build: the stages' tools via apt, arm64 emulation via binfmt_misc."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from amberpi.errors import AmberPiError, BackendError, ToolMissing, UsageError
from amberpi.log import LOG
from amberpi.render import write_rendered
from amberpi.run import run
from amberpi.tools import missing_tools, package_of, packages_for

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError(
            "the native build must run as root (debootstrap, chroot and mounts need it)",
            hint="run it with sudo, or use the Docker backend: --backend docker",
        )


def install_tools(tools: list[str]) -> None:
    """Install the Debian packages of these tools with apt."""
    packages = packages_for(tools)
    if shutil.which("apt-get") is None:
        raise ToolMissing(tools[0], package_of(tools[0]))
    LOG.note(f"Installing host packages: {' '.join(packages)}")
    try:
        run(["apt-get", "-q", "update"], label="apt-host")
        run(
            ["apt-get", "-q", "-y", "install", "--no-install-recommends", *packages],
            label="apt-host",
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    except AmberPiError as exc:
        raise BackendError(
            f"could not install the host packages {' '.join(packages)}",
            where="apt-get on this host",
            hint=f"install them by hand (apt-get install {' '.join(packages)}), then build again",
        ) from exc


def write_backports_source(target: Path, suite: str, mirror: str, reason: str) -> None:
    """An apt source for SUITE-backports on this host, e.g. for a newer emulator than the release has.
    apt pins backports low: only what is asked for by name with -t SUITE-backports comes from it."""
    write_rendered(target, "host-backports.sources.j2", suite=suite, mirror=mirror, reason=reason)


# The kernel's binfmt_misc entry for arm64 ELF binaries, as qemu-user-static registers it.
AARCH64_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
EMULATION_FIX = (
    "Debian/Ubuntu: sudo apt-get install qemu-user-static binfmt-support; "
    "Fedora: sudo dnf install qemu-user-static && sudo systemctl restart systemd-binfmt; "
    "or register it once by hand (until the next reboot; the F flag lets containers and chroots use it): "
    f"printf '%s\\n' ':qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:/usr/bin/qemu-aarch64-static:FP' "
    "| sudo tee /proc/sys/fs/binfmt_misc/register"
)


def arm64_emulation_problem() -> str | None:
    """Why arm64 programs cannot run here (in a chroot or a container), or None when they can."""
    if not (BINFMT_DIR / "register").exists():
        return f"binfmt_misc is not mounted at {BINFMT_DIR}, so arm64 programs cannot run"
    entry = BINFMT_DIR / "qemu-aarch64"
    if not entry.exists():
        return "qemu-aarch64 is not registered with binfmt_misc, so arm64 programs cannot run"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return f"the binfmt_misc entry {entry} is disabled, so arm64 programs cannot run"
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:
        return (
            f"qemu-aarch64 is registered without the F (fix binary) flag ({entry} has flags: {flags or 'none'}), "
            "so arm64 programs cannot run inside a chroot or a container"
        )
    return None


def ensure_arm64_emulation(*, fix: bool = True) -> None:
    """binfmt_misc mounted and qemu-aarch64 registered with the F flag, or a clear way to fix it.

    With `fix`, first try to mount binfmt_misc and enable the entry (native builds, as root);
    without, only look (the Docker backend checks the host before it starts anything).
    """
    if fix and not (BINFMT_DIR / "register").exists():
        try:
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], label="mount")
        except AmberPiError as exc:
            raise BackendError(
                "binfmt_misc is not mounted, so arm64 programs cannot run",
                hint=f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR}",
            ) from exc
    if fix and not (BINFMT_DIR / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
        run(["update-binfmts", "--enable", "qemu-aarch64"], label="binfmt", ok=(0, 2))
    problem = arm64_emulation_problem()
    if problem is None:
        return
    hint = EMULATION_FIX
    if not (BINFMT_DIR / "register").exists():
        hint = f"sudo mount -t binfmt_misc binfmt_misc {BINFMT_DIR}, then: {EMULATION_FIX}"
    elif "without the F" in problem:
        hint = f"remove the entry (echo -1 | sudo tee {BINFMT_DIR}/qemu-aarch64), then: {EMULATION_FIX}"
    raise BackendError(problem, hint=hint)


def prepare_native_host(tools: Iterable[str]) -> None:
    """Root, every tool the stages declared (installing their packages when missing), arm64 emulation."""
    require_root()
    tools = list(tools)
    absent = missing_tools(tools)
    if absent:
        install_tools(absent)
    still_missing = missing_tools(tools)
    if still_missing:
        raise ToolMissing(still_missing[0], package_of(still_missing[0]))
    ensure_arm64_emulation()
