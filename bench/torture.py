#!/usr/bin/env python3
"""Power-cut torture: boot, write hard, pull the plug at a random moment, boot again.

Run as root with the test environment's Python (`python3 tests/run.py --collect-only -q`
makes .venv), alone (another emulated job beside it doubles every figure):

    .venv/bin/python bench/torture.py --trials 5 --seed 1
    .venv/bin/python bench/torture.py --image X.img --password PW --trials 100 --seed 7

One disk (a sparse copy of the qemu test image) lives through every trial, as a
device's card would. Each trial boots it, logs in, checks that what the trial
before synced is still there, starts a write-heavy workload in the guest (files
written with fsync and without, a package installed with dpkg, log spam), marks
a token synced, and kills QEMU after a random delay (SIGKILL: no shutdown).
In some trials (--kernel-share) a kernel update runs beside the workload and
the cut falls anywhere in it: `apt install` of trixie-backports' newer kernel
(served from the host) while it is absent, else `amberpi-kernel reinstall` or
`update-initramfs -u`, both of which rewrite the kernel partition (p3).
Then, on the host: p4 checked by e2fsck on a copy (after its journal replay, as
the device's boot does), p1-p3 compared with the image (p1 but for GRUB's
environment block, which GRUB rewrites at every boot). The next trial's boot
is the "boot again": it must reach a login without a keypress.

A table per trial and a summary line go to stdout, the details to
WORK/torture.json. The seed makes the delays and workload choices repeatable
(the guest's timing is not). Nothing is asserted; the exit status is 1 when any
trial missed a promise.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.buildtools import build_test_image  # noqa: E402
from tests.conftest import TEST_PASSWORD  # noqa: E402
from tests.imagetools import extract_partition, read_only_hashes  # noqa: E402
from tests.kernel_repo import APT_LOCAL, GUEST_HOST, LOCAL_LIST, make_kernel_repo, serve  # noqa: E402
from tests.vm import VM, VMError  # noqa: E402

# The guest's workload: each line runs in the background until the plug is pulled.
WORKLOADS = {
    "fsync": "i=0; while :; do i=$((i+1)); dd if=/dev/urandom of=/root/torture/f$((i % 50)) bs=64k count=4 conv=fsync status=none; done",
    "buffered": "i=0; while :; do i=$((i+1)); head -c 200000 /dev/urandom > /root/torture/b$((i % 50)); done",
    "logs": 'while :; do logger -t torture "$(head -c 300 /dev/urandom | base64 -w 0)"; done',
    "dpkg": "while :; do dpkg -i /root/torture/amberpi-torture.deb >/dev/null 2>&1; dpkg -r amberpi-torture >/dev/null 2>&1; done",
}
# Kernel updates as a user runs them; an interrupted dpkg is finished first, as apt asks one to.
APT = f"DEBIAN_FRONTEND=noninteractive {APT_LOCAL} -y"
FINISH_DPKG = f"dpkg --configure -a; {APT} -f install"
KERNEL_UPDATES = {
    "apt-install": f"{FINISH_DPKG}; {APT} install linux-image-arm64",
    "reinstall": f"{FINISH_DPKG}; amberpi-kernel reinstall",
    "update-initramfs": f"{FINISH_DPKG}; update-initramfs -u",
}


@dataclass
class Trial:
    number: int
    workloads: list[str]
    cut_after_seconds: float
    reached_login: bool = False
    boot_seconds: float | None = None
    synced_kept: bool | None = None  # the previous trial's synced token, read in this boot
    # p1 and p2 bytes the image's, p3 the bytes the trial before left (a kernel update may rewrite it)
    p1_p3_unchanged: bool | None = None
    p3_rewritten: bool | None = None
    p4_fsck: str = ""
    kernel_update: str = ""  # the update this trial ran beside its workload ('' for none)
    running_kernel: str = ""  # what this trial's boot ran: release and GRUB entry
    kernel_state: str = ""
    note: str = ""


def say(message: str) -> None:
    print(f"torture: {message}", file=sys.stderr, flush=True)


def fsck_p4(disk: Path, scratch: Path) -> str:
    """p4 as the device's next boot finds it, checked on a copy: its journal replayed first (what
    a mount or the initramfs's e2fsck -p does after a cut), then a full read-only check.

    'clean', 'clean after journal replay', 'repaired (exit N)' when a full e2fsck -fy had to fix
    something, or 'damaged (exit N)' when it could not.
    """
    copy = extract_partition(disk, 4, scratch / "p4-check.img")
    try:
        replay = subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(copy)], capture_output=True, text=True)
        check = subprocess.run(["e2fsck", "-fn", str(copy)], capture_output=True, text=True)
        if check.returncode == 0:
            replayed = "recovering journal" in replay.stdout + replay.stderr
            return "clean after journal replay" if replayed else "clean"
        repair = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
        state = "repaired" if repair.returncode in (1, 2) else "damaged"
        return f"{state} (exit {repair.returncode})"
    finally:
        copy.unlink(missing_ok=True)


def tiny_package(work: Path) -> bytes:
    """A small .deb for the dpkg workload (dpkg's own fsync-heavy path)."""
    root = work / "torture-pkg"
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/amberpi-torture").mkdir(parents=True)
    (root / "usr/share/amberpi-torture/data").write_bytes(bytes(range(256)) * 16)
    control = ["Package: amberpi-torture", "Version: 1", "Architecture: all", "Maintainer: AmberPi <a@localhost>", "Description: load"]
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    deb = work / "amberpi-torture.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb.read_bytes()


def upload(vm: VM, data: bytes, target: str) -> None:
    """Through the serial console, base64 in lines (the package is a few kB)."""
    text = base64.b64encode(data).decode()
    vm.check(f": > {target}.b64")
    for start in range(0, len(text), 512):
        vm.check(f"echo {text[start : start + 512]} >> {target}.b64")
    vm.check(f"base64 -d {target}.b64 > {target} && rm {target}.b64")


def start_kernel_update(vm: VM, trial: Trial, new_kernel: str, port: int, rng: random.Random) -> None:
    """Start this trial's kernel update in the background (its log kept on p4 for the record)."""
    vm.check(f"echo 'deb [trusted=yes] http://{GUEST_HOST}:{port} ./' > {LOCAL_LIST}")
    vm.check(f"{APT_LOCAL} update >/dev/null", timeout=300)
    installed = vm.run(f"dpkg-query -W -f '${{Status}}' linux-image-{new_kernel} 2>/dev/null | grep -q 'ok installed'")[0] == 0
    trial.kernel_update = rng.choice(["reinstall", "update-initramfs"]) if installed else "apt-install"
    log = f"/root/torture/kernel-{trial.number:03d}.log"
    vm.check(f"(nohup sh -c '{KERNEL_UPDATES[trial.kernel_update]}' >{log} 2>&1 &)")


def run_trial(
    trial: Trial,
    disk: Path,
    previous_token: str | None,
    package: bytes,
    kernel: tuple[str, int] | None,
    args: argparse.Namespace,
    logs: Path,
) -> str | None:
    """One boot, workload and cut; returns the token synced before the cut (None if none was).

    kernel: (the newer kernel's version, the port its repository is served on) when this
    trial runs a kernel update."""
    vm = VM(disk, console_log=logs / f"trial-{trial.number:03d}.log")
    token = None
    try:
        vm.start()
        trial.boot_seconds = round(vm.wait_for_login(args.timeout), 1)
        trial.reached_login = True
        vm.login("root", args.password)
        if previous_token is not None:
            trial.synced_kept = vm.run("cat /root/torture/synced")[1] == previous_token
        entry = vm.check("tr ' ' '\\n' < /proc/cmdline | sed -n 's/^amberpi.kernel=//p'")
        trial.running_kernel = f"{vm.check('uname -r')} ({entry})"
        trial.kernel_state = vm.check("amberpi-kernel status | sed -n 's/^kernel partition: *//p'")
        vm.check("mkdir -p /root/torture")
        if kernel is not None:
            start_kernel_update(vm, trial, *kernel, random.Random(trial.number))
        if "dpkg" in trial.workloads:
            upload(vm, package, "/root/torture/amberpi-torture.deb")
        for name in trial.workloads:
            vm.check(f"(nohup sh -c '{WORKLOADS[name]}' >/dev/null 2>&1 &)")
        token = f"trial-{trial.number}-{random.Random(trial.number).getrandbits(32):08x}"
        vm.check(f"echo {token} > /root/torture/synced.new && mv /root/torture/synced.new /root/torture/synced && sync")
        time.sleep(trial.cut_after_seconds)
    except VMError as error:
        trial.note = str(error).splitlines()[0]
    finally:
        vm.kill()
        vm.close()
    return token


def print_table(trials: list[Trial], seed: int) -> None:
    print(
        f"{'trial':<6}{'login':>7}{'boot':>7}{'synced':>8}{'p1-p3':>8}  {'p4 fsck':<28}{'cut':>7}  "
        f"{'workload':<26}{'kernel update':<18}booted; kernel partition"
    )
    for t in trials:
        boot = f"{t.boot_seconds:.0f}s" if t.boot_seconds is not None else "-"
        synced = "-" if t.synced_kept is None else ("kept" if t.synced_kept else "LOST")
        same = "-" if t.p1_p3_unchanged is None else ("same" if t.p1_p3_unchanged else "CHANGED")
        login = "yes" if t.reached_login else "NO"
        update = t.kernel_update + (" (p3 new)" if t.p3_rewritten else "")
        print(
            f"{t.number:<6}{login:>7}{boot:>7}{synced:>8}{same:>8}  {t.p4_fsck:<28}"
            f"{t.cut_after_seconds:>6.1f}s  {','.join(t.workloads):<26}{update:<18}{t.running_kernel}; {t.kernel_state} {t.note}"
        )
    booted = sum(t.reached_login for t in trials)
    kept = [t.synced_kept for t in trials if t.synced_kept is not None]
    unchanged = [t.p1_p3_unchanged for t in trials if t.p1_p3_unchanged is not None]
    fsck = [t.p4_fsck for t in trials if t.p4_fsck]
    damaged = sum(1 for f in fsck if f.startswith("damaged"))
    times = sorted(t.boot_seconds for t in trials if t.boot_seconds is not None)
    median = f"{times[len(times) // 2]:.0f}s" if times else "-"
    updates = [t for t in trials if t.kernel_update]
    print(
        f"\n{len(trials)} boots, {len(trials) - 1} cuts, seed {seed}: {booted}/{len(trials)} reached a login without a keypress "
        f"(median {median}); synced data kept {sum(kept)}/{len(kept)}; p1-p3 unchanged {sum(unchanged)}/{len(unchanged)}; "
        f"p4 after the cut: {sum(f.startswith('clean') for f in fsck)} clean (journal replays included), "
        f"{sum(f.startswith('repaired') for f in fsck)} repaired by e2fsck -fy, {damaged} damaged; "
        f"{len(updates)} cuts during a kernel update, {sum(bool(t.p3_rewritten) for t in updates)} of them after p3 was written"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5, help="power cuts (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the delays and workload choices (default %(default)s)")
    parser.add_argument("--image", type=Path, help="a qemu-board image (default: build the test image, cached)")
    parser.add_argument("--password", default=TEST_PASSWORD, help="root's password in that image (default: the test image's)")
    parser.add_argument("--max-cut", type=float, default=20, help="longest delay before the cut, in seconds (default %(default)s)")
    parser.add_argument("--kernel-share", type=float, default=0.25, help="share of trials that update the kernel (default %(default)s)")
    parser.add_argument(
        "--max-kernel-cut", type=float, default=420, help="longest delay before the cut in a kernel trial, in seconds (default %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds a boot may take to reach the login (default %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/amberpi-torture"), help="scratch folder (default %(default)s)")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if not 0 <= args.kernel_share <= 1:
        parser.error("--kernel-share must be between 0 and 1")
    work: Path = args.work.resolve()
    logs = work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    image = args.image.resolve() if args.image else build_test_image(work / "out-torture")
    expected = read_only_hashes(image)
    package = tiny_package(work)
    disk = work / "torture-disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    repo, new_kernel = make_kernel_repo(work / "kernel-repo") if args.kernel_share else (work, "")
    with serve(repo) as port:
        trials = run_trials(args, disk, expected, package, (new_kernel, port), logs)
    print_table(trials, args.seed)
    details = {"image": str(image), "seed": args.seed, "new_kernel": new_kernel, "trials": [asdict(t) for t in trials]}
    (work / "torture.json").write_text(json.dumps(details, indent=2))
    return 1 if any(missed(t) for t in trials) else 0


def run_trials(
    args: argparse.Namespace, disk: Path, expected: dict[int, str], package: bytes, kernel: tuple[str, int], logs: Path
) -> list[Trial]:
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    token: str | None = None
    # One boot more than cuts: the last boot only checks what the last cut left.
    for number in range(1, args.trials + 2):
        last = number == args.trials + 1
        workloads = [] if last else sorted(rng.sample(sorted(WORKLOADS), rng.randint(1, len(WORKLOADS))))
        updates_kernel = not last and rng.random() < args.kernel_share
        cut = 0 if last else round(rng.uniform(0, args.max_kernel_cut if updates_kernel else args.max_cut), 1)
        trial = Trial(number, workloads, cut)
        token = run_trial(trial, disk, token, package, kernel if updates_kernel else None, args, logs)
        if not last:
            trial.p4_fsck = fsck_p4(disk, disk.parent)
            hashes = read_only_hashes(disk)
            trial.p3_rewritten = hashes[3] != expected[3]
            trial.p1_p3_unchanged = all(hashes[n] == expected[n] for n in (1, 2)) and (bool(trial.kernel_update) or not trial.p3_rewritten)
            expected[3] = hashes[3]
        trials.append(trial)
        say(f"trial {number}: {asdict(trial)}")
        if not trial.reached_login:
            say("the device no longer boots to a login: stopping")
            break
    return trials


def missed(trial: Trial) -> bool:
    """Whether a trial broke a promise: no login, synced data lost, p1-p3 changed, p4 damaged."""
    return not trial.reached_login or trial.synced_kept is False or trial.p1_p3_unchanged is False or trial.p4_fsck.startswith("damaged")


if __name__ == "__main__":
    sys.exit(main())
