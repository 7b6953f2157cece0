"""The kernel partition's state machine, written down once.

The state lives in GRUB's environment block (grub/grubenv on p1) as
`amberpi_state`. Three places use it: the build (the first state), the boot menu
(amberpi/templates/grub.cfg.j2) and the device tool (amberpi-kernel); a test
checks each of them against this table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class KernelState(enum.StrEnum):
    good = "good"
    new = "new"
    writing = "writing"
    bad = "bad"
    rolled_back = "rolled-back"


class Writer(enum.StrEnum):
    build = "build"
    grub = "grub.cfg"
    device = "amberpi-kernel"


@dataclass(frozen=True)
class StateRule:
    meaning: str
    boots: str  # what GRUB boots in this state
    set_by: frozenset[Writer]


KERNEL_STATES: dict[KernelState, StateRule] = {
    KernelState.good: StateRule(
        "the kernel partition's kernel booted fine (or is the factory kernel the image was built with)",
        "the kernel partition",
        frozenset({Writer.build, Writer.device}),
    ),
    KernelState.new: StateRule(
        "a kernel written by amberpi-kernel that has not yet confirmed a good boot",
        "the kernel partition, on trial, for kernel_tries boots",
        frozenset({Writer.device}),
    ),
    KernelState.writing: StateRule(
        "a write to the kernel partition began and has not finished (cut mid-write)",
        "the factory kernel",
        frozenset({Writer.device}),
    ),
    KernelState.bad: StateRule(
        "a new kernel used up its tries without confirming a good boot",
        "the fallback kernel, else the factory kernel",
        frozenset({Writer.grub}),
    ),
    KernelState.rolled_back: StateRule(
        "rolled back by hand (amberpi-kernel rollback)",
        "the fallback kernel, else the factory kernel",
        frozenset({Writer.device}),
    ),
}

# The state the build writes: the kernel partition holds the factory kernel, known good.
INITIAL_STATE = KernelState.good
