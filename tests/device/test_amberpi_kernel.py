"""amberpi-kernel on the host, against file-backed partitions, under dash and busybox sh.

p1 is a real FAT image holding grub/grubenv (made by the build's own code), p3 a
plain file; the script reads and writes them exactly as it does /dev/mmcblk0p1
and p3 on a Pi. The real xorriso builds the ISO; pycdlib, mtools and GRUB's own
grub-editenv read the results back.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from amberpi.filesystems.fat import make_fat, read_fat_file
from amberpi.filesystems.iso9660 import list_iso, read_iso_file, volume_id
from amberpi.render import write_rendered
from amberpi.stages.bootfs import find_grubenv, write_grubenv
from tests.conftest import EPOCH, REPO
from tests.device.devicekit import fake_systemctl
from tests.imagetools import iso_identity

SCRIPT = REPO / "amberpi/device/rootfs/usr/sbin/amberpi-kernel"
LIB = REPO / "amberpi/device/rootfs/usr/lib/amberpi/lib.sh"
SHELLS = [["dash"], ["busybox", "sh"]]
FACTORY = "6.12.1+deb13-arm64"
NEW = "6.16.3+bpo-arm64"
NEWER = "6.17.1+bpo-arm64"
KERNEL_LABEL = "AMBERPI_KRN_1A2B3C4D"
DTB = "broadcom/bcm2837-rpi-3-b.dtb"


@dataclass
class Device:
    root: Path
    parts: Path
    env: dict[str, str]
    shell: list[str]

    def run(self, *args: str, cmdline: str = "boot=live amberpi.id=1a2b3c4d amberpi.kernel=current") -> subprocess.CompletedProcess[str]:
        Path(self.env["AMBERPI_CMDLINE_FILE"]).write_text(cmdline + "\n")
        return subprocess.run([*self.shell, str(SCRIPT), *args], capture_output=True, text=True, env=self.env, timeout=120)

    def grubenv(self) -> dict[str, str]:
        """GRUB's environment as grub-editenv reads it, less the write identity, which must name p3's."""
        text = read_fat_file(self.parts / "p1", "/grub/grubenv").decode()
        assert len(text.encode()) == 1024
        copy = self.parts / "grubenv-copy"
        copy.write_text(text)
        listed = subprocess.run(["grub-editenv", str(copy), "list"], capture_output=True, text=True, check=True).stdout
        variables = dict(line.split("=", 1) for line in listed.splitlines())
        identity = variables.pop("amberpi_krn_uuid", None)
        assert identity in (None, self.identity()), f"grubenv names write {identity}, p3 holds {self.identity()}"
        return variables

    def identity(self) -> str:
        """The write p3 holds, as GRUB's `probe --fs-uuid` shows it."""
        return iso_identity(self.parts / "p3")

    def trial_cmdline(self) -> str:
        """What GRUB passes to a kernel it boots on trial from p3."""
        return f"boot=live amberpi.kernel=trial amberpi.krn_uuid={self.identity()}"

    def p3_digest(self) -> str:
        return hashlib.sha256((self.parts / "p3").read_bytes()).hexdigest()


def add_kernel(root: Path, version: str, *, initrd: bool = True, modules: bool = True) -> None:
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot" / f"vmlinuz-{version}").write_bytes(b"K" * 3000 + version.encode())
    if initrd:
        (root / "boot" / f"initrd.img-{version}").write_bytes(b"I" * 2000 + version.encode())
    if modules:
        (root / "usr/lib/modules" / version).mkdir(parents=True, exist_ok=True)
    dtb = root / f"usr/lib/linux-image-{version}" / DTB
    dtb.parent.mkdir(parents=True, exist_ok=True)
    dtb.write_bytes(b"\xd0\x0d\xfe\xed" + version.encode())


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    shell = request.param
    for tool in (shell[0], "xorriso", "grub-editenv", "mkfs.vfat"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (tests/run.py installs it)")
    root, parts, medium = tmp_path / "root", tmp_path / "parts", tmp_path / "medium"
    parts.mkdir()
    add_kernel(root, FACTORY)
    boot_tree = tmp_path / "boot-tree"
    write_grubenv(boot_tree / "grub" / "grubenv", [("amberpi_state", "good"), ("amberpi_version", FACTORY)])
    (boot_tree / "EFI").mkdir()
    make_fat(boot_tree, parts / "p1", size_mib=64, label="AMBERPI", volume_id="1a2b3c4d", epoch=EPOCH)
    offset = find_grubenv(parts / "p1", (boot_tree / "grub" / "grubenv").read_bytes())
    with (parts / "p3").open("wb") as handle:
        handle.truncate(8 << 20)
    write_rendered(
        medium / ".disk" / "amberpi.conf",
        "amberpi.conf.j2",
        board="pi3",
        image_id="1a2b3c4d",
        system_label="AMBERPI_SYS_1A2B3C4D",
        kernel_label=KERNEL_LABEL,
        persistence_label="amberpi-1a2b3c4d",
        factory_version=FACTORY,
        device_trees=[DTB],
        grubenv_offset=offset,
    )
    env = {
        "PATH": os.environ["PATH"],
        "AMBERPI_ROOT": str(root),
        "AMBERPI_PART_DIR": str(parts),
        "AMBERPI_MEDIUM_DIR": str(medium),
        "AMBERPI_RUN_DIR": str(tmp_path / "run"),
        "AMBERPI_WORK_DIR": str(tmp_path / "work"),
        "AMBERPI_CMDLINE_FILE": str(tmp_path / "cmdline"),
        "AMBERPI_ASSUME_PERSISTENCE": "1",
        "AMBERPI_CONFIRM_CONF": str(tmp_path / "kernel-confirm.conf"),
        **fake_systemctl(tmp_path / "fakebin", tmp_path / "units"),
    }
    env["PATH"] = f"{tmp_path / 'fakebin'}:{env['PATH']}"
    return Device(root, parts, env, shell)


def test_the_factory_kernel_comes_from_p2_when_boot_has_not_got_it(device: Device) -> None:
    """The image's squashfs leaves /boot's kernel and initrd out; p2 holds them (live/)."""
    live = Path(device.env["AMBERPI_MEDIUM_DIR"]) / "live"
    live.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        source = device.root / "boot" / f"{name}-{FACTORY}"
        (live / name).write_bytes(source.read_bytes())
        source.unlink()
    add_kernel(device.root, NEW)
    assert device.run("install").returncode == 0
    (device.root / "boot" / f"vmlinuz-{NEW}").unlink()
    result = device.run("install")
    assert result.returncode == 0, result.stderr
    assert f"kernel partition now holds {FACTORY}" in result.stdout, "the newest kernel with both files: the factory one, from p2"
    assert gzip.decompress(read_iso_file(device.parts / "p3", "/vmlinuz")) == (live / "vmlinuz").read_bytes()
    assert read_iso_file(device.parts / "p3", "/initrd.img") == (live / "initrd.img").read_bytes()


def test_install_writes_a_verified_kernel_partition(device: Device) -> None:
    add_kernel(device.root, NEW)
    result = device.run("install")
    assert result.returncode == 0, result.stderr
    assert f"kernel partition now holds {NEW}" in result.stdout
    p3 = device.parts / "p3"
    assert volume_id(p3) == KERNEL_LABEL
    files = list_iso(p3)
    assert {"/vmlinuz", "/initrd.img", "/version", "/SHA256SUMS", f"/dtbs/{DTB}"} <= set(files)
    # gzip-compressed: GRUB's gzio undoes it as it loads, from a third of the bytes.
    assert gzip.decompress(read_iso_file(p3, "/vmlinuz")) == (device.root / "boot" / f"vmlinuz-{NEW}").read_bytes()
    assert read_iso_file(p3, "/version").decode() == NEW + "\n"
    for line in read_iso_file(p3, "/SHA256SUMS").decode().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256(read_iso_file(p3, "/" + name)).hexdigest() == digest
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": NEW}
    fsck = subprocess.run(["fsck.vfat", "-n", str(device.parts / "p1")], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_confirm_keeps_a_kernel_on_trial(device: Device) -> None:
    add_kernel(device.root, NEW)
    assert device.run("install").returncode == 0
    assert device.run("confirm").returncode == 0
    assert device.grubenv()["amberpi_state"] == "new", "confirm does nothing unless booted on trial"
    result = device.run("confirm", cmdline=device.trial_cmdline())
    assert result.returncode == 0 and "booted fine" in result.stdout
    assert device.grubenv() == {"amberpi_state": "good", "amberpi_version": NEW}


def test_refuses_without_persistence_and_changes_nothing(device: Device) -> None:
    add_kernel(device.root, NEW)
    del device.env["AMBERPI_ASSUME_PERSISTENCE"]
    before = device.p3_digest(), device.grubenv()
    result = device.run("install", NEW)
    assert result.returncode == 3
    assert "without persistence" in result.stderr
    assert (device.p3_digest(), device.grubenv()) == before


def test_refuses_when_the_partition_is_too_small(device: Device) -> None:
    add_kernel(device.root, NEW)
    (device.root / "boot" / f"initrd.img-{NEW}").write_bytes(os.urandom(9 << 20))
    before = device.p3_digest(), device.grubenv()
    result = device.run("install", NEW)
    assert result.returncode == 3
    assert "but the kernel partition holds 8 MiB" in result.stderr
    assert (device.p3_digest(), device.grubenv()) == before


def test_refuses_when_the_initrd_is_missing(device: Device) -> None:
    add_kernel(device.root, NEW, initrd=False)
    before = device.p3_digest()
    result = device.run("install", NEW)
    assert result.returncode == 3 and f"/boot/initrd.img-{NEW} is missing" in result.stderr
    assert device.p3_digest() == before


def test_interrupted_write_leaves_state_writing(device: Device, tmp_path: Path) -> None:
    """A power cut mid-write: GRUB sees 'writing' and boots the factory kernel."""
    add_kernel(device.root, NEW)
    fake_bin = tmp_path / "fake-dd"
    fake_bin.mkdir()
    real_dd = shutil.which("dd")
    fake_dd = fake_bin / "dd"
    # Writes of the kernel partition stop half-way and the "power" goes (the script is killed).
    fake_dd.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *of={device.parts}/p3*) {real_dd} if=/dev/urandom of={device.parts}/p3 bs=4096 count=100 conv=notrunc 2>/dev/null;'
        " kill -9 $PPID; exit 1 ;; esac\n"
        f'exec {real_dd} "$@"\n'
    )
    fake_dd.chmod(0o755)
    device.env["PATH"] = f"{fake_bin}:{device.env['PATH']}"
    result = device.run("install", NEW)
    assert result.returncode != 0
    assert device.grubenv()["amberpi_state"] == "writing"
    device.env["PATH"] = device.env["PATH"].split(":", 1)[1]
    status = device.run("status")
    assert "a write to the kernel partition did not finish" in status.stdout
    assert device.run("reinstall").returncode == 0
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": NEW}


def install_confirmed(device: Device, version: str) -> None:
    """Install `version` and let its trial boot confirm it: the state a good update leaves."""
    add_kernel(device.root, version)
    assert device.run("install", version).returncode == 0
    assert device.run("confirm", cmdline=device.trial_cmdline()).returncode == 0
    assert device.grubenv()["amberpi_state"] == "good"


def assert_slot_holds(p3: Path, folder: str, version: str, root: Path) -> None:
    """The kernel slot at `folder` on p3 holds `version`'s files, and its checksums verify."""
    assert read_iso_file(p3, f"{folder}/version").decode() == version + "\n"
    assert read_iso_file(p3, f"{folder}/initrd.img") == (root / "boot" / f"initrd.img-{version}").read_bytes()
    names = set()
    for line in read_iso_file(p3, f"{folder}/SHA256SUMS").decode().splitlines():
        digest, name = line.split("  ")
        names.add(name)
        assert hashlib.sha256(read_iso_file(p3, f"{folder}/{name}")).hexdigest() == digest
    assert {"vmlinuz", "initrd.img", "version", f"dtbs/{DTB}"} == names


def test_updating_a_good_kernel_keeps_it_as_the_fallback(device: Device) -> None:
    install_confirmed(device, NEW)
    add_kernel(device.root, NEWER)
    result = device.run("install", NEWER)
    assert result.returncode == 0, result.stderr
    assert f"kernel partition now holds {NEWER} (and {NEW}, the fallback)" in result.stdout
    p3 = device.parts / "p3"
    assert_slot_holds(p3, "", NEWER, device.root)
    assert_slot_holds(p3, "/previous", NEW, device.root)
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": NEWER, "amberpi_previous": NEW}
    assert f"fallback kernel:   {NEW}" in device.run("status").stdout


def test_an_untried_kernel_never_becomes_the_fallback(device: Device) -> None:
    """Installing again before the new kernel booted: the fallback stays the one known good."""
    install_confirmed(device, NEW)
    add_kernel(device.root, NEWER)
    assert device.run("install", NEWER).returncode == 0
    (device.root / "boot" / f"initrd.img-{NEWER}").write_bytes(b"regenerated initrd")
    assert device.run("initramfs-updated", NEWER).returncode == 0
    assert_slot_holds(device.parts / "p3", "/previous", NEW, device.root)
    assert device.grubenv()["amberpi_previous"] == NEW
    # Out of tries (GRUB marked it bad): a reinstall still keeps the good one.
    env = device.grubenv()
    assert device.run("rollback").returncode == 0
    assert device.run("reinstall").returncode == 0
    assert_slot_holds(device.parts / "p3", "/previous", NEW, device.root)
    assert device.grubenv() == {**env, "amberpi_state": "new"}


def test_a_reinstalled_good_kernel_keeps_its_good_copy(device: Device) -> None:
    """A regenerated initrd that turns out broken: the copy that booted fine is the fallback."""
    install_confirmed(device, NEW)
    good_initrd = (device.root / "boot" / f"initrd.img-{NEW}").read_bytes()
    (device.root / "boot" / f"initrd.img-{NEW}").write_bytes(b"broken initrd")
    assert device.run("initramfs-updated", NEW).returncode == 0
    p3 = device.parts / "p3"
    assert read_iso_file(p3, "/initrd.img") == b"broken initrd"
    assert read_iso_file(p3, "/previous/initrd.img") == good_initrd
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": NEW, "amberpi_previous": NEW}


def test_no_fallback_when_there_is_no_room_for_two(device: Device) -> None:
    install_confirmed(device, NEW)
    (device.root / "boot" / f"initrd.img-{NEW}").write_bytes(os.urandom(5 << 20))
    assert device.run("reinstall").returncode == 0 and device.run("confirm", cmdline=device.trial_cmdline()).returncode == 0
    add_kernel(device.root, NEWER)
    (device.root / "boot" / f"initrd.img-{NEWER}").write_bytes(os.urandom(5 << 20))
    result = device.run("install", NEWER)
    assert result.returncode == 0, result.stderr
    assert f"no room to keep kernel {NEW} as the fallback" in result.stdout
    assert "/previous/version" not in list_iso(device.parts / "p3")
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": NEWER}


def test_no_fallback_when_the_work_folder_is_short_of_room(device: Device, tmp_path: Path) -> None:
    """Staging two kernels needs twice the room: with room for one, the install goes ahead without a fallback."""
    install_confirmed(device, NEW)
    (device.root / "boot" / f"initrd.img-{NEW}").write_bytes(os.urandom(3 << 20))
    assert device.run("reinstall").returncode == 0 and device.run("confirm", cmdline=device.trial_cmdline()).returncode == 0
    add_kernel(device.root, NEWER)
    # df reports 2 MiB free: enough for NEWER's few KiB plus the margin, not for NEW's 3 MiB copy as well.
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    df = fake_bin / "df"
    df.write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\necho 'work 4096 2048 2048 50% /'\n")
    df.chmod(0o755)
    device.env["PATH"] = f"{fake_bin}:{device.env['PATH']}"
    result = device.run("install", NEWER)
    assert result.returncode == 0, result.stderr
    assert f"no room in {device.env['AMBERPI_WORK_DIR']} to keep kernel {NEW} as the fallback as well" in result.stdout
    assert "/previous/version" not in list_iso(device.parts / "p3")
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": NEWER}
    # With less room than one kernel needs, nothing changes and the reason is given.
    df.write_text(df.read_text().replace("2048 50%", "512 50%"))
    before = device.p3_digest()
    result = device.run("install", NEWER)
    assert result.returncode == 3 and "MiB free in" in result.stderr
    assert device.p3_digest() == before


def test_a_damaged_partition_keeps_no_fallback(device: Device) -> None:
    """A fallback that cannot be read back intact is dropped: the install still succeeds."""
    install_confirmed(device, NEW)
    add_kernel(device.root, NEWER)
    assert device.run("install", NEWER).returncode == 0
    with (device.parts / "p3").open("r+b") as handle:
        handle.write(os.urandom(1 << 20))
    result = device.run("reinstall")
    assert result.returncode == 0, result.stderr
    assert "the fallback" not in result.stdout
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": NEWER}


def test_rollback_prefers_the_fallback_kernel(device: Device) -> None:
    install_confirmed(device, NEW)
    add_kernel(device.root, NEWER)
    assert device.run("install", NEWER).returncode == 0
    result = device.run("rollback")
    assert result.returncode == 0 and f"the previous kernel {NEW} boots from now on" in result.stdout
    assert f"rolled back by hand; the previous kernel {NEW} boots" in device.run("status").stdout
    result = device.run("rollback", "--factory")
    assert result.returncode == 0 and f"the factory kernel {FACTORY} boots from now on" in result.stdout
    assert "amberpi_previous" not in device.grubenv()
    assert device.run("rollback", "--sideways").returncode == 2


def test_rollback_and_status(device: Device) -> None:
    add_kernel(device.root, NEW)
    assert device.run("install").returncode == 0
    result = device.run("rollback")
    assert result.returncode == 0 and f"the factory kernel {FACTORY} boots from now on" in result.stdout
    status = device.run("status").stdout
    assert f"kernel partition:  {NEW} (state: rolled-back)" in status
    assert "rolled back by hand" in status


def test_status_explains_missing_modules(device: Device) -> None:
    add_kernel(device.root, NEW)
    assert device.run("install").returncode == 0
    shutil.rmtree(device.root / "usr/lib/modules" / NEW)
    status = device.run("status").stdout
    assert f"the modules of {NEW} are not on the persistence partition" in status


def test_initramfs_update_keeps_the_partition_in_step(device: Device) -> None:
    add_kernel(device.root, NEW)
    assert device.run("install").returncode == 0
    (device.root / "boot" / f"initrd.img-{NEW}").write_bytes(b"regenerated initrd")
    result = device.run("initramfs-updated", NEW)
    assert result.returncode == 0 and "rewriting the kernel partition" in result.stdout
    assert read_iso_file(device.parts / "p3", "/initrd.img") == b"regenerated initrd"
    before = device.p3_digest()
    assert device.run("initramfs-updated", FACTORY).returncode == 0
    assert device.p3_digest() == before, "another kernel's initrd leaves the partition alone"


def test_usage(device: Device) -> None:
    result = device.run("frobnicate")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_a_new_initrd_for_the_factory_kernel_goes_on_trial(device: Device) -> None:
    """update-initramfs on a fresh device (any udev or live-boot upgrade): no write of p3 skips the trial."""
    (device.root / "boot" / f"initrd.img-{FACTORY}").write_bytes(b"regenerated factory initrd")
    result = device.run("initramfs-updated", FACTORY)
    assert result.returncode == 0, result.stderr
    assert read_iso_file(device.parts / "p3", "/initrd.img") == b"regenerated factory initrd"
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": FACTORY}


@pytest.mark.parametrize("second", [NEWER, NEW], ids=["another-version", "same-version"])
def test_confirm_keeps_only_the_write_that_booted(device: Device, second: str) -> None:
    """Install A, boot it on trial, install B before the confirm unit runs: B has not booted and stays on trial."""
    add_kernel(device.root, NEW)
    assert device.run("install", NEW).returncode == 0
    booted = device.trial_cmdline()
    add_kernel(device.root, second)
    (device.root / "boot" / f"initrd.img-{second}").write_bytes(b"written after the trial boot")
    assert device.run("install", second).returncode == 0
    result = device.run("confirm", cmdline=booted)
    assert result.returncode == 0 and "nothing to confirm" in result.stdout, result
    assert device.grubenv() == {"amberpi_state": "new", "amberpi_version": second}
    assert "booted fine" in device.run("confirm", cmdline=device.trial_cmdline()).stdout


@pytest.mark.parametrize("state", ["good", "bad", "rolled-back", "writing"])
def test_confirm_approves_nothing_but_a_kernel_on_trial(device: Device, state: str) -> None:
    add_kernel(device.root, NEW)
    assert device.run("install", NEW).returncode == 0
    booted = device.trial_cmdline()
    subprocess.run(
        [*device.shell, "-c", f'. "$AMBERPI_LIB"; env_set amberpi_state={state}'],
        env={**device.env, "AMBERPI_LIB": str(LIB), "AMBERPI_MEDIUM_DIR": device.env["AMBERPI_MEDIUM_DIR"]},
        check=True,
    )
    assert "nothing to confirm" in device.run("confirm", cmdline=booted).stdout
    assert device.grubenv()["amberpi_state"] == state


def test_writers_wait_for_the_lock_and_give_up_changing_nothing(device: Device) -> None:
    """apt, a hand-run reinstall and the boot's confirm take turns on grubenv and p3."""
    add_kernel(device.root, NEW)
    lock = Path(device.env["AMBERPI_RUN_DIR"]) / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another writer, mid-run
        before = device.p3_digest(), device.grubenv()
        device.env["AMBERPI_LOCK_WAIT"] = "1"
        for command in (["install", NEW], ["rollback"], ["initramfs-updated", FACTORY]):
            result = device.run(*command)
            assert result.returncode == 1 and "another amberpi tool has held" in result.stderr, (command, result)
        assert (device.p3_digest(), device.grubenv()) == before
    assert device.run("install", NEW).returncode == 0


def test_parallel_installs_leave_grubenv_and_p3_in_step(device: Device) -> None:
    add_kernel(device.root, NEW)
    add_kernel(device.root, NEWER)
    Path(device.env["AMBERPI_CMDLINE_FILE"]).write_text("boot=live amberpi.id=1a2b3c4d amberpi.kernel=current\n")
    runs = [
        subprocess.Popen([*device.shell, str(SCRIPT), "install", version], env=device.env, stdout=subprocess.DEVNULL)
        for version in (NEW, NEWER)
    ]
    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    held = device.grubenv()["amberpi_version"]  # grubenv() also checks the identity names p3's write
    assert read_iso_file(device.parts / "p3", "/version").decode() == held + "\n"


def test_stale_staging_from_a_cut_run_is_cleared(device: Device) -> None:
    """A power cut during staging left a folder on p4; it must not make every later install refuse."""
    add_kernel(device.root, NEW)
    stale = Path(device.env["AMBERPI_WORK_DIR"]) / "amberpi-kernel.Xy12ab"
    (stale / "stage").mkdir(parents=True)
    (stale / "kernel.iso").write_bytes(b"half an image")
    result = device.run("install", NEW)
    assert result.returncode == 0, result.stderr
    assert f"removed {stale}" in result.stdout and not stale.exists()


def test_a_kernel_that_does_not_bring_up_the_named_units_is_not_kept(device: Device, tmp_path: Path) -> None:
    """Multi-user is not enough: without its network driver a headless device would be out of reach for good."""
    add_kernel(device.root, NEW)
    assert device.run("install", NEW).returncode == 0
    Path(device.env["AMBERPI_CONFIRM_CONF"]).write_text('units="network-online.target ssh.service"\nseconds=2\ndegraded_ok=no\n')
    units = Path(device.env["AMBERPI_FAKE_UNITS"])
    (units / "ssh.service").write_text("activating")
    (units / "systemd-networkd-wait-online.service").write_text("failed")
    result = device.run("confirm", cmdline=device.trial_cmdline())
    assert result.returncode == 0
    assert f"kernel {NEW} is not confirmed: ssh.service is activating, failed units: systemd-networkd-wait-online.service" in result.stdout
    assert "Rebooting: GRUB counts this try" in result.stdout
    assert (units / ".calls").read_text() == "reboot\n"
    assert device.grubenv()["amberpi_state"] == "new"
    # degraded_ok keeps a kernel despite a failed unit, once the named units are up.
    (units / "ssh.service").write_text("active")
    Path(device.env["AMBERPI_CONFIRM_CONF"]).write_text('units="ssh.service"\nseconds=2\ndegraded_ok=yes\n')
    assert "booted fine" in device.run("confirm", cmdline=device.trial_cmdline()).stdout
    assert device.grubenv()["amberpi_state"] == "good"


def test_confirm_waits_for_units_still_starting(device: Device) -> None:
    add_kernel(device.root, NEW)
    assert device.run("install", NEW).returncode == 0
    Path(device.env["AMBERPI_CONFIRM_CONF"]).write_text('units="ssh.service"\nseconds=30\n')
    units = Path(device.env["AMBERPI_FAKE_UNITS"])
    (units / "ssh.service").write_text("activating")
    Path(device.env["AMBERPI_CMDLINE_FILE"]).write_text(device.trial_cmdline() + "\n")
    confirm = subprocess.Popen(
        [*device.shell, str(SCRIPT), "confirm"],
        env={**device.env, "AMBERPI_CONFIRM_POLL": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    assert confirm.poll() is None, "still waiting for ssh.service"
    (units / "ssh.service").write_text("active")
    output, _ = confirm.communicate(timeout=60)
    assert confirm.returncode == 0 and "booted fine" in output, output
    assert device.grubenv()["amberpi_state"] == "good"
