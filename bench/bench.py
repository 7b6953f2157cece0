#!/usr/bin/env python3
"""Build-speed benchmark: cold, warm-after-hook-edit and no-op builds, and Debian's live-build.

Run as root on the build machine (nothing else heavy beside it, or the figures lie):

    python3 bench/bench.py                     # everything, live-build included
    python3 bench/bench.py --skip-live-build   # AmberPi's three builds only
    python3 bench/bench.py --skip-live-build --boot --boots 3   # and the boot to login, median of 3
    python3 bench/bench.py --skip-live-build --raspi3b          # and the pi3 image's chain under -M raspi3b

Each AmberPi build runs `build.py` with a cache folder of the benchmark's own, so the
user's cache is neither used nor disturbed; the cold build starts from an empty one
(.deb downloads included). live-build builds the same package set for arm64 (chroot,
squashfs, kernel and initrd: `lb build` with a tar binary image) from the same mirror.
The table is printed at the end and written to WORK/bench.json. --boot then boots the
test image under TCG (bench/boot.py, its own table: each phase and the median to the
login); --raspi3b boots the pi3 test image's U-Boot, GRUB, kernel chain under -M raspi3b
(bench/boot.py --raspi3b, once). After the table, bench/buildlog.py's account of the
cold build's log: each stage split by kind of work, the costliest packages and steps.
Nothing is asserted: targets are read off the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_HOOK = "9990-bench.hook.chroot"
LIVE_BUILD_PACKAGES = ("live-build", "qemu-user-static", "binfmt-support", "debootstrap", "squashfs-tools")
XZ_CHUNK = 1 << 20
# The emulated CPU AmberPi's builds run arm64 code on (amberpi/run.py, EMULATED_CPU): live-build
# gets the same, so the comparison measures the tools and not qemu's default "max" CPU.
EMULATED_CPU = os.environ.get("QEMU_CPU", "cortex-a72")
QEMU_STATIC = "/usr/bin/qemu-aarch64-static"


@dataclass
class Row:
    name: str
    seconds: float | None = None
    cached: str = ""
    image_mib: float | None = None
    squashfs_mib: float | None = None
    note: str = ""
    stages: dict[str, float] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def write_config(work: Path, base: Path | None, hook_text: str) -> Path:
    """The user's config (if any) plus one extra hooks folder holding the benchmark's hook."""
    hooks = work / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / BENCH_HOOK
    hook.write_text(hook_text)
    hook.chmod(0o755)
    lines = base.read_text().splitlines() if base else []
    if any(line.startswith("hooks_dirs:") for line in lines):
        sys.exit("bench: the base config sets hooks_dirs; give one without it")
    lines.append(f"hooks_dirs: [{json.dumps(str(hooks))}]")
    config = work / "bench.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def amberpi_build(slug: str, name: str, work: Path, config: Path, args: argparse.Namespace, backend: str = "native") -> Row:
    output = work / f"out-{slug}"
    cache = work / ("cache" if backend == "native" else f"cache-{backend}")
    argv = [sys.executable, str(REPO / "build.py"), "--board", args.board, "--config", str(config)]
    argv += ["--output", str(output), "--cache-dir", str(cache), "--backend", backend]
    if args.mirror:
        argv += ["--mirror", args.mirror]
    say(f"{name}: {' '.join(argv[1:])}")
    started = time.monotonic()
    result = subprocess.run(argv, cwd=REPO)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        return Row(name, seconds, note=f"failed (exit {result.returncode}), log in {output}")
    report = json.loads(next(output.glob("*.report.json")).read_text())
    stages = report["stages"]
    # "skipped": not needed at all, because a later stage came from the cache.
    hits = sum(1 for stage in stages if stage["status"] in ("cached", "skipped"))
    return Row(
        name,
        seconds,
        cached=f"{hits}/{len(stages)}",
        image_mib=report["image_bytes"] / 2**20,
        squashfs_mib=report["squashfs_bytes"] / 2**20,
        stages={stage["name"]: stage["seconds"] for stage in stages},
    )


def xz_size(image: Path) -> tuple[float, float]:
    """Bytes of the image as .img.xz (xz -6, multithreaded), and the seconds it took."""
    started = time.monotonic()
    target = image.with_name(image.name + ".xz")
    with image.open("rb") as source, target.open("wb") as sink:
        compressor = subprocess.Popen(["xz", "-6", "-T0", "-c"], stdin=subprocess.PIPE, stdout=sink)
        assert compressor.stdin
        while chunk := source.read(XZ_CHUNK):
            compressor.stdin.write(chunk)
        compressor.stdin.close()
        if compressor.wait() != 0:
            raise SystemExit("bench: xz failed")
    size = target.stat().st_size
    target.unlink()
    return size / 2**20, time.monotonic() - started


def package_set() -> list[str]:
    names = []
    for listing in sorted((REPO / "package-lists").glob("*.list.chroot")):
        for line in listing.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    return names


def host_mirror(args: argparse.Namespace) -> str:
    """The mirror AmberPi itself would choose, so both tools fetch from the same place."""
    if args.mirror:
        return str(args.mirror)
    argv = [sys.executable, str(REPO / "build.py"), "summary", "--json"]
    return str(json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)["mirror"])


def live_build(work: Path, args: argparse.Namespace) -> Row:
    missing = [p for p in LIVE_BUILD_PACKAGES if subprocess.run(["dpkg-query", "-W", p], capture_output=True).returncode != 0]
    if missing:
        say(f"installing {' '.join(missing)} for the comparison")
        subprocess.run(["apt-get", "-q", "-y", "install", "--no-install-recommends", *missing], check=True)
    folder = work / "live-build"
    if folder.exists():
        subprocess.run(["lb", "clean", "--purge"], cwd=folder, capture_output=True)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    mirror = host_mirror(args)
    lb_config = [
        "lb", "config", "--architectures", "arm64", "--distribution", args.suite,
        "--mirror-bootstrap", mirror, "--mirror-chroot", mirror, "--mirror-binary", mirror,
        "--archive-areas", "main", "--apt-recommends", "false", "--linux-flavours", "arm64",
        "--binary-images", "tar", "--bootloaders", "", "--chroot-squashfs-compression-type", "zstd",
        "--security", "false", "--updates", "false", "--apt-indices", "false", "--memtest", "none",
        "--firmware-binary", "false", "--firmware-chroot", "false", "--debian-installer", "none",
        # live-build skips its bootstrap for a foreign architecture unless told which qemu
        # to use; it then runs debootstrap --foreign and the second stage in the chroot.
        "--bootstrap-qemu-arch", "arm64", "--bootstrap-qemu-static", QEMU_STATIC,
    ]  # fmt: skip
    subprocess.run(lb_config, cwd=folder, check=True, stdout=subprocess.DEVNULL)
    # live-build runs every chroot command under `env -i`, so QEMU_CPU from our environment
    # never reaches the emulated processes; config/environment.chroot is its documented
    # way in. Without it they run on qemu's default CPU, many times slower (see EMULATED_CPU).
    (folder / "config" / "environment.chroot").write_text(f"QEMU_CPU={EMULATED_CPU}\n")
    (folder / "config" / "package-lists" / "amberpi.list.chroot").write_text("\n".join(package_set()) + "\n")
    log = work / "live-build.log"
    say(f"live-build: lb build in {folder} (log {log})")
    started = time.monotonic()
    with log.open("wb") as handle:
        env = {**os.environ, "QEMU_CPU": EMULATED_CPU}
        build = subprocess.Popen(["lb", "build"], cwd=folder, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = build.wait(timeout=args.live_build_limit)
        except subprocess.TimeoutExpired:
            # Its own session: debootstrap and the chroot's processes go with it.
            os.killpg(build.pid, signal.SIGTERM)
            returncode = build.wait()
    seconds = time.monotonic() - started
    squashfs = next(folder.rglob("filesystem.squashfs"), None)
    name = f"live-build (QEMU_CPU={EMULATED_CPU})"
    row = Row(name, seconds, squashfs_mib=squashfs.stat().st_size / 2**20 if squashfs else None)
    if seconds >= args.live_build_limit:
        row.note = f"stopped after {args.live_build_limit} s (--live-build-limit); see {log}"
    elif returncode != 0 or squashfs is None:
        row.note = f"failed (exit {returncode}); see {log}"
    subprocess.run(["lb", "clean", "--purge"], cwd=folder, capture_output=True)
    return row


def print_table(rows: list[Row], reference: float | None, xz: tuple[float, float] | None) -> None:
    header = f"{'build':<34} {'seconds':>8} {'vs live-build':>13} {'cache hits':>10} {'image MiB':>9} {'squashfs MiB':>12}  note"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.seconds / reference:.2f}x" if reference and row.seconds else "-"
        image = f"{row.image_mib:.0f}" if row.image_mib else "-"
        squash = f"{row.squashfs_mib:.0f}" if row.squashfs_mib else "-"
        seconds = f"{row.seconds:.0f}" if row.seconds is not None else "-"
        print(f"{row.name:<34} {seconds:>8} {ratio:>13} {row.cached or '-':>10} {image:>9} {squash:>12}  {row.note}")
    if xz:
        print(f"\ncold image as .img.xz (xz -6 -T0): {xz[0]:.0f} MiB, compressed in {xz[1]:.0f}s")
    for row in rows:
        if row.stages:
            print(f"{row.name} stages: " + ", ".join(f"{name} {secs:.0f}s" for name, secs in row.stages.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--board", default="qemu")
    parser.add_argument("--suite", default="trixie", help="for live-build; AmberPi takes it from the config")
    parser.add_argument("--config", type=Path, help="base AmberPi config (default: none, the project defaults)")
    parser.add_argument("--mirror", help="Debian mirror for both tools (default: the host's)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/amberpi-bench"), help="scratch folder (default %(default)s)")
    parser.add_argument("--skip-live-build", action="store_true", help="leave out the live-build comparison")
    parser.add_argument("--live-build-only", action="store_true", help="only the live-build comparison")
    parser.add_argument("--live-build-limit", type=int, default=5400, help="stop live-build after this many seconds (default %(default)s)")
    parser.add_argument("--docker", action="store_true", help="also a cold build through the docker backend (builder image already made)")
    parser.add_argument("--boot", action="store_true", help="then boot the test image under TCG to the login (bench/boot.py)")
    parser.add_argument("--boots", type=int, default=1, help="with --boot: how many boots, for a median (default %(default)s)")
    parser.add_argument("--raspi3b", action="store_true", help="then boot the pi3 test image under -M raspi3b, its chain timed")
    args = parser.parse_args()
    if args.boots < 1:
        parser.error("--boots must be at least 1")
    if os.geteuid() != 0:
        sys.exit("bench: run as root (native builds and live-build both need it)")
    work: Path = args.work.resolve()
    if not args.live_build_only:
        for cache in ("cache", "cache-docker"):
            shutil.rmtree(work / cache, ignore_errors=True)
        for old in work.glob("out-*"):
            shutil.rmtree(old)
    work.mkdir(parents=True, exist_ok=True)

    rows = []
    xz = None
    if not args.live_build_only:
        config = write_config(work, args.config, "#!/bin/sh\necho 'bench hook, first version'\n")
        rows.append(amberpi_build("cold", "cold (empty cache)", work, config, args))
        cold_image = next((work / "out-cold").glob("*.img"), None)
        write_config(work, args.config, "#!/bin/sh\necho 'bench hook, edited'\n")
        rows.append(amberpi_build("hook-edit", "after editing one hook", work, config, args))
        rows.append(amberpi_build("no-op", "no-op (nothing changed)", work, config, args))
        xz = xz_size(cold_image) if cold_image else None
        if args.docker:
            rows.append(amberpi_build("docker-cold", "docker backend, cold", work, config, args, backend="docker"))
    reference = None
    if not args.skip_live_build:
        lb_row = live_build(work, args)
        rows.append(lb_row)
        reference = lb_row.seconds if not lb_row.note else None
    print_table(rows, reference, xz)
    cold_log = next((work / "out-cold").glob("*.build.log"), None)
    if cold_log is not None:
        print("\nwhere the cold build's time went (bench/buildlog.py):", flush=True)
        subprocess.run([sys.executable, str(REPO / "bench/buildlog.py"), str(cold_log)], check=False)
    result = {"rows": [asdict(r) for r in rows], "xz_mib": xz[0] if xz else None}
    (work / ("live-build.json" if args.live_build_only else "bench.json")).write_text(json.dumps(result, indent=2))
    booted = boot_figures(work, "--boots", str(args.boots)) if args.boot else True
    booted_pi3 = boot_figures(work / "raspi3b", "--raspi3b", "--boots", "1") if args.raspi3b else True
    return 0 if all(not row.note for row in rows) and booted and booted_pi3 else 1


def boot_figures(work: Path, *options: str) -> bool:
    """bench/boot.py in the test environment (it drives the console with pexpect), after the builds."""
    venv_python = REPO / ".venv/bin/python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    print(flush=True)
    return subprocess.run([python, str(REPO / "bench/boot.py"), *options, "--work", str(work)], check=False).returncode == 0


if __name__ == "__main__":
    sys.exit(main())
