"""Linters as tests: ruff and mypy --strict on the Python, shellcheck on every shell script we ship or run."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def shell_scripts() -> list[str]:
    candidates = [*(REPO / "hooks").glob("*.hook.chroot"), *(REPO / "amberpi" / "device").rglob("*"), REPO / ".ci" / "run"]
    return [str(p) for p in candidates if p.is_file() and p.read_bytes().startswith(b"#!/bin/sh")]


def test_ruff() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_format() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_mypy_strict() -> None:
    """The package, build.py and bench/ (pyproject.toml [tool.mypy]); every `type: ignore` says why."""
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    unexplained = []
    for path in (REPO / "amberpi").rglob("*.py"):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if "type: ignore" in line and "#" not in lines[number - 2] and "  # " not in line.split("type: ignore", 1)[1]:
                unexplained.append(f"{path.relative_to(REPO)}:{number}")
    assert not unexplained, f"a `type: ignore` without a comment saying why: {unexplained}"


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (tests/run.py installs it)")
    scripts = shell_scripts()
    assert len(scripts) >= 3
    result = subprocess.run(["shellcheck", "-s", "sh", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
