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

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from amberpi.mounts import mount
from amberpi.render import write_rendered
from amberpi.tools import static_busybox
from amberpi.trees import resolve_inside

# Inside the chroot; /run is the session's own tmpfs (amberpi/chroot.py).
HELPERS = "/run/amberpi-native"
CHROOT_CP = "usr/bin/cp"
# Where dracut-install takes files from that carry no extended attributes (cp -p would drop them).
NATIVE_FOLDERS = ("/lib/modules", "/usr/lib/modules", "/lib/firmware", "/usr/lib/firmware")


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
