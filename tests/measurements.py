"""Figures the end-to-end tests measure (build, boot and update times, trial outcomes).

They are printed in a section of their own at the end of the pytest run, so a CI log
carries them; nothing is asserted on them.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

RECORDED: list[str] = []


def record(text: str) -> None:
    """Keep a figure for the summary, and show it now for anyone watching with -s."""
    RECORDED.append(text)
    print(f"\n{text}", file=sys.stderr, flush=True)


class DiskWatch:
    """The lowest free space seen on the file systems the suite writes to, sampled every few seconds.

    Tells how much disk a run really needs (tests/run.py checks for it before starting).
    """

    def __init__(self, paths: list[Path], interval: float = 2.0) -> None:
        # One sample per file system: /tmp, /var/cache and /var/lib/docker often share one.
        self.paths = {os.stat(path).st_dev: path for path in reversed(paths) if path.exists()}
        self.start = {dev: shutil.disk_usage(path).free for dev, path in self.paths.items()}
        self.lowest = dict(self.start)
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample, name="disk-watch", daemon=True)

    def __enter__(self) -> DiskWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def sample(self) -> None:
        while not self.stopped.wait(self.interval):
            for dev, path in self.paths.items():
                self.lowest[dev] = min(self.lowest[dev], shutil.disk_usage(path).free)

    def summary(self) -> list[str]:
        gib = 1 << 30
        return [
            f"disk at {path}: {self.start[dev] / gib:.1f} GiB free at the start, lowest {self.lowest[dev] / gib:.1f} GiB "
            f"(the run took up to {(self.start[dev] - self.lowest[dev]) / gib:.1f} GiB)"
            for dev, path in self.paths.items()
        ]
