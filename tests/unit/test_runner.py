"""The test command's own checks (tests/run.py), before it installs or runs anything."""

from __future__ import annotations

from tests.run import SUITES, disk_shortfall


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
