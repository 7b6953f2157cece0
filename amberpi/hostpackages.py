"""Debian packages the native build needs on the host.

Standard library only: tests/run.py reads it before the virtual environment exists.
"""

HOST_PACKAGES = (
    "debootstrap",
    "qemu-user-static",
    "binfmt-support",
    "squashfs-tools",
    "dosfstools",
    "mtools",
    "e2fsprogs",
    "fdisk",
    "debian-archive-keyring",
    "zstd",
    "xz-utils",
)
