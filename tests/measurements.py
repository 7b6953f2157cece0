"""Figures the end-to-end tests measure (build, boot and update times, trial outcomes).

They are printed in a section of their own at the end of the pytest run, so a CI log
carries them; nothing is asserted on them.
"""

from __future__ import annotations

import sys

RECORDED: list[str] = []


def record(text: str) -> None:
    """Keep a figure for the summary, and show it now for anyone watching with -s."""
    RECORDED.append(text)
    print(f"\n{text}", file=sys.stderr, flush=True)
