"""Kernel module copies for update-initramfs, run natively instead of under qemu-user.

dracut-install, which initramfs-tools uses to put modules and firmware into the
initrd, first tries a btrfs clone and then starts one `cp` per file. On the build
host's ext4 under qemu-user that is ~45 ms a file, ~1000 files: most of the
initramfs's minutes. While update-initramfs runs, the chroot's /usr/bin/cp is
covered (bind mount) by a small script (templates/native-cp.j2) that hands exactly
dracut-install's call for module and firmware files to a static busybox of the
build host, which runs without emulation; anything else goes to the chroot's own
cp. Measured: the same initrd byte for byte (sha256), made in 87 s instead of
127 s under qemu-user for ~1350 modules (README, "Benchmark").

Needs a statically linked busybox for the build host's architecture (Debian's
busybox-static, which the user installs; the host setup does not swap it for the
dynamic busybox); without one, nothing changes.
Nothing is written into the tree: the helpers live on the chroot's /run (the
session's tmpfs, gone with it), and both mounts are gone when the block ends.
"""

from __future__ import annotations

import platform
import shutil
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from amberpi.mounts import mount
from amberpi.render import write_rendered
from amberpi.trees import resolve_inside

# Inside the chroot; /run is the session's own tmpfs (amberpi/chroot.py).
HELPERS = "/run/amberpi-native"
CHROOT_CP = "usr/bin/cp"
# Where dracut-install takes files from that carry no extended attributes (cp -p would drop them).
NATIVE_FOLDERS = ("/lib/modules", "/usr/lib/modules", "/lib/firmware", "/usr/lib/firmware")

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


@contextmanager
def native_module_copies(root: Path) -> Iterator[str]:
    """For the block: dracut-install's copies in the chroot at `root` run natively. Yields what was done, for the log."""
    busybox = static_busybox()
    if busybox is None:
        yield "module copies emulated (no static busybox on this host: apt install busybox-static)"
        return
    helpers = resolve_inside(root, HELPERS.lstrip("/"))
    chroot_cp = resolve_inside(root, CHROOT_CP)
    with ExitStack() as stack:
        helpers.mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, helpers / "busybox")
        write_rendered(helpers / "cp", "native-cp.j2", mode=0o755, helpers=HELPERS, native_folders=NATIVE_FOLDERS)
        # The chroot's own cp stays reachable for every other call.
        (helpers / "cp.emulated").touch()
        stack.enter_context(mount(str(chroot_cp), helpers / "cp.emulated", options=("bind",)))
        stack.enter_context(mount(str(helpers / "cp"), chroot_cp, options=("bind",)))
        yield f"module copies native ({busybox})"
