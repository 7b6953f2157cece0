"""Ctrl-C (SIGINT) or a stop (SIGTERM) in every stage that does work: each build stops with
exit 130, releases its mounts, leaves no image, workspace or half-made cache entry, and the
cache serves the next build.

Each case changes one input so that its stage runs while the stages before it come from
the shared cache (the qemu image's build), and signals the build as soon as the stage
says it started: the whole module costs seconds per stage, not a build per stage. The
epoch, bootfiles and firmware stages (no firmware on the qemu board) take milliseconds
and are not aimed at.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from amberpi.pipeline import WORKSPACE_ROOT
from tests.buildtools import amberpi_mounts, build_cache_dir
from tests.conftest import REPO, BuiltImage, amberpi, write_test_config

pytestmark = pytest.mark.integration

# (stage, what makes it run, extra command-line arguments, the signal)
CASES: list[tuple[str, dict[str, object], list[str], signal.Signals]] = [
    ("bootstrap", {}, ["--no-cache"], signal.SIGINT),
    ("packages", {"packages": ["hello"]}, [], signal.SIGTERM),
    ("customize", {"hostname": "interrupted"}, [], signal.SIGINT),
    ("squash", {"squashfs_compression": "gzip"}, [], signal.SIGTERM),
    # Every build has its own image identity: the stages from bootfs on always run.
    ("bootfs", {}, [], signal.SIGINT),
    ("iso", {}, [], signal.SIGTERM),
    ("persistence", {}, [], signal.SIGINT),
    ("disk", {}, [], signal.SIGTERM),
    ("release", {}, ["--compress", "xz"], signal.SIGINT),
]


def workspaces() -> set[Path]:
    return set(WORKSPACE_ROOT.glob("amberpi-*"))


def half_made_cache_entries(cache: Path) -> list[Path]:
    return list(cache.glob("*/.tmp-*"))


def interrupt_in(stage: str, config: Path, output: Path, extra: list[str], sig: signal.Signals) -> tuple[int, str]:
    """Start a build, send `sig` the moment `stage` announces its start; (exit status, its stderr)."""
    argv = [sys.executable, "-m", "amberpi", *extra, "--config", str(config), "--output", str(output)]
    process = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert process.stderr
    seen = ""
    for line in process.stderr:
        seen += line
        if f"] {stage:<11} " in line and "…" in line:
            process.send_signal(sig)
            break
    _, rest = process.communicate(timeout=300)
    return process.returncode, seen + rest


@pytest.mark.parametrize(("stage", "settings", "extra", "sig"), CASES, ids=[f"{c[0]}-{c[3].name}" for c in CASES])
def test_a_signal_in_each_stage_stops_cleanly(
    qemu_image: BuiltImage, tmp_path: Path, stage: str, settings: dict[str, Any], extra: list[str], sig: signal.Signals
) -> None:
    cache = build_cache_dir()
    config = write_test_config(tmp_path, **settings)
    output = tmp_path / "out"
    before = workspaces()
    code, stderr = interrupt_in(stage, config, output, extra, sig)
    assert f"] {stage:<11} " in stderr, f"the build never reached {stage}:\n{stderr[-3000:]}"
    assert code == 130, stderr[-3000:]
    assert "interrupted: stopped, mounts released, no image written" in stderr
    assert f"{stage:<11} built in" not in stderr, f"the signal came after {stage} was done"
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert amberpi_mounts() == []
    assert workspaces() == before, "the build's workspace is removed"
    assert half_made_cache_entries(cache) == []
    assert not list(output.glob("*.img*")), "no image, whole or partial, in the output folder"
    assert not list(output.glob(".*.partial"))


def test_the_cache_serves_a_build_after_the_interrupts(qemu_image: BuiltImage, tmp_path: Path) -> None:
    """Run after the cases above (file order): the cached stages of the qemu image still serve it."""
    output = tmp_path / "out"
    amberpi("--config", str(write_test_config(tmp_path)), "--output", str(output), check=True)
    report = json.loads((output / "amberpi-qemu.report.json").read_text())
    status = {stage["name"]: stage["status"] for stage in report["stages"]}
    assert status["squash"] == "cached", status
    for name in ("bootstrap", "packages", "customize"):
        assert status[name] in ("cached", "skipped"), status  # skipped: the cached squashfs made them unnecessary
    assert (output / "amberpi-qemu.img").stat().st_size == qemu_image.path.stat().st_size
