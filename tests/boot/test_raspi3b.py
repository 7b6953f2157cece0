"""The pi3 image's own boot chain under `qemu-system-aarch64 -M raspi3b`.

QEMU does not run the VideoCore firmware (bootcode.bin, start.elf, config.txt), so
the test hands QEMU the U-Boot and device tree that image's p1 carries, as the
firmware would; from there it is the image's own chain: U-Boot's EFI boot of GRUB
from p1, GRUB's kernel from p3, live-boot's system from p2 and persistence on p4,
all on the SD card (mmcblk0), and a login on the mini-UART (ttyS1). One boot: the
fallback from a bad kernel partition to the factory kernel is the same grub.cfg
logic, and the kernel-update tests prove it on -M virt (a second boot here costs
about three minutes of the suite's budget).

Under QEMU the machine resets as soon as systemd starts the Pi's watchdog
(bcm2835_wdt; QEMU's power-management model seems to reset at once rather than
count down), so the test copy's grub.cfg also tells the kernel not to load it; a
real Pi's watchdog is what only hardware proves.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_PASSWORD, BuiltImage
from tests.imagetools import partition_range
from tests.measurements import record
from tests.vm import LOGIN_PROMPT, RaspiVM

pytestmark = pytest.mark.boot


def copy_from_p1(image: Path, name: str, target: Path) -> Path:
    offset, _ = partition_range(image, 1)
    subprocess.run(["mcopy", "-n", "-i", f"{image}@@{offset}", f"::{name}", str(target)], check=True)
    return target


def without_the_pi_watchdog(card: Path, folder: Path) -> None:
    """Every entry of the card's GRUB menu passes modprobe.blacklist=bcm2835_wdt (see above)."""
    grub_cfg = copy_from_p1(card, "grub/grub.cfg", folder / "grub.cfg")
    text = grub_cfg.read_text()
    assert text.count(" quickusbmodules") == 1, "the one line of arguments every entry passes"
    grub_cfg.write_text(text.replace(" quickusbmodules", " quickusbmodules modprobe.blacklist=bcm2835_wdt"))
    offset, _ = partition_range(card, 1)
    subprocess.run(["mcopy", "-o", "-i", f"{card}@@{offset}", str(grub_cfg), "::grub/grub.cfg"], check=True)


# QEMU's model of the Pi's SD host sometimes answers too late for the guest's driver under
# TCG; the driver then gives up on a read and its error path dereferences NULL. That
# boot never reaches a login: it is stopped at once and the card booted once more.
SD_HOST_TIMEOUT = "sdhost-bcm2835 [0-9a-f]+.mmc: timeout waiting for hardware interrupt"
OOPS = "Internal error: Oops"


def boot_card(pi3_image: BuiltImage, folder: Path, attempt: int) -> tuple[RaspiVM, float, bool]:
    """A fresh copy of the card booted to its login prompt, or to a kernel oops: returns the VM,
    the seconds from the kernel's start, and whether it oopsed."""
    card = folder / "sd.img"
    subprocess.run(["cp", "--sparse=always", str(pi3_image.path), str(card)], check=True)
    # QEMU's SD card must be a power of two in size: a larger card, as a real one is.
    size = card.stat().st_size
    with card.open("r+b") as handle:
        handle.truncate(1 << (size - 1).bit_length())
    uboot = copy_from_p1(pi3_image.path, "u-boot.bin", folder / "u-boot.bin")
    device_tree = copy_from_p1(pi3_image.path, "bcm2837-rpi-3-b.dtb", folder / "bcm2837-rpi-3-b.dtb")
    without_the_pi_watchdog(card, folder)
    vm = RaspiVM(card, console_log=folder / f"console-{attempt}.log", uboot=uboot, device_tree=device_tree)
    vm.start()
    # U-Boot's banner goes to the other UART before its console moves to this one.
    vm.expect("Hit any key to stop autoboot", 300)
    vm.expect("Booting: mmc 0", 300)
    vm.expect("GNU GRUB", 600)
    vm.expect("efi: EFI v[0-9.]+ by Das U-Boot", 600)  # the kernel names its EFI firmware
    started = time.monotonic()
    oopsed = vm.expect([LOGIN_PROMPT, OOPS], 1800) == 1
    return vm, time.monotonic() - started, oopsed


def test_pi3_image_boots_through_its_own_uboot_and_grub(pi3_image: BuiltImage, tmp_path: Path) -> None:
    vm: RaspiVM | None = None
    try:
        for attempt in (1, 2):
            vm, seconds, oopsed = boot_card(pi3_image, tmp_path, attempt)
            if not oopsed:
                break
            console = (tmp_path / f"console-{attempt}.log").read_text(errors="replace")
            vm.close()
            assert attempt == 1 and re.search(SD_HOST_TIMEOUT, console), f"the kernel oopsed on boot {attempt}:\n{console[-3000:]}"
            record("pi3 image under -M raspi3b: the emulated SD host timed out and the driver oopsed; booted again")
        assert vm
        record(f"pi3 image under -M raspi3b: login after {seconds:.0f}s")
        vm.login("root", TEST_PASSWORD, timeout=300)
        assert "Raspberry Pi 3 Model B" in vm.check("tr -d '\\0' < /proc/device-tree/model")
        cmdline = vm.check("cat /proc/cmdline")
        assert "amberpi.kernel=current" in cmdline and "console=ttyS1,115200" in cmdline, "GRUB booted the kernel on p3"
        # GRUB claims its disk through U-Boot's EFI block writes when they work (amberpi.claim=),
        # else passes the token unwritten; either way the card is the one the initramfs took.
        claimed = "amberpi.claim=" in cmdline
        assert claimed or "amberpi.token=" in cmdline, cmdline
        path = "wrote its claim through U-Boot" if claimed else "could not write grubenv (token path)"
        record(f"pi3 image under -M raspi3b: GRUB {path}")
        assert vm.check("cat /run/amberpi/system-partition") == "/dev/mmcblk0p2"
        assert vm.check("findmnt -n -o SOURCE /run/live/medium") == "/dev/mmcblk0p2"
        assert vm.check("findmnt -n -o SOURCE /run/live/persistence/mmcblk0p4") == "/dev/mmcblk0p4"
        assert vm.check("findmnt -n -o FSTYPE /") == "overlay"
        assert vm.check("cat /proc/sys/kernel/hostname") == "amberpi"
    finally:
        if vm:
            vm.close()
