"""The release workflow (.github/workflows/release.yml), which only GitHub can run: validated here
against the GitHub workflow schema (tests/data/README.md: where it is from), its scripts checked
by shellcheck, its jobs and matrix references checked as actionlint would (Debian ships no
actionlint), and its contents checked against the code: every board of config/boards/ is in the
matrix, and the files it uploads are exactly the downloads the release stage writes."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from amberpi import imager
from amberpi.config import Config, list_boards, load_board
from amberpi.stages.release import ReleaseNames
from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
SCHEMA = REPO / "tests" / "data" / "github-workflow-schema.json"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
# What the output folder holds after `build.py release` besides the release stage's files.
PIPELINE_FILES = ("{name}.build.log",)


def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as true; GitHub reads it as the string.
    if True in data:
        data["on"] = data.pop(True)
    assert isinstance(data, dict)
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def step_using(job: dict[str, Any], action: str) -> dict[str, Any]:
    (step,) = [s for s in steps(job) if str(s.get("uses", "")).startswith(action + "@")]
    return step


def test_the_workflow_follows_githubs_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(workflow())


def test_it_runs_on_version_tags_only() -> None:
    assert workflow()["on"] == {"push": {"tags": ["v*"]}}


def test_every_script_passes_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (tests/run.py installs it)")
    scripts = [step["run"] for job in workflow()["jobs"].values() for step in steps(job) if "run" in step]
    assert len(scripts) >= 4
    for index, script in enumerate(scripts):
        # GitHub substitutes ${{ }} before the shell runs: a plain word stands in for it.
        path = tmp_path / f"step-{index}.sh"
        path.write_text("#!/bin/bash\nset -e\n" + EXPRESSION.sub("EXPRESSION", script))
        result = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}\n{result.stdout}"


def test_jobs_needs_and_expressions_refer_to_what_exists() -> None:
    data = workflow()
    jobs = data["jobs"]
    for name, job in jobs.items():
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            assert need in jobs, f"job {name} needs the unknown job {need}"
        matrix = job.get("strategy", {}).get("matrix", {})
        text = yaml.safe_dump(job)
        for expression in EXPRESSION.findall(text):
            for key in re.findall(r"\bmatrix\.([A-Za-z_][\w-]*)", expression):
                assert key in matrix, f"job {name} uses matrix.{key}, which its matrix lacks"
            for context in re.findall(r"\b([a-z_]+)\.", expression):
                assert context in {"matrix", "github", "env", "steps", "needs", "runner", "secrets", "inputs", "strategy"}, expression
        for step in steps(job):
            uses = step.get("uses")
            assert uses is None or re.fullmatch(r"actions/[a-z-]+@v\d+", uses), f"{uses}: only GitHub's own actions, by major version"


def test_the_matrix_builds_every_board() -> None:
    build = workflow()["jobs"]["build"]
    assert sorted(build["strategy"]["matrix"]["board"]) == sorted(list_boards())
    (release_step,) = [s for s in steps(build) if "build.py release" in s.get("run", "")]
    assert release_step["env"]["BOARD"] == "${{ matrix.board }}" and '--board "$BOARD"' in release_step["run"]
    assert any(s.get("run") == "bash .ci/run" for s in steps(build)), "the test suite runs first, as CI runs it"


def uploaded(patterns: list[str], files: list[str]) -> set[str]:
    """What actions/upload-artifact takes of `files` with these path lines (later `!` lines exclude)."""
    chosen: set[str] = set()
    for pattern in patterns:
        exclude = pattern.startswith("!")
        matches = {name for name in files if fnmatch.fnmatchcase(name, pattern.lstrip("!"))}
        chosen = chosen - matches if exclude else chosen | matches
    return chosen


@pytest.mark.parametrize("board", sorted(list_boards()))
def test_the_uploaded_files_are_the_downloads_the_release_stage_writes(board: str) -> None:
    upload = step_using(workflow()["jobs"]["build"], "actions/upload-artifact")
    lines = [line.strip() for line in upload["with"]["path"].splitlines() if line.strip()]
    patterns = [line.replace("${{ matrix.board }}", board) for line in lines]
    assert all(pattern.lstrip("!").startswith("out/") for pattern in patterns)
    name = Config(board=board).name
    names = ReleaseNames(name)
    listed = bool(load_board(board).imager_devices)
    in_output = names.published(compressed=True, listed=listed) + [template.format(name=name) for template in PIPELINE_FILES]
    relative = [re.sub(r"^(!?)out/", r"\1", pattern) for pattern in patterns]
    assert uploaded(relative, in_output) == set(names.downloads(listed=listed))
    assert upload["with"]["if-no-files-found"] == "error"


def test_the_release_job_collects_every_board_and_attaches_the_imager_list() -> None:
    publish = workflow()["jobs"]["publish"]
    assert publish["needs"] == "build" and publish["permissions"] == {"contents": "write"}
    download = step_using(publish, "actions/download-artifact")["with"]
    upload = step_using(workflow()["jobs"]["build"], "actions/upload-artifact")["with"]
    assert fnmatch.fnmatchcase(upload["name"].replace("${{ matrix.board }}", "pi3"), download["pattern"])
    assert download["path"] == "out" and download["merge-multiple"] is True
    scripts = "\n".join(s.get("run", "") for s in steps(publish))
    assert "python3 build.py release --collect --output out" in scripts
    assert 'gh release upload "$TAG" out/* --clobber' in scripts
    assert imager.COMBINED in scripts, "the release notes name the combined Imager list"
