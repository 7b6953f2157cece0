"""The error hierarchy: every failure says what, where and how to fix it."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class AmberPiError(Exception):
    """Base of everything AmberPi raises; exit code 1."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint

    def render(self) -> str:
        lines = [f"error: {self.what}"]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.hint:
            lines.append(f"  fix:   {self.hint}")
        return "\n".join(lines + notes_of(self))


def notes_of(exc: BaseException) -> list[str]:
    """What was added to an error while unwinding (cleanup that failed too), as extra lines."""
    return [f"  note:  {note}" for note in getattr(exc, "__notes__", [])]


def describe(exc: BaseException) -> str:
    return exc.what if isinstance(exc, AmberPiError) else f"{type(exc).__name__}: {exc}"


@contextmanager
def cleanup_after(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run `cleanup` on the way out of the block, whatever happens.

    When the block failed, a failing cleanup is added to that error as a note
    instead of replacing it: the first error is what the user must see.
    """
    try:
        yield
    except BaseException as original:
        try:
            cleanup()
        except Exception as failure:  # noqa: BLE001 - reported on the original error, never lost
            original.add_note(f"cleaning up after this error failed too: {describe(failure)}")
        raise
    cleanup()


class UsageError(AmberPiError):
    """Bad command line or environment the user must change; exit code 2."""

    exit_code = 2


class OutputError(AmberPiError):
    """The output folder cannot take the build's files (full, read-only); exit code 1."""


class ConfigProblem:
    """One validation problem in a config file, sortable by location."""

    def __init__(self, file: str, key_path: str, message: str, hint: str | None = None) -> None:
        self.file = file
        self.key_path = key_path
        self.message = message
        self.hint = hint

    def sort_key(self) -> tuple[str, str]:
        return (self.file, self.key_path)

    def __str__(self) -> str:
        text = f"{self.file}: {self.key_path}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(AmberPiError):
    """One or more config problems, all reported at once; exit code 2."""

    exit_code = 2

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = sorted(problems, key=ConfigProblem.sort_key)
        count = len(self.problems)
        super().__init__(
            f"{count} configuration problem{'s' if count != 1 else ''}",
            hint="correct the keys named above; `python build.py summary` shows the resolved config",
        )

    def render(self) -> str:
        lines = [f"error: {self.what}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines.append(f"  fix:   {self.hint}")
        return "\n".join(lines + notes_of(self))


class ToolError(AmberPiError):
    """A command failed: argv, exit status, the tail of its output, the log path."""

    def __init__(
        self,
        argv: Sequence[str],
        code: int,
        output_tail: Sequence[str],
        log: Path | None,
        *,
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.code = code
        self.output_tail = list(output_tail)
        self.log = log
        status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        super().__init__(f"`{' '.join(self.argv)}` failed ({status})", where=where, hint=hint)

    def render(self) -> str:
        lines = [f"error: {self.what}"]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.output_tail:
            lines.append("  last output:")
            lines += [f"    | {line}" for line in self.output_tail]
        if self.log and self.log.exists():
            lines.append(f"  full log: {self.log}")
        if self.hint:
            lines.append(f"  fix:   {self.hint}")
        return "\n".join(lines + notes_of(self))


class ToolTimeout(ToolError):
    """A command ran past its time limit and was killed, with every process of its group."""

    def __init__(
        self,
        argv: Sequence[str],
        timeout: float,
        output_tail: Sequence[str],
        log: Path | None,
        *,
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(argv, -signal.SIGKILL, output_tail, log, where=where, hint=hint)
        self.timeout = timeout
        self.what = f"`{' '.join(self.argv)}` ran longer than {timeout:g}s and was killed, with the processes it started"
        self.args = (self.what,)


class ToolMissing(AmberPiError):
    """A host tool is not installed; names the Debian package that has it."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(
            f"host tool `{tool}` is not installed",
            hint=f"install the Debian package `{package}` (apt-get install {package})",
        )
        self.tool = tool
        self.package = package


class StageError(AmberPiError):
    """A stage failed for a reason that is not a single tool's exit status."""


NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", as tools print it


def ran_out_of_room(exc: BaseException) -> bool:
    """Whether a failure was a full file system: Python's own ENOSPC, or a tool that said so
    (mksquashfs, mkfs, dpkg... remove what they wrote, so the room is back by the time we look)."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    lines = [*getattr(exc, "output_tail", []), str(exc)]
    return any(NO_SPACE in line for line in lines)


class OutOfRoomError(AmberPiError):
    """A stage filled a file system it writes to: the cache folder or the workspace."""

    def __init__(self, stage: str, failure: BaseException, places: Sequence[tuple[str, Path]], hint: str) -> None:
        def free(path: Path) -> str:
            try:
                stat = os.statvfs(path)
            except OSError:
                return "gone"
            return f"{stat.f_bavail * stat.f_frsize / 2**20:.0f} MiB free now"

        super().__init__(
            f"stage {stage} ran out of room: {NO_SPACE}",
            where=", ".join(f"{what} {path} ({free(path)})" for what, path in places),
            hint=hint,
        )
        said = describe(failure).splitlines()[0]
        last_output = [line.strip() for line in getattr(failure, "output_tail", []) if NO_SPACE in line]
        self.add_note(f"the stage's own error: {said}" + (f": {last_output[-1]}" if last_output else ""))


class CacheError(AmberPiError):
    """The build cache is unusable (permissions, corrupt entry that cannot be removed)."""


class LockError(AmberPiError):
    """Another build holds a lock this build needs."""


class BackendError(AmberPiError):
    """The build backend (native host or Docker engine) cannot run the build."""
