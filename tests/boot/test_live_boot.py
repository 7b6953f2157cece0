"""End to end: the qemu image boots under AAVMF, runs live from p2, keeps changes on p4.

One VM run covers the lot (booting under TCG takes minutes): login, overlay
root, this image's partitions in use, a file kept across a clean reboot, and
p1-p3 unchanged on the image afterwards.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from tests.buildtools import booted_copy
from tests.conftest import TEST_PASSWORD, BuiltImage
from tests.imagetools import partition_range, sha256_range

pytestmark = pytest.mark.boot


def read_only_hashes(image: Path) -> dict[int, str]:
    return {number: sha256_range(image, *partition_range(image, number)) for number in (1, 2, 3)}


def test_boot_login_overlay_persistence(qemu_image: BuiltImage, tmp_path: Path) -> None:
    before = read_only_hashes(qemu_image.path)
    labels = qemu_image.report["labels"]
    token = secrets.token_hex(8)
    try:
        with booted_copy(qemu_image.path, tmp_path) as vm:
            assert vm.check("findmnt -n -o FSTYPE /") == "overlay"
            cmdline = vm.check("cat /proc/cmdline")
            assert "amberpi.kernel=current" in cmdline, "GRUB booted the kernel partition"
            assert f"amberpi.id={qemu_image.report['image_id']}" in cmdline
            medium = vm.check("findmnt -n -o SOURCE /run/live/medium")
            assert medium == "/dev/vda2"
            assert vm.check("blkid -s LABEL -o value /dev/vda2") == labels["system"]
            assert vm.check("findmnt -n -o SOURCE,FSTYPE /run/live/persistence/vda4").split() == ["/dev/vda4", "ext4"]
            assert vm.check("blkid -s LABEL -o value /dev/vda4") == labels["persistence"]
            loop = vm.check("findmnt -n -o SOURCE /run/live/rootfs/filesystem.squashfs")
            assert vm.check(f"losetup -n -O BACK-FILE {loop}") == "/run/live/medium/live/filesystem.squashfs"
            assert vm.check("ls /etc/ssh/ssh_host_ed25519_key") == "/etc/ssh/ssh_host_ed25519_key"
            assert vm.check("passwd -S root").split()[1] == "P"
            # Security: p1 and p3 are not mounted at all, p2 only read-only; sshd refuses root's password.
            mounted = vm.check("findmnt -rn -o SOURCE,OPTIONS | grep '^/dev/vda[123] ' || true").splitlines()
            assert [line.split()[0] for line in mounted] == ["/dev/vda2"], mounted
            assert mounted[0].split()[1].split(",")[0] == "ro", mounted
            sshd = vm.check("sshd -T -C user=root,host=client,addr=10.0.2.2 | grep -Ei '^(permitrootlogin|permitemptypasswords) '")
            assert sorted(sshd.splitlines()) == ["permitemptypasswords no", "permitrootlogin without-password"], sshd

            vm.check(f"echo {token} > /root/persisted && sync")
            vm.send("systemctl reboot")
            vm.wait_for_login()
            vm.login("root", TEST_PASSWORD)
            assert vm.check("cat /root/persisted") == token
            machine_id = vm.check("cat /etc/machine-id")
            assert len(machine_id) == 32
            vm.send("systemctl poweroff")
            vm.wait_exit()
    finally:
        if (tmp_path / "console.log").exists():
            shutil.copy2(tmp_path / "console.log", qemu_image.output / "console-boot-test.log")
    assert read_only_hashes(tmp_path / "disk.img") == before, "p1-p3 are never written by the running system"
