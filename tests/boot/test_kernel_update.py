"""End to end: kernel updates on the device, power cuts, a broken kernel partition,
a kernel that panics and a reset persistence partition, all booted under QEMU.

The steps share one disk and run in order (each needs the state the one before
left). Booting under TCG takes minutes, so every boot is made to count.
AMBERPI_POWERCUT_ROUNDS (default 1) repeats the three power-cut points.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from amberpi.filesystems.ext4 import make_ext4
from amberpi.identity import ImageIdentity
from amberpi.stages.persistence import PERSISTENCE_ENTRIES
from tests.conftest import EPOCH, TEST_PASSWORD, BuiltImage
from tests.imagetools import partition_range, sha256_range
from tests.kernel_repo import APT_LOCAL, GUEST_HOST, LOCAL_LIST, make_kernel_repo, serve
from tests.measurements import record
from tests.vm import VM

RESET_UUID = ImageIdentity("reset").partition_uuid("persistence")

pytestmark = pytest.mark.boot

POWERCUT_ROUNDS = int(os.environ.get("AMBERPI_POWERCUT_ROUNDS", "1"))


@dataclass
class Device:
    image: Path
    logs: Path
    factory: str
    new: str = ""
    vm: VM | None = None
    boots: int = 0
    notes: list[str] = field(default_factory=list)

    def boot(self) -> VM:
        """Power on and log in; returns the running VM."""
        self.boots += 1
        self.vm = VM(self.image, console_log=self.logs / f"console-{self.boots:02d}.log")
        self.vm.start()
        seconds = self.vm.wait_for_login()
        self.vm.login("root", TEST_PASSWORD)
        self.note(f"boot {self.boots}: login after {seconds:.0f}s on {self.kernel()}", measured=True)
        return self.vm

    def kernel(self) -> tuple[str, str]:
        assert self.vm
        entry = self.vm.check("tr ' ' '\\n' < /proc/cmdline | sed -n 's/^amberpi.kernel=//p'")
        return self.vm.check("uname -r"), entry

    def power_off(self) -> None:
        assert self.vm
        self.vm.send("systemctl poweroff")
        self.vm.wait_exit()
        self.vm.close()
        self.vm = None

    def pull_plug(self) -> None:
        assert self.vm
        self.vm.kill()
        self.vm.close()
        self.vm = None

    def note(self, text: str, measured: bool = False) -> None:
        """Into the device's notes.txt; measured figures also into the run's summary."""
        self.notes.append(text)
        if measured:
            record(f"kernel update: {text}")
        else:
            print(text, file=sys.stderr, flush=True)

    def partition_hash(self, number: int) -> str:
        return sha256_range(self.image, *partition_range(self.image, number))

    def overwrite_partition(self, number: int, data: bytes) -> None:
        offset, _ = partition_range(self.image, number)
        with self.image.open("r+b") as handle:
            handle.seek(offset)
            handle.write(data)


@pytest.fixture(scope="module")
def device(qemu_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    folder = tmp_path_factory.mktemp("kernel-update")
    image = folder / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(qemu_image.path), str(image)], check=True)
    logs = qemu_image.output / "kernel-update-logs"
    logs.mkdir(exist_ok=True)
    dev = Device(image, logs, qemu_image.report["kernel_version"])
    yield dev
    if dev.vm:
        dev.vm.close()
    (logs / "notes.txt").write_text("\n".join(dev.notes) + "\n")


@pytest.fixture(scope="module")
def kernel_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return make_kernel_repo(Path(tmp_path_factory.mktemp("repo")))


def test_1_apt_install_newer_kernel_boots_it(device: Device, kernel_repo: tuple[Path, str]) -> None:
    repo, version = kernel_repo
    device.new = version
    system_before = device.partition_hash(2)
    vm = device.boot()
    assert device.kernel() == (device.factory, "current")
    with serve(repo, device.logs / "kernel-repo.log") as port:
        vm.check(f"echo 'deb [trusted=yes] http://{GUEST_HOST}:{port} ./' > {LOCAL_LIST}")
        vm.check(f"{APT_LOCAL} update", timeout=300)
        started = time.monotonic()
        code, _ = vm.run(f"DEBIAN_FRONTEND=noninteractive {APT_LOCAL} -y install linux-image-arm64 > /root/apt.log 2>&1", timeout=2400)
        seconds = time.monotonic() - started
        output = vm.check("tail -n 25 /root/apt.log; apt-get clean")
        initrds = vm.check(f"grep -c 'Generating /boot/initrd.img-{version}' /root/apt.log || true")
        device.note(f"apt install of {version}: {seconds:.0f}s, exit {code}\n{output}")
        device.note(f"apt install of {version} on the device, to ready to reboot: {seconds:.0f}s, {initrds} initrd made", measured=True)
    assert code == 0, output
    assert f"kernel partition now holds {version}" in output
    steps = re.findall(r"kernel partition now holds .*\[(\d+)s\]", output)
    device.note(f"on-device update step (amberpi-kernel, after apt unpacked the kernel): {' + '.join(steps) or '?'} s", measured=True)
    status = vm.check("amberpi-kernel status")
    assert f"kernel partition:  {version} (state: new" in status
    # The overlay's upper layer is p4 (the image's default 1 GiB): df / reports it.
    device.note(f"p4 after installing kernel {version}: {vm.check('df -P -m / | tail -n 1')}", measured=True)
    device.power_off()
    device.boot()
    assert device.kernel() == (version, "trial")
    device.vm.check("systemctl is-active amberpi-boot-confirm.service || systemctl start amberpi-boot-confirm.service", timeout=300)  # type: ignore[union-attr]
    assert f"kernel partition:  {version} (state: good)" in device.vm.check("amberpi-kernel status")  # type: ignore[union-attr]
    device.power_off()
    assert device.partition_hash(2) == system_before, "the system partition is never written"
    vm = device.boot()
    assert device.kernel() == (version, "current")


@pytest.mark.parametrize("round_number", range(POWERCUT_ROUNDS))
def test_2_power_cut_during_kernel_partition_write(device: Device, round_number: int) -> None:
    """Kill the VM before, during and right after the write: every next boot reaches a login."""
    assert device.new, "needs test_1"
    if device.vm is None:
        device.boot()
    for point, marker in (("before", None), ("middle", "writing kernel"), ("after", "kernel partition now holds")):
        assert device.vm
        device.vm.send("amberpi-kernel reinstall")
        if marker is None:
            time.sleep(0.5)
        else:
            device.vm.expect(marker, timeout=600)
            if point == "middle":
                time.sleep(0.3)
        device.pull_plug()
        device.boot()
        kernel, entry = device.kernel()
        device.note(f"power cut {point} (round {round_number + 1}): next boot reached login on {kernel} ({entry})", measured=True)
        assert kernel in (device.factory, device.new)
        if point == "middle":
            assert (kernel, entry) == (device.factory, "factory"), "a half-written kernel partition is never booted"
        if point == "after":
            assert (kernel, entry) == (device.new, "trial")
    assert device.vm
    device.vm.check("systemctl start amberpi-boot-confirm.service", timeout=300)
    assert "(state: good)" in device.vm.check("amberpi-kernel status")


def test_3_panicking_kernel_falls_back_to_the_previous_good_one(device: Device) -> None:
    """The kernel that booted fine is kept as the fallback; a broken rewrite of it boots that copy."""
    vm = device.vm
    assert vm
    assert f"kernel partition:  {device.new} (state: good)" in vm.check("amberpi-kernel status")
    # Its initrd regenerated into one that cannot be unpacked: every boot of it panics.
    vm.check(f"cp /boot/initrd.img-{device.new} /root/initrd.good")
    vm.check(f"head -c 1048576 /dev/urandom > /boot/initrd.img-{device.new}")
    output = vm.check(f"amberpi-kernel install {device.new}", timeout=900)
    assert f"kernel partition now holds {device.new} (and {device.new}, the fallback)" in output
    vm.send("systemctl reboot")
    # Each try panics and reboots (panic=10); after the tries GRUB picks the fallback.
    vm.expect("Kernel panic", timeout=900)
    vm.expect("Kernel panic", timeout=900)
    vm.wait_for_login()
    vm.login("root", TEST_PASSWORD)
    assert device.kernel() == (device.new, "previous"), "the previous good kernel, not the factory one"
    status = vm.check("amberpi-kernel status")
    assert "did not confirm a good boot" in status and f"the previous kernel {device.new} boots" in status
    device.note(status)


def test_4_garbage_kernel_partition_boots_factory(device: Device) -> None:
    assert device.vm
    device.power_off()
    device.overwrite_partition(3, os.urandom(8 << 20))
    device.boot()
    assert device.kernel() == (device.factory, "factory")


def test_5_persistence_reset_boots_factory_and_explains(device: Device, tmp_path: Path) -> None:
    vm = device.vm
    assert vm
    vm.check(f"cp /root/initrd.good /boot/initrd.img-{device.new}")
    assert "kernel partition now holds" in vm.check(f"amberpi-kernel install {device.new}", timeout=900)
    device.power_off()
    # Recreate p4 empty, as a user resetting persistence would.
    _, length = partition_range(device.image, 4)
    tree = tmp_path / "p4"
    tree.mkdir()
    (tree / "persistence.conf").write_text("\n".join(PERSISTENCE_ENTRIES) + "\n")
    fresh = tmp_path / "p4.img"
    make_ext4(tree, fresh, size_mib=length >> 20, label=ext4_label(device), fs_uuid=RESET_UUID, epoch=EPOCH)
    device.overwrite_partition(4, fresh.read_bytes())
    device.boot()
    assert device.kernel() == (device.factory, "factory")
    status = device.vm.check("amberpi-kernel status")  # type: ignore[union-attr]
    assert f"the modules of {device.new} are not on the persistence partition" in status
    device.note(status)
    device.power_off()


def ext4_label(device: Device) -> str:
    """The current p4 label, read from the ext4 superblock on the image."""
    offset, _ = partition_range(device.image, 4)
    with device.image.open("rb") as handle:
        handle.seek(offset + 1024 + 120)  # ext4 superblock: s_volume_name
        return handle.read(16).rstrip(b"\0").decode()
