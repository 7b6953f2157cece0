#!/usr/bin/env python3
"""Boot-time benchmark: boot a qemu-board image under TCG and show where the time goes.

Run as root with the test environment's Python (it drives the serial console with
pexpect; `python3 tests/run.py --collect-only -q` makes .venv):

    .venv/bin/python bench/boot.py                        # the test image (built, or cached), 3 boots
    .venv/bin/python bench/boot.py --image X.img --password PW --boots 5
    .venv/bin/python bench/boot.py --as-shipped           # without the tests' init_on_alloc=0
    .venv/bin/python bench/boot.py --raspi3b --boots 1    # the pi3 image's chain under -M raspi3b

The test image boots as the tests boot it: with init_on_alloc=0, which spares TCG the
kernel's zeroing of every page it allocates (tests/conftest.py says why); --as-shipped
builds it with the kernel command line a released image has.

Each boot runs on its own sparse copy of the image, so every one is a first boot (SSH
host keys, p4 growth: what a freshly flashed card does) unless --keep-state carries the
disk over, which gives ordinary later boots. The console is timestamped at each phase
(UEFI to the GRUB menu, GRUB to the kernel, the kernel to /init, the initramfs and
live-boot, systemd to the login prompt); after the login the guest's own systemd-analyze
time, blame and critical-chain are recorded. --raspi3b boots the pi3 test image's own chain
under -M raspi3b instead (tests/raspi.py: U-Boot from p1, then GRUB, kernel, initramfs,
systemd), each boot on a fresh card. The table goes to stdout, the details to
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

from tests.bootphases import RASPI3B_PHASES, VIRT_PHASES, Phase, time_phases  # noqa: E402
from tests.buildtools import build_test_image  # noqa: E402
from tests.conftest import TEST_PASSWORD  # noqa: E402
from tests.raspi import CARD_NAME, raspi3b_vm  # noqa: E402
from tests.vm import VM, VMError, grub_append_to_cmdline  # noqa: E402

KERNEL_OOPS = "Internal error: Oops"


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
    log = logs / f"boot-{number}.log"
    if args.raspi3b:
        vm: VM = raspi3b_vm(disk, logs.parent, log)
    else:
        vm = VM(disk, console_log=log, extra_args=["-device", "virtio-rng-pci"] if args.rng else [])
    phases: tuple[Phase, ...] = RASPI3B_PHASES if args.raspi3b else VIRT_PHASES
    started = time.monotonic()
    try:
        vm.start()
        if args.cmdline:
            # Typed into GRUB's editor: the grub phase includes the typing (a few seconds).
            grub_append_to_cmdline(vm, args.cmdline, args.timeout)
            record.phases["firmware"] = round(time.monotonic() - started, 1)
            phases = phases[1:]
        timed, stopped = time_phases(vm, phases, args.timeout - (time.monotonic() - started), stop_at=(KERNEL_OOPS,))
        record.phases.update(timed)
        if stopped:
            raise VMError(f"the kernel oopsed after {sum(record.phases.values()):.0f}s", where="")
        record.seconds_to_login = round(sum(record.phases.values()), 1)
        vm.login("root", args.password)
        record.analyze = vm.check("systemd-analyze time || true")
        record.blame = vm.check("systemd-analyze blame --no-pager | head -n 15 || true")
        record.critical_chain = vm.check("systemd-analyze critical-chain --no-pager || true")
        if not args.raspi3b:  # QEMU's raspi3b does not power off: it is stopped below
            vm.check("systemctl poweroff --no-block")
            vm.wait_exit(timeout=300)
    except VMError as error:
        record.note = str(error).splitlines()[0]
    finally:
        vm.close()
    return record


def print_table(boots: list[Boot], phases: tuple[Phase, ...]) -> None:
    names = [phase.name for phase in phases]
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
    for phase in phases:
        values = [b.phases[phase.name] for b in boots if phase.name in b.phases]
        if values:
            print(f"  {phase.name:<10} median {statistics.median(values):5.1f}s  {phase.meaning}")
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
    parser.add_argument("--raspi3b", action="store_true", help="the pi3 test image under -M raspi3b (U-Boot, GRUB, kernel, login)")
    parser.add_argument("--boots", type=int, default=3, help="how many boots (default %(default)s)")
    parser.add_argument("--keep-state", action="store_true", help="boot one disk again and again (later boots, not first boots)")
    parser.add_argument("--cmdline", default="", help="typed at GRUB's menu onto the kernel command line, e.g. systemd.log_level=debug")
    parser.add_argument("--rng", action="store_true", help="give the VM a virtio-rng device (a Pi has a hardware RNG, QEMU virt none)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a boot may take to reach the login (default %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/amberpi-bench"), help="scratch folder (default %(default)s)")
    args = parser.parse_args()
    if args.boots < 1:
        parser.error("--boots must be at least 1")
    if args.raspi3b and (args.keep_state or args.cmdline or args.rng):
        parser.error("--raspi3b boots a fresh card each time, as it is: no --keep-state, --cmdline or --rng")
    work: Path = args.work.resolve()
    logs = work / "boot-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    board = "pi3" if args.raspi3b else "qemu"
    if args.image:
        image = args.image.resolve()
    elif args.as_shipped:
        image = build_test_image(work / f"out-boot-shipped-{board}", emulated=False, board=board)
    else:
        image = build_test_image(work / f"out-boot-{board}", board=board)
    say(f"booting {image} {args.boots} time(s), {'one disk carried over' if args.keep_state else 'each a fresh copy'}")
    boots = []
    # --raspi3b makes each card from the image itself (tests/raspi.py), so no copy here.
    disk = image if args.raspi3b else sparse_copy(image, work / "boot-disk.img")
    for number in range(1, args.boots + 1):
        if number > 1 and not args.keep_state and not args.raspi3b:
            disk = sparse_copy(image, work / "boot-disk.img")
        boot = boot_once(number, disk, args, logs)
        say(f"boot {number}: {boot.seconds_to_login}s to login {boot.note}")
        boots.append(boot)
    (work / CARD_NAME if args.raspi3b else disk).unlink(missing_ok=True)
    print_table(boots, RASPI3B_PHASES if args.raspi3b else VIRT_PHASES)
    (work / "boot.json").write_text(json.dumps({"image": str(image), "boots": [asdict(b) for b in boots]}, indent=2))
    return 0 if all(not b.note for b in boots) else 1


if __name__ == "__main__":
    sys.exit(main())
