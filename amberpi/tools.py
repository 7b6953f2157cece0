"""Which Debian package provides each host tool AmberPi or its tests call: the one table.

Stages declare the tools they call (Stage.tools); the host check, the packages the
native build installs, the Docker builder image and the test runner all derive
from those declarations through this table.

Standard library only: tests/run.py reads it before the virtual environment exists.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

# A tool is a command on PATH, or an absolute path for a file a tool reads.
TOOL_PACKAGES: dict[str, str] = {
    "apt-get": "apt",
    "apt-ftparchive": "apt-utils",
    "awk": "mawk",
    "bmaptool": "bmap-tools",
    "busybox": "busybox",
    "chpasswd": "passwd",
    "chroot": "coreutils",
    "cp": "coreutils",
    "dash": "dash",
    "dd": "coreutils",
    "debootstrap": "debootstrap",
    "debugfs": "e2fsprogs",
    "dockerd": "docker.io",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "e2fsck": "e2fsprogs",
    "fsck.fat": "dosfstools",
    "grub-editenv": "grub-common",
    "grub-emu": "grub-emu",
    "grub-script-check": "grub-common",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mksquashfs": "squashfs-tools",
    "mount": "mount",
    "mtype": "mtools",
    "openssl": "openssl",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-system-aarch64": "qemu-system-arm",
    "sfdisk": "fdisk",
    "shellcheck": "shellcheck",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "umount": "mount",
    "unsquashfs": "squashfs-tools",
    "update-binfmts": "binfmt-support",
    "useradd": "passwd",
    "xorriso": "xorriso",
    "xz": "xz-utils",
    "zstd": "zstd",
    "/usr/share/AAVMF/AAVMF_CODE.fd": "qemu-efi-aarch64",
    "/usr/share/keyrings/debian-archive-keyring.gpg": "debian-archive-keyring",
}

# What runs arm64 programs on another architecture: every chroot stage needs it.
EMULATION_TOOLS = ("qemu-aarch64-static", "update-binfmts")


def package_of(tool: str) -> str:
    """The Debian package that provides `tool`; a tool missing from the table is a bug."""
    try:
        return TOOL_PACKAGES[tool]
    except KeyError:
        raise KeyError(f"{tool!r} is not in amberpi/tools.py TOOL_PACKAGES: add the Debian package that provides it") from None


def is_present(tool: str) -> bool:
    if tool.startswith("/"):
        return Path(tool).exists()
    return shutil.which(tool) is not None


def missing_tools(tools: Iterable[str]) -> list[str]:
    return sorted({tool for tool in tools if not is_present(tool)})


def packages_for(tools: Iterable[str]) -> list[str]:
    return sorted({package_of(tool) for tool in tools})
