"""The build's default timestamp: the newest installed package's date, the same for the same versions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amberpi.errors import StageError
from amberpi.stages.customize import newest_package_date


def add_package(tree: Path, name: str, date: int) -> None:
    changelog = tree / "usr/share/doc" / name / "changelog.Debian.gz"
    changelog.parent.mkdir(parents=True, exist_ok=True)
    changelog.write_bytes(b"")
    os.utime(changelog, (date, date))


def test_newest_package_decides(tmp_path: Path) -> None:
    add_package(tmp_path, "libc6", 1_750_000_000)
    add_package(tmp_path, "linux-image-arm64", 1_792_725_771)
    add_package(tmp_path, "dpkg", 1_760_000_000)
    # A file written at build time (a log, a hook's output) has no say.
    (tmp_path / "usr/share/doc/README").write_text("now")
    assert newest_package_date(tmp_path) == 1_792_725_771


def test_no_packages_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no package changelog") as raised:
        newest_package_date(tmp_path)
    assert "source_date_epoch" in str(raised.value.hint)
