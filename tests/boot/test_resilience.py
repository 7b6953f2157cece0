"""End to end: the resilience profile on one device, boot after boot, under QEMU.

One image (readonly by default, persistent as the maintenance mode), one disk grown
by 2 GiB as a larger card would be, a second small disk standing in for a USB stick.
The steps run in order, each from the state the one before left, and every boot is
made to count (booting under TCG takes minutes):

  1. first boot, the GPIO jumper set: maintenance mode; p4 grown; zram, watchdog, RAM
     paths and the journal cap; a backup to the stick; a reset staged; the halt button
  2. persistent (amberpi-mode set): the reset applied; a restore staged from the stick
  3. persistent: the data back; the grow a no-op; toram chosen with --once
  4. toram: the disk removed from the running machine, the system carries on
  5. readonly (a marker file on p1): writes, a package, a full /tmp; the image unchanged
  6. readonly again: the writes gone; a kernel panic brings the machine back by itself
  7. boot 7 after the panic; then a damaged persistence partition boots readonly
  8. only the listed paths kept (persistence.conf custom mounts); the mode typed on the
     kernel command line, then picked from GRUB's menu
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from amberpi.filesystems.ext4 import make_ext4
from amberpi.render import render
from amberpi.stages.bootfs import MODE_HOTKEYS
from tests.conftest import EPOCH, TEST_PASSWORD, BuiltImage, amberpi, write_test_config
from tests.imagetools import SECTOR, partition_range, partition_table, sha256_file, sha256_range
from tests.measurements import record
from tests.samples import device_profile
from tests.vm import VM, grub_append_to_cmdline, grub_press

pytestmark = pytest.mark.boot

GROWN_BY = 2 << 30
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
# PL061's line 3 is QEMU's power button (pulsed high by `system_powerdown`); its other
# lines read low. The jumper on line 4, active low, is "set".
JUMPER = "amberpi.jumper=gpiochip0:4:active-low:persistent"
TOKEN = "kept-by-amberpi-resilience-test"


@pytest.fixture(scope="session")
def resilience_image(tmp_path_factory: pytest.TempPathFactory, qemu_image: BuiltImage) -> BuiltImage:
    """The qemu board, readonly by default, with the halt button on QEMU's power-button line.

    qemu has no GPIO header, so the build refuses GPIO settings for it: the test image
    gets its profile through includes (never in a release image) and keeps the kernel's
    gpio_keys off that line.
    """
    folder = tmp_path_factory.mktemp("resilience")
    includes = folder / "includes" / "etc" / "amberpi"
    includes.mkdir(parents=True)
    halt = {"default_mode": "readonly", "halt_chip": "gpiochip0", "halt_line": "3", "halt_active": "high"}
    profile = dataclasses.replace(device_profile("qemu"), **halt)
    (includes / "resilience.conf").write_text(render("resilience.conf.j2", profile=profile))
    config = write_test_config(
        folder,
        persistence_size_mib=1024,
        kernel_cmdline="modprobe.blacklist=gpio_keys",
        includes_dirs=[str(folder / "includes")],
        resilience={
            "mode": "readonly",
            "maintenance_mode": "persistent",
            "zram_percent": 25,
            "zram_algorithm": "lz4",
            "journal_max_mib": 4,
            # Long enough for an emulated machine on a busy host: with 30 s, a TCG guest stalled in
            # module loading (RCU stall) was reset by the watchdog in the middle of a boot.
            "watchdog_seconds": 120,
        },
    )
    output = folder / "out"
    started = time.monotonic()
    amberpi("--config", str(config), "--output", str(output), check=True)
    record(f"build of the resilience test image: {time.monotonic() - started:.0f}s")
    import json

    report = json.loads((output / "amberpi-qemu.report.json").read_text())
    return BuiltImage("qemu", output / "amberpi-qemu.img", report, time.monotonic() - started, output)


@dataclass
class Device:
    image: Path
    stick: Path
    logs: Path
    vm: VM | None = None
    boots: int = 0
    stick_attached: bool = True
    notes: list[str] = field(default_factory=list)

    def start(self) -> VM:
        self.boots += 1
        # Behind a root port of its own, after the card's: the card stays vda, the stick is vdb.
        extra = [
            "-device",
            "pcie-root-port,id=rp1,chassis=2,slot=2",
            "-drive",
            f"if=none,id=stick,format=raw,file={self.stick}",
            "-device",
            "virtio-blk-pci,drive=stick,id=vstick,bus=rp1",
        ]
        self.vm = VM(
            self.image,
            console_log=self.logs / f"console-{self.boots:02d}.log",
            machine="virt,acpi=off",
            watchdog=True,
            extra_args=extra if self.stick_attached else [],
        )
        self.vm.start()
        return self.vm

    def login(self) -> VM:
        assert self.vm
        seconds = self.vm.wait_for_login()
        self.vm.login("root", TEST_PASSWORD)
        record(f"resilience boot {self.boots}: login after {seconds:.0f}s, {self.mode()}")
        return self.vm

    def boot(self) -> VM:
        self.start()
        return self.login()

    def mode(self) -> str:
        assert self.vm
        return self.vm.check(". /run/amberpi/mode; echo $MODE $SOURCE $P4_VIEW")

    def power_off(self) -> None:
        assert self.vm
        self.vm.send("systemctl poweroff")
        self.vm.wait_exit()
        self.close()

    def pull_plug(self) -> None:
        assert self.vm
        self.vm.kill()
        self.close()

    def close(self) -> None:
        if self.vm:
            self.vm.close()
        self.vm = None

    def image_id(self) -> str:
        return partition_table(self.image)["id"].removeprefix("0x")

    def p1(self) -> str:
        offset, _ = partition_range(self.image, 1)
        return f"{self.image}@@{offset}"

    def put_on_p1(self, name: str, content: bytes) -> None:
        source = self.logs / "p1-upload"
        source.write_bytes(content)
        subprocess.run(["mcopy", "-o", "-i", self.p1(), str(source), f"::/{name}"], check=True, env=MTOOLS_ENV)

    def read_from_p1(self, name: str) -> bytes:
        return subprocess.run(["mtype", "-i", self.p1(), f"::/{name}"], check=True, capture_output=True, env=MTOOLS_ENV).stdout

    def remove_from_p1(self, name: str) -> None:
        subprocess.run(["mdel", "-i", self.p1(), f"::/{name}"], check=True, env=MTOOLS_ENV)

    def p4_clean(self) -> bool:
        """p4's ext4 needs no journal replay (RECOVER, 0x4 of s_feature_incompat) and is marked valid."""
        offset, _ = partition_range(self.image, 4)
        with self.image.open("rb") as handle:
            handle.seek(offset + 1024)
            superblock = handle.read(1024)
        incompat = int.from_bytes(superblock[0x60:0x64], "little")
        state = int.from_bytes(superblock[0x3A:0x3C], "little")
        return not incompat & 0x4 and bool(state & 0x1)

    def partition_hashes(self, numbers: tuple[int, ...] = (1, 2, 3)) -> dict[int, str]:
        return {n: sha256_range(self.image, *partition_range(self.image, n)) for n in numbers}


@pytest.fixture(scope="module")
def device(resilience_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    folder = tmp_path_factory.mktemp("resilience-device")
    image = folder / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(resilience_image.path), str(image)], check=True)
    with image.open("r+b") as handle:
        handle.truncate(image.stat().st_size + GROWN_BY)
    stick = folder / "stick.img"
    stick_tree = folder / "stick"
    stick_tree.mkdir()
    make_ext4(stick_tree, stick, size_mib=256, label="usbstick", fs_uuid="5a1e5a1e-0000-4000-8000-000000000001", epoch=EPOCH)
    logs = resilience_image.output / "resilience-logs"
    logs.mkdir(exist_ok=True)
    dev = Device(image, stick, logs)
    yield dev
    dev.close()


def test_1_first_boot_jumper_grow_zram_watchdog_logs_backup_halt(device: Device) -> None:
    before = device.partition_hashes()
    table_before = partition_table(device.image)["partitions"]
    # The jumper is set for this boot only: its argument goes into grub.cfg on p1.
    grub_cfg = device.read_from_p1("grub/grub.cfg").decode()
    device.put_on_p1("grub/grub.cfg", grub_cfg.replace('set amberpi_args="', f'set amberpi_args="{JUMPER} ', 1).encode())
    vm = device.boot()
    assert device.mode() == "persistent jumper rw", "the jumper switches a readonly image to its maintenance mode"
    assert "jumper" in vm.check("amberpi-mode status")

    # First boot grew p4 to the end of the (larger) card, online, and its ext4 with it.
    table = partition_table(device.image)["partitions"]
    disk_sectors = device.image.stat().st_size // SECTOR
    vm.check("systemctl is-active amberpi-grow-persistence.service || systemctl start amberpi-grow-persistence.service", timeout=300)
    size_kib = int(vm.check("df -k --output=size /run/live/persistence/vda4 | tail -n 1"))
    assert size_kib > (1024 + 1800) * 1024, f"ext4 of p4 is {size_kib} KiB"
    device.notes.append(f"p4 after the grow: {size_kib} KiB")

    # zram, the watchdog, the RAM paths and the journal's cap.
    swaps = vm.check("swapon --show=NAME,TYPE,SIZE --bytes --noheadings")
    name, kind, size = swaps.split()[:3]
    assert name == "/dev/zram0" and kind == "partition"
    ram = int(vm.check("awk '/^MemTotal:/ { print $2 * 1024 }' /proc/meminfo"))
    assert abs(int(size) - ram // 4) < 4 << 20, f"25 % of the {ram} bytes of RAM the kernel sees, got {size}"
    assert "[lz4]" in vm.check("cat /sys/block/zram0/comp_algorithm")
    assert vm.check("systemctl show -p RuntimeWatchdogUSec --value") == "2min"
    watchdog = vm.check("wdctl /dev/watchdog0 2>&1 || true")
    assert "i6300ESB" in watchdog, watchdog
    for path in ("/var/log", "/var/tmp", "/tmp"):
        assert vm.check(f"findmnt -n -o FSTYPE --target {path}") == "tmpfs", path
    # Twice the cap of incompressible lines (the journal compresses what it can).
    vm.check("head -c 6000000 /dev/urandom | base64 -w 200 | systemd-cat -t amberpi-spam", timeout=600)
    usage = int(vm.check("du -s -k /run/log/journal | cut -f1"))
    assert usage <= 4 * 1024 + 512, f"the journal's cap is 4 MiB, it holds {usage} KiB"

    # A backup on the stick, then a reset staged for the next boot.
    vm.check(f"echo {TOKEN} > /root/keep.txt && sync")
    vm.check("mkdir -p /mnt/stick && mount /dev/vdb /mnt/stick")
    vm.check("amberpi-persistence backup /mnt/stick/backup.tar.zst", timeout=600)
    vm.check("umount /mnt/stick")
    vm.check("amberpi-persistence reset --yes")
    vm.check("amberpi-mode set persistent")
    vm.check("sync")

    # The halt button: QEMU pulses the power-button line; with gpio_keys kept off it and no
    # ACPI, only AmberPi's service can turn that into a shutdown, and it must be a clean one.
    assert vm.check("systemctl is-active amberpi-halt-button.service") == "active"
    vm.monitor("system_powerdown")
    vm.wait_exit(timeout=600)
    console = (device.logs / f"console-{device.boots:02d}.log").read_text(errors="replace")
    assert "reboot: Power down" in console, console[-3000:]
    device.close()
    device.put_on_p1("grub/grub.cfg", grub_cfg.encode())
    after = device.partition_hashes()
    assert after[2] == before[2] and after[3] == before[3], "p2 and p3 are never written"
    grown = partition_table(device.image)["partitions"]
    assert [p["start"] for p in grown] == [p["start"] for p in table_before], "no partition moved"
    assert [p["size"] for p in grown[:3]] == [p["size"] for p in table_before[:3]]
    assert grown[3]["start"] + grown[3]["size"] == disk_sectors, "p4 ends where the card ends"
    device.notes.append(f"table before {table} after {grown}")


def test_2_reset_applied_then_restore_staged(device: Device) -> None:
    vm = device.boot()
    assert device.mode() == "persistent device rw"
    assert vm.run("test -e /root/keep.txt")[0] != 0, "the reset took the data away"
    vm.check("mkdir -p /mnt/stick && mount -o ro /dev/vdb /mnt/stick")
    vm.check("amberpi-persistence restore /mnt/stick/backup.tar.zst", timeout=600)
    vm.check("umount /mnt/stick")
    vm.send("systemctl reboot")


def test_3_restore_applied_grow_is_a_no_op_then_toram_once(device: Device) -> None:
    assert device.vm
    table = partition_table(device.image)["partitions"]
    vm = device.login()
    assert vm.check("cat /root/keep.txt") == TOKEN, "the restore brought the data back"
    status = vm.check("amberpi-persistence status")
    device.notes.append(status)
    vm.check("amberpi-mode set toram --once")
    device.power_off()
    assert partition_table(device.image)["partitions"] == table, "the second boot grew nothing"
    assert device.p4_clean(), "a clean shutdown leaves p4's journal finished (readonly boots can then show it)"


def test_4_toram_keeps_running_without_its_disk(device: Device) -> None:
    device.stick_attached = False
    vm = device.boot()
    assert device.mode() == "toram once none"
    # A kernel update refuses: its modules would live in RAM only.
    fake = "9.9.9-test"
    vm.check(f"mkdir -p /usr/lib/modules/{fake} && : > /boot/vmlinuz-{fake} && : > /boot/initrd.img-{fake}")
    refusal = vm.run(f"amberpi-kernel install {fake}")
    assert refusal[0] == 3 and "it runs in toram mode: the whole system lives in RAM" in refusal[1], refusal
    # The image's settings are there although the medium in RAM holds only live/ (the initramfs kept .disk/).
    refusal = vm.run(f"amberpi-kernel install {vm.check('uname -r')}")
    assert refusal[0] == 3 and "this boot runs in toram mode, which writes nothing to the card" in refusal[1], refusal
    # amberpi-mode writes grubenv at the offset recorded in .disk/amberpi.conf (the device setting made earlier, again).
    assert "from the next boot on, the device runs in persistent mode" in vm.check("amberpi-mode set persistent")
    answer = vm.monitor("device_del vdisk0")
    assert "Error" not in answer, answer
    # PCIe hot-unplug: the guest's pciehp takes the device away after its attention delay.
    deadline = time.monotonic() + 120
    while vm.run("test -b /dev/vda")[0] == 0 and time.monotonic() < deadline:
        time.sleep(5)
    assert vm.run("test -b /dev/vda")[0] != 0, "the disk is gone from the running system"
    assert vm.check("echo still-running > /root/in-ram && cat /root/in-ram") == "still-running"
    assert vm.check("ls /usr/bin | wc -l").isdigit()
    assert vm.check("systemctl is-system-running || true") in ("running", "degraded")
    device.pull_plug()
    assert device.read_from_p1("grub/grubenv").decode().count("amberpi_mode_once=\n") == 1, "GRUB used up the once-choice"


def test_5_readonly_writes_nothing_to_the_card(device: Device) -> None:
    device.put_on_p1("amberpi-readonly.txt", b"")
    before = sha256_file(device.image)
    vm = device.boot()
    assert device.mode() == "readonly marker ro"
    assert vm.check("cat /root/keep.txt") == TOKEN, "readonly shows what the persistent boots kept"
    vm.check("echo gone-after-reboot > /root/ephemeral.txt && mkdir -p /srv/x && cp -a /etc /srv/x/ && sync")
    control = "Package: amberpi-test\\nVersion: 1\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: t\\n"
    vm.check("mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/amberpi-test && echo hi > /tmp/pkg/usr/share/amberpi-test/hi")
    vm.check(f"printf '{control}' > /tmp/pkg/DEBIAN/control")
    vm.check("dpkg-deb --build /tmp/pkg /root/amberpi-test.deb && dpkg -i /root/amberpi-test.deb", timeout=300)
    assert "amberpi-test" in vm.check("dpkg -l amberpi-test | tail -n 1")
    # Filled at once: tmpfs allocates the pages, nothing is copied through the emulated CPU.
    vm.run("fallocate -l $(df --output=avail -B1 /tmp | tail -n 1) /tmp/fill; sync", timeout=600)
    assert vm.check("df --output=avail /tmp | tail -n 1").strip() == "0"
    fake = "9.9.9-test"
    vm.check(f"mkdir -p /usr/lib/modules/{fake} && : > /boot/vmlinuz-{fake} && : > /boot/initrd.img-{fake}")
    refusal = vm.run(f"amberpi-kernel install {fake}")
    assert refusal[0] == 3 and "amberpi-mode set persistent --once" in refusal[1], refusal
    device.power_off()
    assert sha256_file(device.image) == before, "a readonly session leaves every byte of the card as it was"


def test_6_readonly_starts_pristine_and_a_panic_reboots_by_itself(device: Device) -> None:
    vm = device.boot()
    assert device.mode() == "readonly marker ro"
    assert vm.run("test -e /root/ephemeral.txt || dpkg -l amberpi-test")[0] != 0, "the readonly session's writes are gone"
    assert vm.check("cat /root/keep.txt") == TOKEN
    started = time.monotonic()
    vm.send("echo c > /proc/sysrq-trigger")
    vm.expect("Kernel panic", timeout=120)
    device.login()
    record(f"resilience: back to a login {time.monotonic() - started:.0f}s after a kernel panic, no keypress")


def test_7_damaged_persistence_boots_readonly_and_says_why(device: Device) -> None:
    device.power_off()
    device.remove_from_p1("amberpi-readonly.txt")
    offset, _ = partition_range(device.image, 4)
    with device.image.open("r+b") as handle:
        handle.seek(offset + 1024)
        handle.write(bytes(1024))
    vm = device.boot()
    mode, source, view = device.mode().split()
    assert (mode, view) == ("readonly", "none"), "persistent (the device's setting) was downgraded"
    status = vm.check("amberpi-persistence status")
    assert "damaged" in status, status
    assert "damaged" in vm.check("journalctl -b -o cat | grep -i amberpi | head -n 20")
    device.power_off()


def test_8_chosen_paths_persist_the_rest_lives_in_ram(device: Device, tmp_path: Path) -> None:
    """live-boot's custom mounts: only the listed folders are kept (resilience.persistent_paths).

    The build writes persistence.conf from the config (tests/unit); here p4 is made afresh
    with such a file, as a reset to a paths-only profile would leave it. The two boots also
    choose their mode the two ways a person at the console can: typing amberpi.mode= on the
    kernel command line, and picking a menu entry.
    """
    offset, length = partition_range(device.image, 4)
    tree = tmp_path / "p4"
    tree.mkdir()
    (tree / "persistence.conf").write_text("/home union\n/srv union\n")
    fresh = tmp_path / "p4.img"
    label = f"amberpi-{device.image_id()}"
    make_ext4(tree, fresh, size_mib=length >> 20, label=label, fs_uuid="0c0ffee0-0000-4000-8000-000000000008", epoch=EPOCH)
    with device.image.open("r+b") as handle, fresh.open("rb") as source:
        handle.seek(offset)
        while chunk := source.read(4 << 20):
            handle.write(chunk)

    vm = device.start()
    grub_append_to_cmdline(vm, "amberpi.mode=toram-persistent")
    device.login()
    assert device.mode() == "toram-persistent cmdline rw"
    vm.check("mkdir -p /home/user && echo kept > /home/user/kept && echo kept > /srv/kept")
    vm.check("echo lost > /root/lost && echo lost > /etc/amberpi-lost && sync")
    vm.send("systemctl reboot")
    grub_press(vm, MODE_HOTKEYS["persistent"])
    device.login()
    assert device.mode() == "persistent menu rw"
    assert vm.check("cat /home/user/kept /srv/kept") == "kept\nkept"
    assert vm.run("cat /root/lost")[0] != 0 and vm.run("cat /etc/amberpi-lost")[0] != 0, "outside the listed paths, nothing is kept"
    assert vm.check("findmnt -n -o FSTYPE /") == "overlay"
    device.power_off()
