"""Where a boot's time goes, read off the console: the line that ends each phase, in boot order.

For bench/boot.py and the raspi3b test. A phase whose line never shows (a quiet kernel,
another bootloader) is merged into the next one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tests.vm import LOGIN_PROMPT, VM

# systemd's first line, coloured: "Welcome to \e[0m\e[1mDebian GNU/Linux...".
SYSTEMD_WELCOME = r"Welcome to (\x1b\[[0-9;]*m)*Debian"


@dataclass(frozen=True)
class Phase:
    name: str
    meaning: str
    ends_with: str  # a regular expression for the console line that ends it


# -M virt: AAVMF's UEFI, GRUB from p1, the kernel and initrd from p3.
VIRT_PHASES = (
    Phase("firmware", "UEFI to GRUB's menu", "will be executed automatically"),
    Phase("grub", "GRUB: menu timeout, checks, loading kernel and initrd", "EFI stub: Booting Linux"),
    Phase("kernel", "kernel to /init", "Run /init as init process"),
    Phase("initramfs", "initramfs and live-boot (media, squashfs, overlay)", SYSTEMD_WELCOME),
    Phase("systemd", "systemd to the login prompt", LOGIN_PROMPT),
)

# -M raspi3b: U-Boot from p1 (QEMU skips the VideoCore firmware), GRUB through U-Boot's EFI.
RASPI3B_PHASES = (
    Phase("u-boot", "U-Boot: start, autoboot delay, finding the card's EFI loader", "Booting: mmc 0"),
    Phase("grub-load", "U-Boot loading GRUB; GRUB checking the kernel partition", "GNU GRUB"),
    Phase("grub", "GRUB: menu timeout, loading kernel and initrd through U-Boot", "EFI stub: Booting Linux"),
    Phase("kernel", "kernel to /init", "Run /init as init process"),
    Phase("initramfs", "initramfs and live-boot (media, squashfs, overlay)", SYSTEMD_WELCOME),
    Phase("systemd", "systemd to the login prompt", LOGIN_PROMPT),
)


def time_phases(vm: VM, phases: tuple[Phase, ...], timeout: float, stop_at: tuple[str, ...] = ()) -> tuple[dict[str, float], str | None]:
    """Seconds per phase, from now to the login prompt; or, when a stop_at pattern shows first
    (a kernel oops), the phases so far and that pattern."""
    started = last = time.monotonic()
    seconds: dict[str, float] = {}
    remaining = list(range(len(phases)))
    while remaining:
        patterns = [phases[i].ends_with for i in remaining] + list(stop_at)
        index = vm.expect(patterns, timeout=timeout - (time.monotonic() - started))
        if index >= len(remaining):
            return seconds, stop_at[index - len(remaining)]
        phase = remaining[index]
        now = time.monotonic()
        seconds[phases[phase].name] = round(now - last, 1)
        last = now
        remaining = [i for i in remaining if i > phase]
    return seconds, None
