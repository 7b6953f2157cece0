#!/usr/bin/env python3
"""Boot-time benchmark: boot a qemu-board image under TCG and show where the time goes.

Run as root with the test environment's Python (it drives the serial console with
pexpect; `python3 tests/run.py --collect-only -q` makes .venv):

    .venv/bin/python bench/boot.py                        # the test image (built, or cached), 3 boots
    .venv/bin/python bench/boot.py --image X.img --password PW --boots 5
    .venv/bin/python bench/boot.py --as-shipped           # without the tests' init_on_alloc=0

The test image boots as the tests boot it: with init_on_alloc=0, which spares TCG the
kernel's zeroing of every page it allocates (tests/conftest.py says why); --as-shipped
builds it with the kernel command line a released image has.

Each boot runs on its own sparse copy of the image, so every one is a first boot (SSH
host keys, p4 growth: what a freshly flashed card does) unless --keep-state carries the
disk over, which gives ordinary later boots. The console is timestamped at each phase
(UEFI to the GRUB menu, GRUB to the kernel, the kernel to /init, the initramfs and
live-boot, systemd to the login prompt); after the login the guest's own systemd-analyze
time, blame and critical-chain are recorded. The table goes to stdout, the details to
WORK/boot.json. Nothing is asserted: the target (median boot to login) is read off it.
QEMU runs alone: another emulated job beside it doubles the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.buildtools import build_test_image  # noqa: E402
from tests.conftest import TEST_PASSWORD  # noqa: E402
from tests.vm import VM, VMError, grub_append_to_cmdline  # noqa: E402

# Console lines that end each phase, in boot order. A phase whose line never shows
# (quiet kernels, another bootloader) is merged into the next one.
PHASES = (
    ("firmware", "UEFI to GRUB's menu", "will be executed automatically"),
    ("grub", "GRUB: menu timeout, checks, loading kernel and initrd", "EFI stub: Booting Linux"),
    ("kernel", "kernel to /init", r"Run /init as init process"),
    ("initramfs", "initramfs and live-boot (media, squashfs, overlay)", r"Welcome to Debian"),
    ("systemd", "systemd to the login prompt", r"login: "),
)


@dataclass
class Boot:
    number: int
    seconds_to_login: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    analyze: str = ""
    blame: str = ""
    critical_chain: str = ""
    note: str = ""


def say(message: str) -> None:
    print(f"bench-boot: {message}", file=sys.stderr, flush=True)


def sparse_copy(image: Path, target: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(image), str(target)], check=True)
    return target


def boot_once(number: int, disk: Path, args: argparse.Namespace, logs: Path) -> Boot:
    record = Boot(number)
    vm = VM(disk, console_log=logs / f"boot-{number}.log", extra_args=["-device", "virtio-rng-pci"] if args.rng else [])
    started = time.monotonic()
    last = started
    timeout: float = args.timeout
    patterns = [pattern for _, _, pattern in PHASES]
    try:
        vm.start()
        remaining = list(range(len(PHASES)))
        if args.cmdline:
            # Typed into GRUB's editor: the grub phase includes the typing (a few seconds).
            grub_append_to_cmdline(vm, args.cmdline, timeout)
            now = time.monotonic()
            record.phases["firmware"] = round(now - last, 1)
            last = now
            remaining = remaining[1:]
        while remaining:
            index = vm.expect([patterns[i] for i in remaining], timeout=timeout - (time.monotonic() - started))
            phase = remaining[index]
            now = time.monotonic()
            record.phases[PHASES[phase][0]] = round(now - last, 1)
            last = now
            remaining = [i for i in remaining if i > phase]
        record.seconds_to_login = round(last - started, 1)
        vm.login("root", args.password)
        record.analyze = vm.check("systemd-analyze time || true")
        record.blame = vm.check("systemd-analyze blame --no-pager | head -n 15 || true")
        record.critical_chain = vm.check("systemd-analyze critical-chain --no-pager || true")
        vm.check("systemctl poweroff --no-block")
        vm.wait_exit(timeout=300)
    except VMError as error:
        record.note = str(error).splitlines()[0]
    finally:
        vm.close()
    return record


def print_table(boots: list[Boot]) -> None:
    names = [name for name, _, _ in PHASES]
    print(f"{'boot':<6}{'to login':>10}" + "".join(f"{name:>11}" for name in names) + "  note")
    print("-" * (16 + 11 * len(names) + 6))
    for boot in boots:
        total = f"{boot.seconds_to_login:.0f}s" if boot.seconds_to_login is not None else "-"
        cells = "".join(f"{boot.phases[n]:>10.0f}s" if n in boot.phases else f"{'-':>11}" for n in names)
        print(f"{boot.number:<6}{total:>10}{cells}  {boot.note}")
    times = [b.seconds_to_login for b in boots if b.seconds_to_login is not None]
    if times:
        spread = f"min {min(times):.0f}s, max {max(times):.0f}s"
        print(f"\nmedian boot to login: {statistics.median(times):.0f}s over {len(times)} boots ({spread})")
    for name, meaning, _ in PHASES:
        values = [b.phases[name] for b in boots if name in b.phases]
        if values:
            print(f"  {name:<10} median {statistics.median(values):5.1f}s  {meaning}")
    last = next((b for b in reversed(boots) if b.analyze), None)
    if last:
        print(f"\nguest's view of boot {last.number} (systemd-analyze):\n{last.analyze}\n\nslowest units:\n{last.blame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="a qemu-board image (default: build the test image, cached)")
    parser.add_argument("--password", default=TEST_PASSWORD, help="root's password in that image (default: the test image's)")
    parser.add_argument(
        "--as-shipped",
        action="store_true",
        help="build the test image with the shipped kernel command line (the tests add init_on_alloc=0, see tests/conftest.py)",
    )
    parser.add_argument("--boots", type=int, default=3, help="how many boots (default %(default)s)")
    parser.add_argument("--keep-state", action="store_true", help="boot one disk again and again (later boots, not first boots)")
    parser.add_argument("--cmdline", default="", help="typed at GRUB's menu onto the kernel command line, e.g. systemd.log_level=debug")
    parser.add_argument("--rng", action="store_true", help="give the VM a virtio-rng device (a Pi has a hardware RNG, QEMU virt none)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a boot may take to reach the login (default %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/amberpi-bench"), help="scratch folder (default %(default)s)")
    args = parser.parse_args()
    if args.boots < 1:
        parser.error("--boots must be at least 1")
    work: Path = args.work.resolve()
    logs = work / "boot-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    if args.image:
        image = args.image.resolve()
    elif args.as_shipped:
        image = build_test_image(work / "out-boot-shipped", emulated=False)
    else:
        image = build_test_image(work / "out-boot")
    say(f"booting {image} {args.boots} time(s), {'one disk carried over' if args.keep_state else 'each a fresh copy'}")
    boots = []
    disk = sparse_copy(image, work / "boot-disk.img")
    for number in range(1, args.boots + 1):
        if number > 1 and not args.keep_state:
            disk = sparse_copy(image, work / "boot-disk.img")
        boot = boot_once(number, disk, args, logs)
        say(f"boot {number}: {boot.seconds_to_login}s to login {boot.note}")
        boots.append(boot)
    disk.unlink(missing_ok=True)
    print_table(boots)
    (work / "boot.json").write_text(json.dumps({"image": str(image), "boots": [asdict(b) for b in boots]}, indent=2))
    return 0 if all(not b.note for b in boots) else 1


if __name__ == "__main__":
    sys.exit(main())
