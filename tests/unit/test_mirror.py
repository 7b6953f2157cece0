"""The host's Debian mirror is found in its apt sources; nothing is hard-coded."""

from __future__ import annotations

from pathlib import Path

from amberpi.mirror import debootstrap_default_mirror, detect_host_mirrors


def test_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
    )
    assert detect_host_mirrors(tmp_path) == ("http://mirror.example/debian", "http://mirror.example/debian-security")


def test_one_line_sources_with_options(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://other.example/debian trixie main\n"
        "deb http://other.example/debian-security trixie-security main\n"
        "deb https://vendor.example/apt stable main\n"
    )
    assert detect_host_mirrors(tmp_path) == ("http://other.example/debian", "http://other.example/debian-security")


def test_no_sources(tmp_path: Path) -> None:
    assert detect_host_mirrors(tmp_path) == ("", "")


def test_debootstrap_default(tmp_path: Path) -> None:
    script = tmp_path / "debootstrap"
    script.write_text('#!/bin/sh\nDEF_MIRROR="http://x.example/debian"\n')
    assert debootstrap_default_mirror(script) == "http://x.example/debian"
    assert debootstrap_default_mirror(tmp_path / "missing") == ""
