"""Power cuts at random moments, trial by trial: the machinery behind bench/torture.py and
tests/boot/test_torture.py.

One disk lives through every trial, as a device's card would. Each trial boots it, logs in,
checks that what the trial before synced is still there, starts a write-heavy workload in the
guest, marks a token synced and kills QEMU after a random delay (SIGKILL: no shutdown); some
trials run a kernel update beside the workload. Then, on the host: p4 checked by e2fsck on a
copy, p1-p3 compared with what they should hold. The next trial's boot is the "boot again".
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.imagetools import extract_partition, read_only_hashes
from tests.kernel_repo import APT_LOCAL, GUEST_HOST, LOCAL_LIST
from tests.vm import VM, VMError

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


@dataclass(frozen=True)
class Login:
    password: str
    timeout: float  # seconds a boot may take to reach the login


@dataclass
class Trial:
    number: int
    workloads: list[str]
    cut_after_seconds: float
    updates_kernel: bool = False  # planned: this trial runs a kernel update beside its workload
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
    synced_token: str | None = None  # what this trial synced before its cut, for the next boot to find
    note: str = ""


def plan_trials(seed: int, cuts: int, kernel_share: float, max_cut: float, max_kernel_cut: float) -> list[Trial]:
    """Every trial of a run, drawn from the seed alone: one boot per cut, and one more that only
    checks what the last cut left. A resumed run draws the same plan."""
    rng = random.Random(seed)
    plan = []
    for number in range(1, cuts + 1):
        workloads = sorted(rng.sample(sorted(WORKLOADS), rng.randint(1, len(WORKLOADS))))
        updates_kernel = rng.random() < kernel_share
        cut = round(rng.uniform(0, max_kernel_cut if updates_kernel else max_cut), 1)
        plan.append(Trial(number, workloads, cut, updates_kernel))
    plan.append(Trial(cuts + 1, [], 0))
    return plan


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
    login: Login,
    logs: Path,
) -> None:
    """One boot, workload and cut; the token synced before the cut goes into trial.synced_token.

    kernel: (the newer kernel's version, the port its repository is served on) when this
    trial runs a kernel update."""
    vm = VM(disk, console_log=logs / f"trial-{trial.number:03d}.log")
    try:
        vm.start()
        trial.boot_seconds = round(vm.wait_for_login(login.timeout), 1)
        trial.reached_login = True
        vm.login("root", login.password)
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
        trial.synced_token = token
        time.sleep(trial.cut_after_seconds)
    except VMError as error:
        trial.note = str(error).splitlines()[0]
    finally:
        vm.kill()
        vm.close()


def say(message: str) -> None:
    print(f"torture: {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """A torture run as WORK/torture.json records it: the plan's parameters, the image, and the trials so far."""

    image: str
    image_hashes: dict[int, str]  # p1 (without GRUB's environment block), p2 and p3 as built
    seed: int
    cuts: int
    kernel_share: float
    max_cut: float
    max_kernel_cut: float
    new_kernel: str = ""
    disk_consistent: bool = True  # False when stopped inside a trial: the disk then holds what no record says
    trials: list[Trial] = field(default_factory=list)

    def save(self, path: Path) -> None:
        temporary = path.with_suffix(".json.new")
        temporary.write_text(json.dumps(asdict(self), indent=2))
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> Run:
        data = json.loads(path.read_text())
        data["image_hashes"] = {int(n): h for n, h in data["image_hashes"].items()}
        data["trials"] = [Trial(**t) for t in data["trials"]]
        return cls(**data)


def run_trials(
    run: Run, disk: Path, package: bytes, port: int, login: Login, logs: Path, record: Path, stop_requested: Callable[[], bool]
) -> None:
    """The planned trials not yet recorded, each saved to the record as it ends."""
    plan = plan_trials(run.seed, run.cuts, run.kernel_share, run.max_cut, run.max_kernel_cut)
    # p1 and p2 must stay as built; p3 as the trial before left it (a kernel update rewrites it).
    expected = {**run.image_hashes, 3: read_only_hashes(disk)[3]}
    for trial in plan[len(run.trials) :]:
        if stop_requested():
            say(f"stopped after {len(run.trials)} boots: --resume takes the run up again")
            return
        previous_token = run.trials[-1].synced_token if run.trials else None
        run.disk_consistent = False
        run.save(record)
        run_trial(trial, disk, previous_token, package, (run.new_kernel, port) if trial.updates_kernel else None, login, logs)
        if trial.workloads:  # not the last boot, which only checks what the last cut left
            trial.p4_fsck = fsck_p4(disk, disk.parent)
            hashes = read_only_hashes(disk)
            trial.p3_rewritten = hashes[3] != expected[3]
            trial.p1_p3_unchanged = all(hashes[n] == expected[n] for n in (1, 2)) and (bool(trial.kernel_update) or not trial.p3_rewritten)
            expected[3] = hashes[3]
        run.trials.append(trial)
        run.disk_consistent = True
        run.save(record)
        say(f"trial {trial.number} of {len(plan)}: {describe(trial)}{'  <- MISSED A PROMISE' if missed(trial) else ''}")
        if not trial.reached_login:
            say("the device no longer boots to a login: stopping")
            return


def describe(trial: Trial) -> str:
    """A trial in one line, in the order it happened: the boot, what it found, the cut, the host's checks."""
    if not trial.reached_login:
        return f"NO LOGIN ({trial.note or 'see its console log'})"
    parts = [f"login after {trial.boot_seconds:.0f}s" if trial.boot_seconds is not None else "login"]
    if trial.synced_kept is not None:
        parts.append("the last cut's synced token found" if trial.synced_kept else "the last cut's synced token LOST")
    if not trial.workloads:
        return ", ".join([*parts, "the last boot (checks only)"])
    update = f" beside a kernel update ({trial.kernel_update})" if trial.kernel_update else ""
    parts.append(f"cut after {trial.cut_after_seconds:.1f}s of {','.join(trial.workloads)}{update}")
    if trial.p4_fsck:
        parts.append(f"p4 {trial.p4_fsck}")
    if trial.p1_p3_unchanged is not None:
        parts.append("p1-p3 as expected" if trial.p1_p3_unchanged else "p1-p3 CHANGED")
    if trial.p3_rewritten:
        parts.append("p3 rewritten by the update")
    return ", ".join(parts)


def missed(trial: Trial) -> bool:
    """Whether a trial broke a promise: no login, synced data lost, p1-p3 changed, p4 damaged."""
    return not trial.reached_login or trial.synced_kept is False or trial.p1_p3_unchanged is False or trial.p4_fsck.startswith("damaged")
