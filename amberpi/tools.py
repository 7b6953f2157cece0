"""Which Debian package provides each host tool AmberPi or its tests call: the one table.

Stages declare the tools they call (Stage.tools); the host check, the packages the
native build installs, the Docker builder image and the test runner all derive
from those declarations through this table.

Standard library only: tests/run.py reads it before the virtual environment exists.
"""

from __future__ import annotations

import platform
import shutil
import struct
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


# ELF e_machine of the build hosts a chroot emulates arm64 on.
ELF_MACHINES = {"x86_64": 62, "amd64": 62, "ppc64le": 21, "riscv64": 243}
PT_INTERP = 3


def is_static_executable(path: Path, machine: int) -> bool:
    """An ELF executable for `machine` without a program interpreter: it runs inside any chroot."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False  # 64-bit little-endian only, as the hosts in ELF_MACHINES are
    (e_machine,) = struct.unpack_from("<H", data, 18)
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    if e_machine != machine or e_phoff + e_phentsize * e_phnum > len(data):
        return False
    return all(struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] != PT_INTERP for i in range(e_phnum))


def static_busybox() -> Path | None:
    """The build host's busybox if it is static and the host is not arm64 itself (nothing to emulate then)."""
    machine = ELF_MACHINES.get(platform.machine())
    found = shutil.which("busybox")
    if machine is None or found is None:
        return None
    path = Path(found).resolve()
    return path if is_static_executable(path, machine) else None
