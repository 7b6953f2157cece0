"""Fixtures shared by the unit tests (tests/conftest.py holds the suite-wide ones)."""

from __future__ import annotations

import io

import pytest

from amberpi.log import LOG
from tests.fakes import fake_tools  # noqa: F401 - a fixture: importing it here lets every unit test use it


@pytest.fixture
def quiet_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The progress log written to a string instead of stderr; its text is the fixture's value.

    Not autouse: modules that want it say `pytestmark = pytest.mark.usefixtures("quiet_log")`.
    """
    stream = io.StringIO()
    monkeypatch.setattr(LOG, "stream", stream)
    return stream
