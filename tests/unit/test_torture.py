"""The torture run's plan and record: a seed gives one plan, a stopped run resumes where it ended."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import write_test_config
from tests.imagetools import read_only_hashes
from tests.torture import WORKLOADS, Run, Trial, describe, plan_trials

REPO = Path(__file__).resolve().parents[2]


def bench_torture() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_torture", REPO / "bench" / "torture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_seed_gives_one_plan_with_a_last_boot_that_only_checks() -> None:
    plan = plan_trials(7, 100, 0.25, 20, 420)
    assert plan == plan_trials(7, 100, 0.25, 20, 420)
    assert plan != plan_trials(8, 100, 0.25, 20, 420)
    assert [t.number for t in plan] == list(range(1, 102))
    *cuts, last = plan
    assert last.workloads == [] and not last.updates_kernel and last.cut_after_seconds == 0
    assert all(t.workloads and set(t.workloads) <= set(WORKLOADS) for t in cuts)
    assert all(0 <= t.cut_after_seconds <= (420 if t.updates_kernel else 20) for t in cuts)
    assert 10 <= sum(t.updates_kernel for t in cuts) <= 45, "about a quarter of the trials update the kernel"
    assert not any(t.updates_kernel for t in plan_trials(7, 100, 0, 20, 420))


def test_a_longer_run_begins_with_a_shorter_runs_trials() -> None:
    """Resuming replays the plan from the seed: the trials already made must be the same ones."""
    assert plan_trials(3, 10, 0.25, 20, 420)[:10] == plan_trials(3, 50, 0.25, 20, 420)[:10]


def test_the_record_reads_back_as_written(tmp_path: Path) -> None:
    trial = Trial(1, ["fsync", "logs"], 3.5, reached_login=True, boot_seconds=55.0, synced_token="trial-1-0000abcd", p4_fsck="clean")
    run = Run("/x.img", {1: "a", 2: "b", 3: "c"}, 7, 100, 0.25, 20, 420, new_kernel="6.16", trials=[trial])
    run.save(tmp_path / "torture.json")
    assert Run.load(tmp_path / "torture.json") == run
    assert not (tmp_path / "torture.json.new").exists()


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    """Three partitions, p1 holding a GRUB environment block, as read_only_hashes expects."""
    image = tmp_path / "small.img"
    image.write_bytes(bytes(5 << 20))
    layout = "label: gpt\nstart=2048, size=2048\nstart=4096, size=2048\nstart=6144, size=2048\n"
    subprocess.run(["sfdisk", "-q", str(image)], input=layout, text=True, check=True)
    with image.open("r+b") as handle:
        handle.seek(2048 * 512)
        handle.write(b"# GRUB Environment Block\n" + b"#" * 999)
    return image


def test_resume_refuses_a_run_it_cannot_take_up(tmp_path: Path, small_image: Path) -> None:
    torture = bench_torture()
    record, disk = tmp_path / "torture.json", tmp_path / "torture-disk.img"

    def refusal() -> str:
        with pytest.raises(SystemExit) as stopped:
            torture.resumable_run(record, disk)
        return str(stopped.value)

    assert "nothing to resume" in refusal()
    disk.write_bytes(small_image.read_bytes())
    run = Run(str(small_image), read_only_hashes(small_image), 7, 2, 0, 20, 0)
    run.trials = [Trial(1, ["fsync"], 1.0, reached_login=True)]
    run.save(record)
    assert torture.resumable_run(record, disk) == run

    run.disk_consistent = False
    run.save(record)
    assert "stopped inside a trial" in refusal()

    run.disk_consistent = True
    run.trials.append(Trial(2, ["logs"], 2.0, reached_login=False))
    run.save(record)
    assert "has ended" in refusal()

    run.trials.pop()
    run.save(record)
    with small_image.open("r+b") as handle:
        handle.seek(4096 * 512)
        handle.write(b"rebuilt")
    assert "rebuilt" in refusal()


def test_the_test_config_goes_into_a_scratch_folder_that_does_not_exist_yet(tmp_path: Path) -> None:
    """`bench/torture.py --work NEW` (and bench/boot.py) failed with FileNotFoundError before building."""
    config = write_test_config(tmp_path / "new" / "work")
    assert config.is_file() and "root_password_hash" in config.read_text()


def test_the_kernel_repository_logs_requests_to_a_file_not_the_console(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """bench/torture.py's output was buried under the HTTP server's lines (apt asks for index variants that 404)."""
    import urllib.error
    import urllib.request

    from tests.kernel_repo import serve

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "Packages").write_text("Package: x\n")
    with serve(tmp_path / "repo", tmp_path / "requests.log") as port:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/Packages").read() == b"Package: x\n"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/Packages.xz")
    assert capfd.readouterr().err == ""
    requests = (tmp_path / "requests.log").read_text()
    assert '"GET /Packages HTTP/1.1" 200' in requests and '"GET /Packages.xz HTTP/1.1" 404' in requests


def test_a_trial_is_told_in_one_line_in_the_order_it_happened() -> None:
    trial = Trial(3, ["dpkg", "fsync"], 12.34, updates_kernel=True, reached_login=True, boot_seconds=51.6, synced_kept=True)
    trial.p1_p3_unchanged, trial.p3_rewritten, trial.p4_fsck, trial.kernel_update = True, True, "clean after journal replay", "apt-install"
    assert describe(trial) == (
        "login after 52s, the last cut's synced token found, cut after 12.3s of dpkg,fsync beside a kernel update (apt-install), "
        "p4 clean after journal replay, p1-p3 as expected, p3 rewritten by the update"
    )
    assert describe(Trial(4, [], 0, reached_login=True, boot_seconds=50, synced_kept=False)) == (
        "login after 50s, the last cut's synced token LOST, the last boot (checks only)"
    )
    assert describe(Trial(5, ["logs"], 1.0, note="timed out after 900s")) == "NO LOGIN (timed out after 900s)"
