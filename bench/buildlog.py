#!/usr/bin/env python3
"""Where a build's time went, read from its build log (OUT/NAME.build.log).

    python3 bench/buildlog.py out/amberpi-qemu.build.log [--top 15] [--json]

Every line of the log carries the seconds since the build started (`[  83.25]`).
A line is charged with the time until the next one: the tools print what they
start ("Unpacking linux-image-… ...", "Setting up udev ...") and stay silent
while they do it, so the silence after a line is the cost of that line's work.
Printed: each stage's time, that time split by kind of work (download, unpack,
configure, triggers, initramfs, hooks, other), update-initramfs split by its
own hooks (the build runs it with -v: "Calling hook X"), the packages whose
unpacking and configuration cost most (under qemu-user that is emulated work),
and the longest single steps. Nothing here is exact to the second: a tool that prints
nothing for a while charges that while to its last line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

STAMPED = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\] (.*)$")
# A stage's progress lines: "[ 2/12] packages    Installing …", "… built in 1m43s".
STAGE_LINE = re.compile(r"^\[\s*\d+/\d+\] (\S+)")
# "label | text": a line a tool printed.
TOOL_LINE = re.compile(r"^([^|$]+?) \| (.*)$")
# What apt/dpkg and debootstrap print when they start a piece of work, by kind.
KINDS = (
    # debootstrap's first stage unpacks on the build host, natively: "extract", not "unpack".
    ("extract", re.compile(r"^I: Extracting\b")),
    ("download", re.compile(r"^(?:I: )?(?:Get:\d+|Retrieving|Validating|Fetched|Hit:\d+|Ign:\d+)\b")),
    ("unpack", re.compile(r"^(?:I: )?(?:Unpacking|Preparing to unpack|Selecting previously unselected)\b")),
    ("configure", re.compile(r"^(?:I: )?(?:Setting up|Configuring)\b")),
    ("triggers", re.compile(r"^Processing triggers for\b")),
)
# Package named by a line of dpkg's ("Unpacking udev (257.9-1) ...") or debootstrap's ("I: Configuring udev...").
PACKAGE = re.compile(
    r"^(?:I: )?(?:Unpacking|Setting up|Configuring|Extracting|Processing triggers for|Preparing to unpack \S*/)\s*"
    r"([a-z0-9][a-z0-9+.-]*?)(?:_|\s|\.\.\.|$)"
)
# debootstrap's summary lines ("I: Unpacking required packages...", "I: Configuring the base system...").
NOT_PACKAGES = ("required", "the")
INITRAMFS_LABELS = ("initramfs", "update-initramfs", "mkinitramfs")
# mkinitramfs -v: "Calling hook live-boot", then "Building cpio /boot/initrd.img-… initramfs".
INITRAMFS_HOOK = re.compile(r"^Calling hook (\S+)")
INITRAMFS_CPIO = re.compile(r"^Building cpio\b")
INITRAMFS_START = "before its hooks (modules, base binaries)"
INITRAMFS_END = "after its hooks (depmod, cpio, compression)"


@dataclass
class Step:
    """One line of the log and the silence after it."""

    stage: str
    seconds: float
    kind: str
    package: str
    text: str
    # For update-initramfs's lines: the part of its run (INITRAMFS_START, "hook X", INITRAMFS_END).
    part: str = ""


@dataclass
class Profile:
    total: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, dict[str, float]] = field(default_factory=dict)
    packages: list[tuple[str, float]] = field(default_factory=list)
    initramfs: dict[str, float] = field(default_factory=dict)
    longest: list[Step] = field(default_factory=list)


def kind_of(label: str, message: str, hooks: bool) -> str:
    if label in INITRAMFS_LABELS or "update-initramfs" in message or "mkinitramfs" in message:
        return "initramfs"
    for kind, pattern in KINDS:
        if pattern.match(message):
            return kind
    return "hooks" if hooks else "other"


def initramfs_part(part: str, message: str) -> str:
    """Which part of update-initramfs's run a line of its output belongs to, given the last line's."""
    hook = INITRAMFS_HOOK.match(message)
    if hook:
        return f"hook {Path(hook.group(1)).name}"
    if INITRAMFS_CPIO.match(message):
        return INITRAMFS_END
    return part or INITRAMFS_START


def read_steps(lines: list[str]) -> list[Step]:
    """The log's lines with the time each one's work took; unstamped lines (an older log) are skipped."""
    stamped = [(float(m.group(1)), m.group(2)) for m in map(STAMPED.match, lines) if m]
    steps: list[Step] = []
    stage = "(before the first stage)"
    part = ""
    for (stamp, text), (next_stamp, _) in zip(stamped, stamped[1:] + stamped[-1:], strict=True):
        progress = STAGE_LINE.match(text)
        if progress:
            stage = progress.group(1)
        tool = TOOL_LINE.match(text)
        label, message = (tool.group(1), tool.group(2)) if tool else ("", text)
        named = PACKAGE.match(message)
        package = named.group(1) if named and named.group(1) not in NOT_PACKAGES else ""
        hooks = label.endswith(".hook.chroot")
        kind = kind_of(label, message, hooks)
        # A command line starts a new run: its part starts afresh.
        part = initramfs_part("" if text.startswith("$ ") else part, message) if kind == "initramfs" else ""
        steps.append(Step(stage, next_stamp - stamp, kind, package, text, part))
    return steps


def profile(steps: list[Step], top: int) -> Profile:
    result = Profile(total=sum(s.seconds for s in steps))
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    packages: dict[str, float] = defaultdict(float)
    initramfs: dict[str, float] = defaultdict(float)
    for step in steps:
        if step.part:
            initramfs[step.part] += step.seconds
        result.stages[step.stage] = result.stages.get(step.stage, 0.0) + step.seconds
        kinds[step.stage][step.kind] += step.seconds
        if step.package and step.kind in ("extract", "unpack", "configure", "triggers"):
            packages[step.package] += step.seconds
    result.kinds = {stage: dict(split) for stage, split in kinds.items()}
    result.packages = sorted(packages.items(), key=lambda item: -item[1])[:top]
    result.initramfs = dict(initramfs)
    result.longest = sorted(steps, key=lambda s: -s.seconds)[:top]
    return result


def print_profile(result: Profile) -> None:
    print(f"{'stage':<26}{'seconds':>8}   split by kind of work")
    for stage, seconds in result.stages.items():
        if seconds < 0.5:
            continue
        split = sorted(result.kinds[stage].items(), key=lambda item: -item[1])
        shown = ", ".join(f"{kind} {s:.0f}" for kind, s in split if s >= 0.5)
        print(f"{stage:<26}{seconds:>8.0f}   {shown}")
    print(f"{'all':<26}{result.total:>8.0f}")
    if result.initramfs:
        print("\nupdate-initramfs by part (s):")
        print("  " + ", ".join(f"{part} {seconds:.1f}" for part, seconds in result.initramfs.items()))
    if result.packages:
        print("\npackages whose unpacking, configuration and triggers took longest (s):")
        print("  " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.packages))
    print("\nlongest steps (s, stage, the line the time followed):")
    for step in result.longest:
        print(f"{step.seconds:>8.1f}  {step.stage:<12} {step.text[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="a build log (OUT/NAME.build.log)")
    parser.add_argument("--top", type=int, default=15, help="packages and steps to list (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not args.log.is_file():
        parser.error(f"{args.log}: no such file (a build writes OUT/NAME.build.log)")
    steps = read_steps(args.log.read_text(errors="replace").splitlines())
    if not steps:
        sys.exit(f"buildlog: {args.log} has no time-stamped lines (logs before 2026-12-07 were not stamped)")
    result = profile(steps, args.top)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print_profile(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
