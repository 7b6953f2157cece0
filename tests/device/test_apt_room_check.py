"""apt's pre-install hook: packages that would not fit the overlay's upper layer stop apt before dpkg runs.

Real .deb files made with dpkg-deb; df is faked to report the free space of a small p4.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.device.devicekit import ROOTFS, SHELLS

HOOK = ROOTFS / "usr/lib/amberpi/apt-room-check"
APT_CONF = ROOTFS / "etc/apt/apt.conf.d/10amberpi-room"


def make_deb(folder: Path, package: str, installed_kib: int) -> Path:
    tree = folder / package
    (tree / "DEBIAN").mkdir(parents=True)
    control = f"Package: {package}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nInstalled-Size: {installed_kib}\nDescription: t\n"
    (tree / "DEBIAN" / "control").write_text(control)
    deb = folder / f"{package}_1_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def run_hook(shell: list[str], tmp_path: Path, debs: list[Path], free_kib: int) -> subprocess.CompletedProcess[str]:
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir(exist_ok=True)
    df = fakebin / "df"
    header = "Filesystem 1024-blocks Used Available Capacity Mounted on"
    df.write_text(f"#!/bin/sh\necho '{header}'\necho 'overlay 1000000 1 {free_kib} 1% /'\n")
    df.chmod(0o755)
    stdin = "".join(f"{deb}\n" for deb in debs)
    env = {"PATH": f"{fakebin}:/usr/bin:/bin"}
    return subprocess.run([*shell, str(HOOK)], input=stdin, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_packages_that_fit_go_ahead(shell: list[str], tmp_path: Path) -> None:
    debs = [make_deb(tmp_path, "small-a", 1000), make_deb(tmp_path, "small-b", 2000)]
    assert run_hook(shell, tmp_path, debs, free_kib=200_000).returncode == 0


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_packages_that_do_not_fit_stop_apt_before_dpkg(shell: list[str], tmp_path: Path) -> None:
    debs = [make_deb(tmp_path, "big-a", 300_000), make_deb(tmp_path, "big-b", 200_000)]
    result = run_hook(shell, tmp_path, debs, free_kib=400_000)
    assert result.returncode == 1
    assert "amberpi: refused: 2 package(s) need 488 MiB on / (and 64 MiB to spare), but only 390 MiB are free there" in result.stderr
    assert "nothing was installed" in result.stderr


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_kernel_needs_room_for_its_initrd_too(shell: list[str], tmp_path: Path) -> None:
    """A backports kernel at the default 1 GiB p4: its modules fit, and the initrd its postinst writes must as well."""
    debs = [make_deb(tmp_path, "linux-image-6.16.3+bpo-arm64", 100_000)]
    assert run_hook(shell, tmp_path, debs, free_kib=100_000 + 65536 + 65536).returncode == 0
    assert run_hook(shell, tmp_path, debs, free_kib=100_000 + 65536 + 1000).returncode == 1


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_nothing_to_judge_lets_apt_go_on(shell: list[str], tmp_path: Path) -> None:
    """Lines apt may send that are not .deb files, or no packages at all (a removal)."""
    assert run_hook(shell, tmp_path, [tmp_path / "missing.deb", Path("**CONFIGURE**")], free_kib=0).returncode == 0


def test_apt_runs_it_before_dpkg() -> None:
    assert 'DPkg::Pre-Install-Pkgs { "/usr/lib/amberpi/apt-room-check"; };' in APT_CONF.read_text()
    assert HOOK.stat().st_mode & 0o111, "apt runs it directly"
