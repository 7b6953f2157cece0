"""What the device-side tests share: file-backed partitions, GRUB's environment block, fake tools.

Self-contained on purpose (host tools only, no amberpi build modules): p1 is a
real FAT made by mkfs.vfat with grub/grubenv copied in by mtools, read back by
mtools and GRUB's own grub-editenv, as on a device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOTFS = REPO / "amberpi/device/rootfs"
LIB = ROOTFS / "usr/lib/amberpi/lib.sh"
LIVE_BOOT_DISK = ROOTFS / "usr/lib/amberpi/live-boot-disk.sh"
SBIN = ROOTFS / "usr/sbin"
SHELLS = [["dash"], ["busybox", "sh"]]
IMAGE_ID = "1a2b3c4d"
SYSTEM_LABEL = "AMBERPI_SYS_1A2B3C4D"
KERNEL_LABEL = "AMBERPI_KRN_1A2B3C4D"
PERSISTENCE_LABEL = "amberpi-1a2b3c4d"
FACTORY = "6.12.1+deb13-arm64"
ENV_BYTES = 1024
CMDLINE = f"boot=live live-media=/dev/disk/by-label/{SYSTEM_LABEL} amberpi.id={IMAGE_ID} amberpi.kernel=current"


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (tests/run.py installs it)")


def grubenv_block(variables: dict[str, str]) -> bytes:
    text = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in variables.items())
    return (text + "#" * (ENV_BYTES - len(text))).encode()


def make_boot_partition(path: Path, variables: dict[str, str]) -> int:
    """A FAT p1 holding grub/grubenv; returns the block's byte offset in it."""
    with path.open("wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "AMBERPI", str(path)], check=True, capture_output=True)
    block = grubenv_block(variables)
    source = path.parent / "grubenv.src"
    source.write_bytes(block)
    subprocess.run(["mmd", "-i", str(path), "::/grub"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(path), str(source), "::/grub/grubenv"], check=True, capture_output=True)
    source.unlink()
    data = path.read_bytes()
    offset = data.find(block[:512])
    assert offset > 0 and offset % 512 == 0 and data[offset : offset + ENV_BYTES] == block
    return offset


def read_grubenv(p1: Path) -> dict[str, str]:
    """GRUB's own reading of the block, from the FAT file as mtools sees it."""
    copy = p1.parent / "grubenv.read"
    subprocess.run(["mcopy", "-o", "-i", str(p1), "::/grub/grubenv", str(copy)], check=True, capture_output=True)
    assert copy.stat().st_size == ENV_BYTES
    listed = subprocess.run(["grub-editenv", str(copy), "list"], capture_output=True, text=True, check=True).stdout
    copy.unlink()
    return dict(line.split("=", 1) for line in listed.splitlines())


def make_ext4(path: Path, *, size_mib: int = 16, label: str = PERSISTENCE_LABEL, tree: Path | None = None) -> None:
    with path.open("wb") as handle:
        handle.truncate(size_mib << 20)
    args = ["mkfs.ext4", "-F", "-q", "-L", label]
    if tree is not None:
        args += ["-d", str(tree)]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def fake_tool(folder: Path, name: str, body: str) -> Path:
    """An executable sh script `name` in `folder` (put first on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)
    return tool


@dataclass
class Device:
    """A device's partitions, medium and run-time state as files, and a way to run its tools."""

    tmp: Path
    shell: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> Path:
        return self.tmp / "parts"

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def fakebin(self) -> Path:
        return self.tmp / "fakebin"

    def set_cmdline(self, cmdline: str) -> None:
        Path(self.env["AMBERPI_CMDLINE_FILE"]).write_text(cmdline + "\n")

    def set_state(self, **values: str) -> None:
        """This boot's /run/amberpi/mode, as the initramfs writes it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "mode").write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))

    def set_profile(self, **values: str) -> None:
        Path(self.env["AMBERPI_PROFILE"]).write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def set_mounts(self, *lines: str) -> None:
        Path(self.env["AMBERPI_MOUNTS_FILE"]).write_text("".join(line + "\n" for line in lines))

    def run(self, script: Path, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.shell, str(script), *args], capture_output=True, text=True, env=self.env, input=stdin, timeout=timeout)

    def tool(self, name: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return self.run(SBIN / name, *args, **kwargs)

    def grubenv(self) -> dict[str, str]:
        return read_grubenv(self.parts / "p1")

    def p1_bytes(self) -> bytes:
        return (self.parts / "p1").read_bytes()


FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl as amberpi-kernel confirm uses it: a unit is in the state its file in
# $AMBERPI_FAKE_UNITS holds (active when there is none), `failed` lists the units
# whose state is failed, and reboot is recorded.
units="${AMBERPI_FAKE_UNITS:?}"
case "$1" in
	is-active)
		[ "$2" = --quiet ] && { quiet=1; shift; }
		state=$(cat "$units/$2" 2>/dev/null || echo active)
		[ -n "${quiet:-}" ] || echo "$state"
		[ "$state" = active ]
		;;
	list-units) grep -lx failed "$units"/* 2>/dev/null | sed 's|.*/||; s|$| loaded failed failed a unit|' ;;
	reboot) echo reboot >> "$units/.calls" ;;
	*) echo "fake systemctl: $*" >&2; exit 1 ;;
esac
"""


def fake_systemctl(folder: Path, units: Path) -> dict[str, str]:
    """A fake systemctl in `folder`; unit states are files in `units`. Returns the environment it needs."""
    folder.mkdir(parents=True, exist_ok=True)
    units.mkdir(parents=True, exist_ok=True)
    tool = folder / "systemctl"
    tool.write_text(FAKE_SYSTEMCTL)
    tool.chmod(0o755)
    return {"AMBERPI_FAKE_UNITS": str(units)}


def make_device(tmp: Path, shell: list[str], grubenv: dict[str, str] | None = None) -> Device:
    require(shell[0], "mkfs.vfat", "mcopy", "grub-editenv")
    device = Device(tmp, shell)
    device.parts.mkdir()
    medium = tmp / "medium"
    (medium / ".disk").mkdir(parents=True)
    variables = {"amberpi_state": "good", "amberpi_version": FACTORY} if grubenv is None else grubenv
    offset = make_boot_partition(device.parts / "p1", variables)
    (medium / ".disk" / "amberpi.conf").write_text(
        "\n".join(
            [
                "board=pi3",
                f"image_id={IMAGE_ID}",
                f"system_label={SYSTEM_LABEL}",
                f"kernel_label={KERNEL_LABEL}",
                f"persistence_label={PERSISTENCE_LABEL}",
                f"factory_version={FACTORY}",
                "device_trees=broadcom/bcm2837-rpi-3-b.dtb",
                f"grubenv_offset={offset}",
                "",
            ]
        )
    )
    device.fakebin.mkdir()
    device.env = {
        "PATH": f"{device.fakebin}:{os.environ['PATH']}",
        "AMBERPI_PART_DIR": str(device.parts),
        "AMBERPI_MEDIUM_DIR": str(medium),
        "AMBERPI_RUN_DIR": str(device.run_dir),
        "AMBERPI_CMDLINE_FILE": str(tmp / "cmdline"),
        "AMBERPI_PROFILE": str(tmp / "resilience.conf"),
        "AMBERPI_MOUNTS_FILE": str(tmp / "mounts"),
        "AMBERPI_DEV_DIR": str(tmp / "dev"),
        "AMBERPI_SYS_DIR": str(tmp / "sys"),
        "TMPDIR": str(tmp),
        "AMBERPI_CONFIRM_CONF": str(tmp / "kernel-confirm.conf"),
        **fake_systemctl(device.fakebin, tmp / "units"),
    }
    device.set_cmdline(CMDLINE)
    device.set_mounts("sysfs /sys sysfs rw 0 0")
    return device
