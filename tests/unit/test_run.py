"""amberpi.run: the child's environment is exactly the one built for it; leftovers never hang a build."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from amberpi.errors import ToolError, ToolMissing, ToolTimeout
from amberpi.run import run
from tests.fakes import process_gone


def test_the_child_gets_no_variable_of_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: plumbum merged this process's whole environment into every child (unkeyed inputs)."""
    monkeypatch.setenv("AMBERPI_LEAK_PROBE", "leaked")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    child = dict(line.split("=", 1) for line in run(["env"], capture=True).splitlines() if "=" in line)
    assert "AMBERPI_LEAK_PROBE" not in child
    assert "SOURCE_DATE_EPOCH" not in child, "a stage passes the build's timestamp itself, from its keyed inputs"
    assert child["LC_ALL"] == "C.UTF-8" and child["PATH"].startswith("/usr/local/sbin")
    assert run(["env"], env={"SOURCE_DATE_EPOCH": "99"}, capture=True).count("SOURCE_DATE_EPOCH=99") == 1


def test_proxies_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    assert "http_proxy=http://proxy:3128" in run(["env"], capture=True)


def test_a_background_leftover_does_not_hang_the_command() -> None:
    """Before: run() read the output until every holder of the pipe closed it: a hook's daemon hung the build."""
    started = time.monotonic()
    run(["sh", "-c", "sleep 60 & echo started"], label="hook")
    assert time.monotonic() - started < 15


def test_failure_carries_argv_status_and_output() -> None:
    with pytest.raises(ToolError) as error:
        run(["sh", "-c", "echo one; echo two >&2; exit 3"])
    assert error.value.code == 3 and error.value.output_tail == ["one", "two"]
    assert error.value.argv == ["sh", "-c", "echo one; echo two >&2; exit 3"]


def test_stdin_to_a_tool_that_does_not_read_it_is_no_crash() -> None:
    """Before: a tool that exited without reading its input raised BrokenPipeError, not ToolError."""
    with pytest.raises(ToolError):
        run(["sh", "-c", "exit 4"], input=b"x" * (1 << 20))


def test_capture_keeps_stdout_and_logs_stderr() -> None:
    assert run(["sh", "-c", "echo out; echo err >&2"], capture=True) == "out\n"


def test_a_missing_tool_names_its_package() -> None:
    with pytest.raises(ToolMissing) as error:
        run(["mksquashfs-not-here"])
    assert "mksquashfs-not-here" in error.value.what


def test_a_command_past_its_timeout_is_killed_with_its_process_group(tmp_path: Path) -> None:
    """Before: run() had no time limit, so a hook that never ended hung the build for good."""
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as error:
        run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo started; sleep 300"], label="hook", timeout=1)
    assert time.monotonic() - started < 10
    assert error.value.timeout == 1 and "ran longer than 1s and was killed" in error.value.what
    assert error.value.output_tail == ["started"], "what it printed before is kept"
    assert process_gone(int(pidfile.read_text())), "what it started in its process group is killed too"


def test_a_command_within_its_timeout_is_left_alone() -> None:
    assert run(["sh", "-c", "echo quick"], capture=True, timeout=30) == "quick\n"
