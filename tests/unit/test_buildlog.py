"""The build log's time stamps, and bench/buildlog.py's account of where a build's time went."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from amberpi.log import Logger

REPO = Path(__file__).resolve().parents[2]

# What a build writes, shortened: debootstrap's and apt's lines, a hook's, the initramfs.
LOG_TEXT = """\
[    0.00] [ 1/12] bootstrap   Debootstrapping trixie arm64 (minbase) … (elapsed 0s)
[    1.00] debootstrap | I: Retrieving InRelease
[    3.00] debootstrap | I: Extracting base-files...
[    4.00] debootstrap | I: Unpacking required packages...
[    4.50] debootstrap | I: Unpacking base-files...
[   10.00] debootstrap | I: Configuring base-files...
[   15.00] [ 1/12] bootstrap   built in 15s
[   15.00] [ 2/12] packages    Installing 23 packages (initramfs deferred) … (elapsed 15s)
[   15.50] apt | Preparing to unpack .../linux-image-6.12.118+deb13-arm64_6.12.118-1_arm64.deb ...
[   16.50] apt | Unpacking linux-image-6.12.118+deb13-arm64 (6.12.118-1) ...
[   45.50] apt | Setting up udev (257.9-1) ...
[   50.50] apt | Processing triggers for libc-bin (2.41-12) ...
[   52.50] 10-a.hook.chroot | hello
[   60.50] $ chroot /tree update-initramfs -v -c -k 6.12.118+deb13-arm64
[   61.50] initramfs | update-initramfs: Generating /boot/initrd.img-6.12.118+deb13-arm64
[   62.50] initramfs | Adding module /lib/modules/6.12.118+deb13-arm64/kernel/fs/ext4/ext4.ko.xz
[   70.50] initramfs | Calling hook live-boot
[   72.50] initramfs | Adding binary /usr/bin/blkid
[   80.50] initramfs | Calling hook /etc/initramfs-tools/hooks/amberpi-modules
[   82.50] initramfs | Building cpio /boot/initrd.img-6.12.118+deb13-arm64.new initramfs
[   90.50] [ 2/12] packages    built in 75s
"""


def buildlog() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_buildlog", REPO / "bench" / "buildlog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_line_of_the_build_log_carries_the_seconds_since_it_was_opened(tmp_path: Path) -> None:
    log = Logger()
    log.open_log(tmp_path / "build.log")
    try:
        log.command("debootstrap --arch=arm64")
        log.tool_line("apt", "Unpacking udev (257.9-1) ...")
        log.note("[ 2/12] packages    built in 1s")
    finally:
        log.close_log()
    lines = (tmp_path / "build.log").read_text().splitlines()
    assert [re.sub(r"^\[\s*\d+\.\d\d\] ", "", line) for line in lines] == [
        "$ debootstrap --arch=arm64",
        "apt | Unpacking udev (257.9-1) ...",
        "[ 2/12] packages    built in 1s",
    ]
    stamps = [float(line[1:9]) for line in lines]
    assert stamps == sorted(stamps) and stamps[0] < 1


def test_time_is_charged_to_the_line_before_the_silence_by_stage_kind_and_package() -> None:
    module = buildlog()
    result = module.profile(module.read_steps(LOG_TEXT.splitlines()), top=3)
    assert result.total == pytest.approx(90.5)
    assert result.stages == pytest.approx({"bootstrap": 15.0, "packages": 75.5})
    assert result.kinds["bootstrap"] == pytest.approx({"other": 1.0, "download": 2.0, "extract": 1.0, "unpack": 6.0, "configure": 5.0})
    assert result.kinds["packages"] == pytest.approx(
        {"other": 0.5, "unpack": 30.0, "configure": 5.0, "triggers": 2.0, "hooks": 8.0, "initramfs": 30.0}
    )
    # debootstrap's "Unpacking required packages..." names no package.
    assert result.packages == [("linux-image-6.12.118+deb13-arm64", 30.0), ("base-files", 11.5), ("udev", 5.0)]
    assert result.initramfs == pytest.approx(
        {
            "before its hooks (modules, base binaries)": 10.0,
            "hook live-boot": 10.0,
            "hook amberpi-modules": 2.0,
            "after its hooks (depmod, cpio, compression)": 8.0,
        }
    )
    assert [(round(s.seconds), s.kind) for s in result.longest] == [(29, "unpack"), (8, "hooks"), (8, "initramfs")]


def test_the_command_prints_the_account_and_refuses_an_unstamped_log(tmp_path: Path) -> None:
    stamped, unstamped = tmp_path / "a.build.log", tmp_path / "old.build.log"
    stamped.write_text(LOG_TEXT)
    unstamped.write_text("apt | Unpacking udev (257.9-1) ...\n")
    script = [sys.executable, str(REPO / "bench" / "buildlog.py")]
    shown = subprocess.run([*script, str(stamped)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^packages\s+76\s+unpack 30, initramfs 30, hooks 8, configure 5, triggers 2", shown, re.M), shown
    assert "linux-image-6.12.118+deb13-arm64 30.0" in shown
    refused = subprocess.run([*script, str(unstamped)], capture_output=True, text=True)
    assert refused.returncode == 1 and "no time-stamped lines" in refused.stderr
