"""Power cuts at random moments during writes, a few per run: the promise bench/torture.py
measures at length (see the README), kept honest in every test run.

AMBERPI_TORTURE_TRIALS sets the number of cuts (default 1: each costs a boot under TCG, and the
suite is near CI's hour; bench/torture.py makes the long runs),
AMBERPI_TORTURE_SEED the seed of the delays and workloads (default 1). Kernel updates under a
cut are covered by test_kernel_update's power-cut test; these trials cut plain workloads: files
written with fsync and without, a package installed and removed with dpkg, log spam.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import TEST_PASSWORD, BuiltImage
from tests.imagetools import read_only_hashes
from tests.measurements import record
from tests.torture import Login, Run, describe, missed, run_trials, tiny_package

pytestmark = pytest.mark.boot


def test_power_cuts_during_writes_boot_again_and_keep_synced_data(qemu_image: BuiltImage, tmp_path: Path) -> None:
    cuts = int(os.environ.get("AMBERPI_TORTURE_TRIALS", "1"))
    seed = int(os.environ.get("AMBERPI_TORTURE_SEED", "1"))
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(qemu_image.path), str(disk)], check=True)
    run = Run(str(qemu_image.path), read_only_hashes(qemu_image.path), seed, cuts, kernel_share=0, max_cut=20, max_kernel_cut=0)
    logs = tmp_path / "logs"
    logs.mkdir()
    run_trials(run, disk, tiny_package(tmp_path), 0, Login(TEST_PASSWORD, 900), logs, tmp_path / "torture.json", lambda: False)

    for trial in run.trials:
        record(f"torture trial {trial.number} (seed {seed}): {describe(trial)}")
    assert len(run.trials) == cuts + 1, f"the device stopped booting: {asdict(run.trials[-1])} (console logs in {logs})"
    broken = [asdict(t) for t in run.trials if missed(t)]
    assert not broken, f"trials that broke a promise (console logs in {logs}): {broken}"
    assert all(t.synced_kept for t in run.trials[1:]), "every boot after a cut found the token synced before it"
