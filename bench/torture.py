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
WORK/torture.json, rewritten after every trial. The seed makes the delays and
workload choices repeatable (the guest's timing is not). A long run can be
stopped (Ctrl-C) and taken up again with --resume: the same disk, seed and
plan, from the trial after the last one recorded. Nothing is asserted; the
exit status is 1 when any trial missed a promise.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.buildtools import build_test_image  # noqa: E402
from tests.conftest import TEST_PASSWORD  # noqa: E402
from tests.imagetools import read_only_hashes  # noqa: E402
from tests.kernel_repo import make_kernel_repo, serve  # noqa: E402
from tests.torture import Login, Run, Trial, missed, run_trials, say, tiny_package  # noqa: E402


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
    cuts = sum(bool(t.workloads) for t in trials)
    print(
        f"\n{len(trials)} boots, {cuts} cuts, seed {seed}: {booted}/{len(trials)} reached a login without a keypress "
        f"(median {median}); synced data kept {sum(kept)}/{len(kept)}; p1-p3 unchanged {sum(unchanged)}/{len(unchanged)}; "
        f"p4 after the cut: {sum(f.startswith('clean') for f in fsck)} clean (journal replays included), "
        f"{sum(f.startswith('repaired') for f in fsck)} repaired by e2fsck -fy, {damaged} damaged; "
        f"{len(updates)} cuts during a kernel update, {sum(bool(t.p3_rewritten) for t in updates)} of them after p3 was written"
    )


class StopRequest:
    """The first Ctrl-C (or SIGTERM) lets the running trial end and be recorded, so that --resume
    can take the run up again; a second one stops at once, leaving the disk in an unrecorded state."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        say("stopping after this trial (again to stop at once; the run then cannot be resumed)")


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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="take up the run recorded in WORK: its seed, plan, image and disk (options but --timeout, --password ignored)",
    )
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if not 0 <= args.kernel_share <= 1:
        parser.error("--kernel-share must be between 0 and 1")
    work: Path = args.work.resolve()
    record, logs, disk = work / "torture.json", work / "logs", work / "torture-disk.img"
    if args.resume:
        run = resumable_run(record, disk)
        say(f"resuming seed {run.seed}: {len(run.trials)} of {run.cuts + 1} boots recorded, image {run.image}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
        image = args.image.resolve() if args.image else build_test_image(work / "out-torture")
        run = Run(str(image), read_only_hashes(image), args.seed, args.trials, args.kernel_share, args.max_cut, args.max_kernel_cut)
        subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    logs.mkdir(parents=True, exist_ok=True)
    package = tiny_package(work)
    repo, run.new_kernel = make_kernel_repo(work / "kernel-repo") if run.kernel_share else (work, "")
    with serve(repo, work / "kernel-repo.log") as port:
        stop = StopRequest()
        run_trials(run, disk, package, port, Login(args.password, args.timeout), logs, record, lambda: stop.requested)
    print_table(run.trials, run.seed)
    return 1 if any(missed(t) for t in run.trials) else 0


def resumable_run(record: Path, disk: Path) -> Run:
    """The recorded run, if it can go on: its disk left between two trials, its image unchanged."""
    if not record.is_file() or not disk.is_file():
        sys.exit(f"torture: nothing to resume in {record.parent} (no torture.json or torture-disk.img): start a run without --resume")
    run = Run.load(record)
    if not run.disk_consistent:
        sys.exit(f"torture: the run in {record.parent} was stopped inside a trial, so its disk holds an unrecorded cut: start a new run")
    if len(run.trials) > run.cuts or (run.trials and not run.trials[-1].reached_login):
        sys.exit(f"torture: the run in {record.parent} has ended: start a new run")
    if not Path(run.image).is_file() or read_only_hashes(Path(run.image)) != run.image_hashes:
        sys.exit(f"torture: the run's image {run.image} is gone or was rebuilt: start a new run")
    return run


if __name__ == "__main__":
    sys.exit(main())
