"""The only module that starts processes. plumbum stays inside it.

Commands are argument lists, never shell strings. Each line a tool prints is
written to the build log as `label | line`; a failure raises ToolError with
the command, its exit status and the last lines it printed.
"""

from __future__ import annotations

import collections
import os
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from plumbum import local
from plumbum.commands.processes import CommandNotFound

from amberpi.errors import ToolError, ToolMissing, ToolTimeout
from amberpi.log import LOG
from amberpi.tools import TOOL_PACKAGES

TAIL_LINES = 40

# qemu-user's default CPU ("max") emulates pointer authentication, which every
# trixie arm64 binary uses: measured here, perl ran 25x slower than on cortex-a72,
# an armv8.0 core without it that still runs everything Debian's arm64 baseline
# allows. QEMU_CPU in the environment overrides it; native arm64 hosts ignore it.
EMULATED_CPU = "cortex-a72"

# Children currently running, so an interrupt can stop them before teardown.
_RUNNING: set[subprocess.Popen[bytes]] = set()


# Passed through from the build's environment: they change how packages are fetched, not
# what is built, so no cache key holds them. SOURCE_DATE_EPOCH is not among them: a stage
# that uses the build's timestamp passes it itself, from its keyed inputs.
PASSED_THROUGH = ("http_proxy", "https_proxy", "no_proxy")


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child environment built explicitly rather than inherited wholesale."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "TERM": "dumb",
        "QEMU_CPU": os.environ.get("QEMU_CPU", EMULATED_CPU),
    }
    for name in PASSED_THROUGH:
        if name in os.environ:
            env[name] = os.environ[name]
    if extra:
        env.update(extra)
    return env


def which(tool: str) -> str | None:
    try:
        return str(local.which(tool))
    except CommandNotFound:
        return None


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = False,
    label: str | None = None,
    ok: Sequence[int] = (0,),
    where: str | None = None,
    hint: str | None = None,
    tool_log: Path | None = None,
    timeout: float | None = None,
) -> str:
    """Run argv, stream its output to the log, return stdout when `capture`.

    The child gets exactly base_env(env): nothing else of this process's environment.
    After `timeout` seconds it is killed with its whole process group (what it started
    and left there) and ToolTimeout is raised.
    """
    args = [str(a) for a in argv]
    label = label or Path(args[0]).name
    program = args[0] if "/" in args[0] else which(args[0])
    if program is None:
        raise ToolMissing(args[0], TOOL_PACKAGES.get(Path(args[0]).name, args[0]))
    LOG.command(shlex.join(args))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(
        [program, *args[1:]],
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture else subprocess.STDOUT,
        cwd=str(cwd) if cwd else None,
        env=base_env(env),
        start_new_session=True,
    )
    _RUNNING.add(process)
    try:
        if input is not None:
            assert process.stdin
            try:
                process.stdin.write(input)
                process.stdin.close()
            except BrokenPipeError:
                pass  # the tool stopped reading; its exit status tells what happened
        deadline = None if timeout is None else time.monotonic() + timeout
        captured, timed_out = pump(process, label, tail, capture, deadline)
        code = process.wait()
    except BaseException:
        stop_process(process)
        raise
    finally:
        _RUNNING.discard(process)
    if timed_out:
        assert timeout is not None
        raise ToolTimeout(args, timeout, list(tail), LOG.log_path, where=where, hint=hint)
    if code not in ok:
        if tool_log and tool_log.exists():
            tail.extend(tool_log.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        raise ToolError(args, code, list(tail), LOG.log_path, where=where, hint=hint)
    return captured


# After the command itself has exited, how long what it left behind may keep writing
# to its output before it is stopped: a hook that starts a daemon must not hang the build.
LINGER_SECONDS = 3.0


def pump(
    process: subprocess.Popen[bytes], label: str, tail: collections.deque[str], capture: bool, deadline: float | None = None
) -> tuple[str, bool]:
    """Log the child's output line by line (stderr when capturing stdout) until it ends.

    Ends when every writer has closed the pipes, or LINGER_SECONDS after the command
    exited: then whatever it left running in its process group is killed. At `deadline`
    (time.monotonic()) the command's whole process group is killed. Returns what was
    captured, and whether the deadline killed the command.
    """
    assert process.stdout is not None
    streams: dict[IO[bytes], bytearray] = {process.stdout: bytearray()}
    if capture and process.stderr:
        streams[process.stderr] = bytearray()
    captured = bytearray()
    log_stream = process.stderr if capture else process.stdout
    exited_at: float | None = None
    timed_out = False
    while streams:
        if exited_at is None and process.poll() is not None:
            exited_at = time.monotonic()
        if exited_at is None and deadline is not None and time.monotonic() > deadline:
            kill_group(process.pid)
            timed_out, deadline = True, None
        if exited_at is not None and time.monotonic() - exited_at > LINGER_SECONDS:
            kill_group(process.pid)
            if time.monotonic() - exited_at > LINGER_SECONDS + 2:
                break  # a writer left its process group: stop listening rather than hang
        ready, _, _ = select.select(list(streams), [], [], 0.2)
        for stream in ready:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                del streams[stream]
                continue
            if stream is not log_stream:
                captured += chunk
                continue
            buffer = streams[stream]
            buffer += chunk
            *lines, rest = bytes(buffer).split(b"\n")
            streams[stream] = bytearray(rest)
            for raw in lines:
                log_line(label, raw, tail)
    for stream, buffer in streams.items():
        if buffer and stream is log_stream:
            log_line(label, bytes(buffer), tail)
    return captured.decode(errors="replace"), timed_out


def log_line(label: str, raw: bytes, tail: collections.deque[str]) -> None:
    line = raw.decode(errors="replace").rstrip("\r")
    tail.append(line)
    LOG.tool_line(label, line)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGINT the child's process group, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_all() -> None:
    """Stop every child still running (used when the build is interrupted)."""
    for process in list(_RUNNING):
        stop_process(process)
