"""The command line: default verb, help, board list, exit codes for bad input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, amberpi


def test_default_verb_is_build() -> None:
    from amberpi.cli import parse_args

    args = parse_args(["--board", "pi3"])
    assert args.verb == "build" and args.board == "pi3"


def test_help_explains_the_build_flags() -> None:
    result = amberpi("--help")
    assert result.returncode == 0
    for flag in ("--board", "--suite", "--mirror", "--output", "--config", "--verbose", "--no-cache"):
        assert flag in result.stdout


def test_boards_one_line_each() -> None:
    result = amberpi("boards")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["pi3", "pi4", "qemu"]
    assert all(len(line.split()) > 2 for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--board", "pi5"], "unknown board 'pi5'"),
        (["--suite", "potato"], "suite: 'potato' is not supported"),
    ],
)
def test_bad_input_exit_2(args: list[str], message: str) -> None:
    result = amberpi(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "c.yaml"
    config.write_text("suite: trixie\nmirorr: http://x/debian\n")
    result = amberpi("--config", str(config))
    assert result.returncode == 2
    assert f"{config}: mirorr: unknown key (did you mean `mirror`?)" in result.stderr


def test_not_root_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        result = amberpi("--output", str(tmp_path))
    else:
        env = {"PATH": os.environ["PATH"], "HOME": "/tmp"}
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                os.sys.executable,
                "-m",
                "amberpi",  # type: ignore[attr-defined]
                "--output",
                str(tmp_path / "o"),
                "--cache-dir",
                str(tmp_path / "c"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env,
        )
    assert result.returncode == 2, result.stderr
    assert "must run as root" in result.stderr and "--backend docker" in result.stderr


def test_output_folder_not_writable() -> None:
    result = amberpi("--output", "/proc/amberpi-out")
    assert result.returncode == 2
    assert "cannot create the output folder /proc/amberpi-out" in result.stderr
    assert "--output" in result.stderr


def test_front_door_runs_from_any_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`python3 /path/to/build.py` from another folder: the checkout's package, the user's paths."""
    (tmp_path / "amberpi").mkdir()  # a folder of that name here must not shadow the package
    result = subprocess.run(["python3", str(REPO / "build.py"), "boards"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "qemu" in result.stdout


def test_only_the_first_token_is_a_verb() -> None:
    """Before: `--output build` was taken for the verb `build` and the folder went missing."""
    from amberpi.cli import parse_args

    args = parse_args(["--output", "build", "--board", "pi3"])
    assert args.verb == "build" and args.output == "build"
    assert parse_args(["summary", "--output", "clean"]).output == "clean"


def test_builder_base_is_a_verb_and_the_old_flag_still_works() -> None:
    from amberpi.cli import parse_args

    assert parse_args(["builder-base"]).verb == "builder-base"
    assert parse_args(["--bootstrap-builder-base"]).bootstrap_builder_base is True


def test_summary_json_never_prints_the_password_hash(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('root_password_hash: "$6$salt$thehash"\n')
    result = amberpi("summary", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "thehash" not in result.stdout and '"root_password_hash": "(set)"' in result.stdout


@pytest.mark.parametrize(("args", "message"), [(["--output", ""], "output: must not be empty"), (["--config", ""], "config: empty path")])
def test_empty_paths_are_refused(args: list[str], message: str) -> None:
    """Before: an empty --output or --config was taken silently (the current folder)."""
    result = amberpi("summary", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
