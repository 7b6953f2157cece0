"""The hooks that call amberpi-kernel from apt: initramfs-tools' post-update.d and the kernel's postinst.d.

A fake amberpi-kernel records its calls and exits as told, so each hook's own logic is what is tested.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOTFS = REPO / "amberpi/device/rootfs"
POST_UPDATE = ROOTFS / "etc/initramfs/post-update.d/amberpi-kernel"
KERNEL_POSTINST = ROOTFS / "etc/kernel/postinst.d/zz-amberpi-kernel"
SHELLS = [["dash"], ["busybox", "sh"]]
VERSION = "6.12.48+deb13-arm64"


Outcome = tuple[subprocess.CompletedProcess[str], list[str]]  # the hook's run, and amberpi-kernel's calls


def run_hook(tmp_path: Path, shell: list[str], hook: Path, tool_status: int, **env: str) -> Outcome:
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    tool = tmp_path / "amberpi-kernel"
    tool.write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho "amberpi-kernel: refused: a reason" >&2\nexit {tool_status}\n')
    tool.chmod(0o755)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("boot=live amberpi.id=1a2b3c4d\n")
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "AMBERPI_KERNEL_TOOL": str(tool), "AMBERPI_CMDLINE_FILE": str(cmdline), **env}
    result = subprocess.run([*shell, str(hook), VERSION, f"/boot/initrd.img-{VERSION}"], capture_output=True, text=True, env=environment)
    return result, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_post_update_writes_once_outside_a_kernel_package(shell: list[str], tmp_path: Path) -> None:
    result, calls = run_hook(tmp_path, shell, POST_UPDATE, 0)
    assert result.returncode == 0 and calls == [f"initramfs-updated {VERSION}"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("variable", ["DEB_MAINT_PARAMS", "INITRAMFS_TOOLS_KERNEL_HOOK"])
def test_post_update_leaves_a_kernel_package_to_its_own_hook(shell: list[str], tmp_path: Path, variable: str) -> None:
    """trixie's linux-image postinst runs update-initramfs with DEB_MAINT_PARAMS set: zz-amberpi-kernel writes p3 once."""
    result, calls = run_hook(tmp_path, shell, POST_UPDATE, 0, **{variable: "configure 6.12.47+deb13"})
    assert result.returncode == 0 and calls == []


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("hook", [POST_UPDATE, KERNEL_POSTINST], ids=["post-update", "kernel-postinst"])
def test_a_refusal_does_not_fail_apt(shell: list[str], tmp_path: Path, hook: Path) -> None:
    """A refused write leaves p3 as it was, still bootable; failing the hook would leave dpkg half-configured."""
    extra = {"DEB_MAINT_PARAMS": "configure"} if hook == KERNEL_POSTINST else {}
    result, calls = run_hook(tmp_path, shell, hook, 3, **extra)
    assert result.returncode == 0 and len(calls) == 1
    assert "refused: a reason" in result.stderr


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("hook", [POST_UPDATE, KERNEL_POSTINST], ids=["post-update", "kernel-postinst"])
def test_a_failed_write_fails_the_hook(shell: list[str], tmp_path: Path, hook: Path) -> None:
    extra = {"DEB_MAINT_PARAMS": "configure"} if hook == KERNEL_POSTINST else {}
    result, _ = run_hook(tmp_path, shell, hook, 1, **extra)
    assert result.returncode == 1


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_kernel_postinst_acts_on_configure_only(shell: list[str], tmp_path: Path) -> None:
    result, calls = run_hook(tmp_path, shell, KERNEL_POSTINST, 0, DEB_MAINT_PARAMS="configure")
    assert result.returncode == 0 and calls == [f"install {VERSION}"]
    result, calls = run_hook(tmp_path, shell, KERNEL_POSTINST, 0, DEB_MAINT_PARAMS="abort-upgrade")
    assert result.returncode == 0 and calls == []
