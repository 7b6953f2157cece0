"""Progress lines, notes and the full build log.

Everything human-facing goes to stderr; stdout is kept for data such as
`summary --json`. Every line any tool prints also lands in the build log,
stamped with the seconds since the log was opened (`[  83.25] apt | ...`) so
that the log shows where a build's time went (bench/buildlog.py sums it up).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_age(seconds: float) -> str:
    """How old something is, in its largest whole unit: `5 minutes`, `3 days`."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return "less than a minute"


def log_stamp(seconds: float) -> str:
    """A build log line's time stamp: seconds since the log was opened, like the kernel's."""
    return f"[{seconds:8.2f}]"


class Logger:
    """Quiet by default: one line per stage; `verbose` streams tool output too."""

    def __init__(self) -> None:
        self.verbose = False
        self.debug = False
        self.stream: TextIO = sys.stderr
        self.log_file: TextIO | None = None
        self.log_path: Path | None = None
        self.started = time.monotonic()
        self.log_started = self.started

    def open_log(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = path
        self.log_file = path.open("a", encoding="utf-8", errors="replace")
        self.log_started = time.monotonic()

    def close_log(self) -> None:
        if self.log_file:
            self.log_file.close()
        self.log_file = None

    def _to_log(self, text: str) -> None:
        if self.log_file:
            self.log_file.write(f"{log_stamp(time.monotonic() - self.log_started)} {text}\n")
            self.log_file.flush()

    def tool_line(self, label: str, line: str) -> None:
        """One line of a tool's output: always logged, shown with --verbose."""
        text = f"{label} | {line}"
        self._to_log(text)
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def command(self, text: str) -> None:
        self._to_log(f"$ {text}")
        if self.verbose:
            print(f"$ {text}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._to_log(text)
        print(text, file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        """Logged always, shown only with --verbose."""
        self._to_log(text)
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """A nested piece of work: logged with its duration; shown with --verbose."""
        start = time.monotonic()
        self.detail(f"‣ {title}")
        try:
            yield
        except BaseException:
            self.detail(f"✗ {title} (failed after {format_duration(time.monotonic() - start)})")
            raise
        self.detail(f"  {title}: {format_duration(time.monotonic() - start)}")


LOG = Logger()
