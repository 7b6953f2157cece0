"""End to end: the qemu image boots under AAVMF, runs live from p2, keeps changes on p4,
and a byte copy of the same image attached beside it is neither used nor written.

Two VM runs cover the lot (booting under TCG takes minutes). Every card written
from one image carries the same labels, so each run has a fresh byte copy of the
image as a second disk, once after the booted disk and once before it (the
firmware told to boot the second disk): login, overlay root, this disk's
partitions in use and none of the copy's, a file kept across the power-off, the
copy's bytes unchanged, and p1-p3 of the booted disk unchanged but for GRUB's
environment block (where GRUB claims the disk at each boot).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from amberpi.filesystems.fat import read_fat_file
from tests.conftest import TEST_PASSWORD, BuiltImage
from tests.imagetools import extract_partition, read_only_hashes, sha256_file
from tests.measurements import record
from tests.vm import VM

pytestmark = pytest.mark.boot


def grubenv(image: Path, folder: Path) -> dict[str, str]:
    p1 = extract_partition(image, 1, folder / "p1.img")
    text = read_fat_file(p1, "/grub/grubenv").decode()
    p1.unlink()
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[a-z_]+=", line))


def boot(disks: list[Path], boot_disk: int, log: Path) -> VM:
    vm = VM(disks[0], extra_disks=disks[1:], boot_disk=boot_disk, console_log=log)
    vm.start()
    seconds = vm.wait_for_login()
    record(f"qemu image beside a copy of itself (disk {boot_disk} of {len(disks)} booted): login {seconds:.0f}s")
    vm.login("root", TEST_PASSWORD)
    return vm


def test_boot_login_overlay_persistence_and_a_copy_of_the_card_never_used(qemu_image: BuiltImage, tmp_path: Path) -> None:
    before = read_only_hashes(qemu_image.path)
    labels = qemu_image.report["labels"]
    disk, copy = tmp_path / "disk.img", tmp_path / "copy.img"
    for target in (disk, copy):
        subprocess.run(["cp", "--sparse=always", str(qemu_image.path), str(target)], check=True)
    copy_before = sha256_file(copy)
    env_before = grubenv(disk, tmp_path)
    first_token = env_before["amberpi_token"]
    assert "amberpi_claim" not in env_before, "a fresh image has never been claimed"
    keep = secrets.token_hex(8)
    vm: VM | None = None
    try:
        # Run 1: this card is vda, the copy vdb (udev's by-label link then names the copy's p2).
        vm = boot([disk, copy], 0, tmp_path / "console.log")
        assert vm.check("findmnt -n -o FSTYPE /") == "overlay"
        cmdline = vm.check("cat /proc/cmdline")
        assert "amberpi.kernel=current" in cmdline, "GRUB booted the kernel partition"
        assert f"amberpi.id={qemu_image.report['image_id']}" in cmdline
        assert f"amberpi.claim={first_token}" in cmdline.split(), "GRUB claimed its disk with the image's token"
        assert vm.check("readlink -f /dev/disk/by-id/virtio-disk0") == "/dev/vda"
        assert vm.check("findmnt -n -o SOURCE /run/live/medium") == "/dev/vda2"
        assert vm.check("blkid -s LABEL -o value /dev/vda2") == vm.check("blkid -s LABEL -o value /dev/vdb2") == labels["system"]
        assert vm.check("findmnt -n -o SOURCE,FSTYPE /run/live/persistence/vda4").split() == ["/dev/vda4", "ext4"]
        assert vm.check("blkid -s LABEL -o value /dev/vda4") == labels["persistence"]
        assert vm.check("cat /run/amberpi/system-partition") == "/dev/vda2"
        loop = vm.check("findmnt -n -o SOURCE /run/live/rootfs/filesystem.squashfs")
        assert vm.check(f"losetup -n -O BACK-FILE {loop}") == "/run/live/medium/live/filesystem.squashfs"
        assert vm.check("ls /etc/ssh/ssh_host_ed25519_key") == "/etc/ssh/ssh_host_ed25519_key"
        assert vm.check("passwd -S root").split()[1] == "P"
        # Security: p1 and p3 are not mounted at all, p2 only read-only, nothing of the copy's;
        # sshd refuses root's password.
        mounted = vm.check("findmnt -rn -o SOURCE,OPTIONS | grep '^/dev/vd[a-z][0-9]* ' || true").splitlines()
        assert sorted(line.split()[0] for line in mounted) == ["/dev/vda2", "/dev/vda4"], mounted
        assert next(line for line in mounted if line.startswith("/dev/vda2 ")).split()[1].split(",")[0] == "ro", mounted
        sshd = vm.check("sshd -T -C user=root,host=client,addr=10.0.2.2 | grep -Ei '^(permitrootlogin|permitemptypasswords) '")
        assert sorted(sshd.splitlines()) == ["permitemptypasswords no", "permitrootlogin without-password"], sshd
        machine_id = vm.check("cat /etc/machine-id")
        assert len(machine_id) == 32
        vm.check(f"echo {keep} > /root/persisted && sync")
        vm.send("systemctl poweroff")
        vm.wait_exit()
        vm.close()

        assert sha256_file(copy) == copy_before, "the copy was not written"
        env = grubenv(disk, tmp_path)
        assert env.pop("amberpi_claim") == first_token
        second_token = env.pop("amberpi_token")
        assert re.fullmatch(r"[0-9a-f]{16}", second_token) and second_token != first_token, "a new token for the next boot"
        assert env == {k: v for k, v in env_before.items() if k != "amberpi_token"}, "nothing else in grubenv changed"

        # Run 2: the copy is vda, this card vdb, and the firmware boots vdb.
        vm = boot([copy, disk], 1, tmp_path / "console-2.log")
        assert vm.check("readlink -f /dev/disk/by-id/virtio-disk1") == "/dev/vdb"
        assert f"amberpi.claim={second_token}" in vm.check("cat /proc/cmdline").split()
        assert vm.check("findmnt -n -o SOURCE /run/live/medium") == "/dev/vdb2"
        assert vm.check("findmnt -n -o SOURCE /run/live/persistence/vdb4") == "/dev/vdb4"
        assert vm.check("cat /root/persisted") == keep, "this card's persistence, kept across the power-off"
        assert vm.check("cat /etc/machine-id") == machine_id
        mounted = vm.check("findmnt -rn -o SOURCE | grep '^/dev/vd' | sort || true").splitlines()
        assert mounted == ["/dev/vdb2", "/dev/vdb4"], mounted
        # The device tools follow the same disk: amberpi-kernel writes p1 and p3 of this one only.
        partitions = vm.check("sh -c '. /usr/lib/amberpi/lib.sh; partition_device 1; partition_device 3; disk_device'")
        assert partitions.split() == ["/dev/vdb1", "/dev/vdb3", "/dev/vdb"]
        vm.send("systemctl poweroff")
        vm.wait_exit()
    finally:
        if vm:
            vm.close()
        for log in ("console.log", "console-2.log"):
            if (tmp_path / log).exists():
                shutil.copy2(tmp_path / log, qemu_image.output / log.replace("console", "console-boot-test"))
    assert sha256_file(copy) == copy_before, "the copy was neither used nor written, in either order"
    assert read_only_hashes(disk) == before, "p1-p3 are never written by the running system (but for grubenv)"
