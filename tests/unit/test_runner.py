"""The test command's own checks (tests/run.py), before it installs or runs anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi.hostsetup import write_backports_source
from tests.run import QEMU_MIN, SUITES, disk_shortfall, host_codename, qemu_version


def test_a_full_run_on_a_small_disk_is_refused_with_how_to_fix() -> None:
    message = disk_shortfall(SUITES, need_gib=1 << 40)
    assert message is not None
    assert "GiB free in" in message and "TMPDIR" in message and "build.py clean -f" in message


def test_enough_disk_passes() -> None:
    assert disk_shortfall(SUITES, need_gib=0) is None


def test_light_suites_need_no_disk_check() -> None:
    assert disk_shortfall(["tests/unit", "tests/device/test_media_wait.py", "-q"], need_gib=1 << 40) is None
    assert disk_shortfall(["tests/unit", "tests/boot"], need_gib=1 << 40) is not None


def test_option_values_are_not_taken_for_suites() -> None:
    # The README's example: `config` is the -k expression, not a heavy suite.
    assert disk_shortfall(["tests/unit", "-k", "config"], need_gib=1 << 40) is None
    assert disk_shortfall(["-k", "config"], need_gib=1 << 40) is not None


def test_the_qemu_version_and_the_host_release_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "qemu-system-aarch64"
    fake.write_text('#!/bin/sh\necho "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    version = qemu_version()
    assert version == (7, 2) and version < QEMU_MIN
    os_release = tmp_path / "os-release"
    os_release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n')
    assert host_codename(os_release) == "bookworm"


def test_the_backports_source_names_the_suite_and_the_hosts_mirror(tmp_path: Path) -> None:
    target = tmp_path / "amberpi-backports.sources"
    write_backports_source(target, "bookworm", "http://mirror.example/debian", "the boot tests' emulator")
    fields = dict(line.split(": ", 1) for line in target.read_text().splitlines() if ": " in line and not line.startswith("#"))
    assert fields == {
        "Types": "deb",
        "URIs": "http://mirror.example/debian",
        "Suites": "bookworm-backports",
        "Components": "main",
        "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg",
    }
