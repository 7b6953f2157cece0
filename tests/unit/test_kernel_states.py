"""The kernel partition's states: the build, grub.cfg and amberpi-kernel agree with amberpi/kernelstates.py."""

from __future__ import annotations

import inspect
import re

from amberpi.kernelstates import INITIAL_STATE, KERNEL_STATES, KernelState, Writer
from amberpi.render import TEMPLATES_DIR
from amberpi.stages import bootfs
from tests.conftest import REPO

GRUB_CFG = (TEMPLATES_DIR / "grub.cfg.j2").read_text()
DEVICE_TOOL = (REPO / "amberpi/device/rootfs/usr/sbin/amberpi-kernel").read_text()
STATE = r"[a-z][a-z-]*"


def states_set_by_grub() -> set[str]:
    return set(re.findall(rf"set amberpi_state=({STATE})", GRUB_CFG))


def states_tested_by_grub() -> set[str]:
    return set(re.findall(rf'"\$\{{amberpi_state\}}" !?= "({STATE})"', GRUB_CFG))


def states_set_by_device() -> set[str]:
    return set(re.findall(rf"amberpi_state=({STATE})", DEVICE_TOOL))


def states_matched_by_device() -> set[str]:
    """Every word of the case patterns on the state: `good)`, `new | bad | rolled-back)`."""
    found: set[str] = set()
    for block in re.findall(r'case "\$\(env_get amberpi_state\)" in(.*?)esac', DEVICE_TOOL, re.DOTALL):
        for pattern in re.findall(r"^\s*([a-z| -]+)\)", block, re.MULTILINE):
            found |= {word.strip() for word in pattern.split("|")}
    for block in re.findall(r'case "\$_state" in(.*?)esac', DEVICE_TOOL, re.DOTALL):
        for pattern in re.findall(r"^\s*([a-z| -]+)\)", block, re.MULTILINE):
            found |= {word.strip() for word in pattern.split("|")}
    return found


def writers(writer: Writer) -> set[str]:
    return {state.value for state, rule in KERNEL_STATES.items() if writer in rule.set_by}


def test_the_table_covers_every_state() -> None:
    assert set(KERNEL_STATES) == set(KernelState)
    assert all(rule.meaning and rule.boots and rule.set_by for rule in KERNEL_STATES.values())


def test_grub_sets_exactly_the_states_the_table_gives_it() -> None:
    assert states_set_by_grub() == writers(Writer.grub)


def test_grub_knows_every_state_and_no_other() -> None:
    assert states_tested_by_grub() | states_set_by_grub() == {state.value for state in KernelState}


def test_the_device_tool_sets_exactly_its_states() -> None:
    assert states_set_by_device() == writers(Writer.device)


def test_the_device_tool_matches_only_known_states() -> None:
    matched = states_matched_by_device()
    assert matched, "the parser found the case blocks"
    assert matched <= {state.value for state in KernelState}


def test_the_build_writes_the_initial_state_from_the_table() -> None:
    assert INITIAL_STATE.value in writers(Writer.build)
    source = inspect.getsource(bootfs)
    assert "INITIAL_STATE" in source
    assert not re.search(r'"amberpi_state", "[a-z]', source), "no literal state in the build"
