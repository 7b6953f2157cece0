"""Fixtures shared by the unit tests (tests/conftest.py holds the suite-wide ones)."""

from __future__ import annotations

import io

import pytest

import amberpi.nativecopy
from amberpi.log import LOG
from tests.fakes import (
    FakeArchive,
    fake_tools,  # noqa: F401 - a fixture: importing it here lets every unit test use it
    use_fake_archive,
)


@pytest.fixture(autouse=True)
def fake_archive(monkeypatch: pytest.MonkeyPatch) -> FakeArchive:
    """No unit test reads a real mirror: the archive's Release files come from a FakeArchive (amberpi/archive.py)."""
    return use_fake_archive(monkeypatch)


@pytest.fixture(autouse=True)
def no_native_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's busybox does not change a unit test: update-initramfs's copies stay as they are
    (tests/unit/test_nativecopy.py puts a static busybox in place where it wants one)."""
    monkeypatch.setattr(amberpi.nativecopy, "static_busybox", lambda: None)


@pytest.fixture
def quiet_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The progress log written to a string instead of stderr; its text is the fixture's value.

    Not autouse: modules that want it say `pytestmark = pytest.mark.usefixtures("quiet_log")`.
    """
    stream = io.StringIO()
    monkeypatch.setattr(LOG, "stream", stream)
    return stream
