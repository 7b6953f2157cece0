#!/usr/bin/env python3
"""AmberPi front door: `python3 build.py --board pi3` builds an image.

Standard library only: it prepares a private virtual environment (.venv, from
requirements.txt) the first time, then runs the amberpi package inside it.
Host tools are installed by the build itself, which says which ones first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
VENV = Path(os.environ.get("AMBERPI_VENV", REPO / ".venv"))
REQUIREMENTS = REPO / "requirements.txt"
STAMP = VENV / ".amberpi-requirements"


def say(text: str) -> None:
    print(f"build.py: {text}", file=sys.stderr, flush=True)


def requirement_stamp(path: Path) -> str:
    return f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}"


def ensure_venv_support() -> None:
    """Debian ships venv separately (python3-venv); install it when missing."""
    probe = subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True)
    if probe.returncode == 0:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit("build.py: Python's venv module is missing; install it (Debian: apt-get install python3-venv) and retry")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}-venv"
    say(f"installing python3-venv ({version}) with apt-get")
    subprocess.run(["apt-get", "-q", "update"], check=True)
    subprocess.run(
        ["apt-get", "-q", "-y", "install", "--no-install-recommends", "python3-venv", version],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def ensure_venv(requirement_files: list[Path]) -> Path:
    """The venv's python, with every given requirements file installed (once per content)."""
    python = VENV / "bin" / "python"
    done = set(STAMP.read_text().splitlines()) if python.exists() and STAMP.exists() else set()
    todo = [path for path in requirement_files if requirement_stamp(path) not in done]
    if not todo:
        return python
    ensure_venv_support()
    if not python.exists():
        say(f"creating the virtual environment {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        done = set()
    say("installing Python dependencies: " + ", ".join(p.name for p in todo))
    args = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for path in todo:
        args += ["-r", str(path)]
    subprocess.run(args, check=True)
    STAMP.write_text("\n".join(sorted(done | {requirement_stamp(p) for p in todo})) + "\n")
    return python


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - build.py must explain itself on an older Python
        sys.exit(f"build.py: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    python = ensure_venv([REQUIREMENTS])
    # Run from any folder: the package comes from this checkout (-P: never from the
    # current folder), while relative paths on the command line stay the user's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    os.execve(str(python), [str(python), "-P", "-m", "amberpi", *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
