"""Phases of a boot read off the console: a line that never shows merges its phase into the
next one; a stop pattern (a kernel oops) ends the timing early."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest

from tests.bootphases import RASPI3B_PHASES, VIRT_PHASES, Phase, time_phases
from tests.vm import VM


class ScriptedConsole:
    """Shows the given console lines in order, as pexpect would: expect() returns the index of
    the first pattern, among those asked for, that the next shown line matches."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def expect(self, patterns: list[str], timeout: float) -> int:
        assert timeout > 0
        while self.lines:
            line = self.lines.pop(0)
            for index, pattern in enumerate(patterns):
                if re.search(pattern, line):
                    return index
        raise AssertionError(f"the console ended while waiting for {patterns}")


def timed(lines: list[str], phases: tuple[Phase, ...] = VIRT_PHASES, stop_at: tuple[str, ...] = ()) -> tuple[dict[str, float], str | None]:
    return time_phases(cast(VM, cast(Any, ScriptedConsole(lines))), phases, 60, stop_at)


def test_every_phase_that_shows_is_timed_in_boot_order() -> None:
    lines = [
        "will be executed automatically",
        "EFI stub: Booting Linux Kernel...",
        "Run /init as init process",
        "\x1b[0;1;39mWelcome to \x1b[0m\x1b[1mDebian GNU/Linux 13 (trixie)\x1b[0m!",  # as systemd colours it
        "amberpi login: ",
    ]
    seconds, stopped = timed(lines)
    assert list(seconds) == ["firmware", "grub", "kernel", "initramfs", "systemd"] and stopped is None
    assert all(value >= 0 for value in seconds.values())


def test_a_phase_whose_line_never_shows_merges_into_the_next() -> None:
    seconds, _ = timed(["will be executed automatically", "Run /init as init process", "Welcome to Debian", "login: "])
    assert list(seconds) == ["firmware", "kernel", "initramfs", "systemd"]


def test_a_stop_pattern_ends_the_timing_with_the_phases_so_far() -> None:
    lines = ["Booting: mmc 0", "GNU GRUB  version 2.12", "EFI stub: Booting Linux Kernel...", "Internal error: Oops: 96000004"]
    seconds, stopped = timed(lines, RASPI3B_PHASES, stop_at=("Internal error: Oops",))
    assert list(seconds) == ["u-boot", "grub-load", "grub"] and stopped == "Internal error: Oops"


def test_a_boot_that_stalls_is_not_timed_as_done() -> None:
    with pytest.raises(AssertionError, match="console ended"):
        timed(["will be executed automatically"])
