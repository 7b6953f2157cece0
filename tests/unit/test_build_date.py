"""The build's default timestamp: the newest installed package's date, the same for the same versions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amberpi.errors import StageError
from amberpi.stages.customize import settle_dates
from amberpi.stages.epoch import newest_package_date


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


def test_emptied_folders_and_account_dates_follow_the_epoch(tmp_path: Path) -> None:
    """Whether mkinitramfs ran in /var/tmp (or the initrd came from the cache), and on which day
    the accounts were made, must not show in the image."""
    epoch = 1_792_725_771  # day 20749
    for folder in ("tmp", "var/tmp"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/shadow").write_text(
        "root:$6$salt$hash:20779:0:99999:7:::\nsshd:!:20779::::::\nold:*:19000:0:99999:7:::\nforced:x:0:0:99999:7:::\nnodate:*::0:99999:7:::\n"
    )
    (tmp_path / "etc/shadow").chmod(0o640)
    settle_dates(tmp_path, epoch)
    assert {int((tmp_path / f).stat().st_mtime) for f in ("tmp", "var/tmp")} == {epoch}
    days = [line.split(":")[2] for line in (tmp_path / "etc/shadow").read_text().splitlines()]
    assert days == ["20749", "20749", "19000", "0", ""]
    assert (tmp_path / "etc/shadow").stat().st_mode & 0o777 == 0o640
