"""The only module that starts processes. plumbum stays inside it.

Commands are argument lists, never shell strings. Each line a tool prints is
written to the build log as `label | line`; a failure raises ToolError with
the command, its exit status and the last lines it printed.
"""

from __future__ import annotations

import collections
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from plumbum import local
from plumbum.commands.processes import CommandNotFound

from amberpi.errors import ToolError, ToolMissing
from amberpi.log import LOG

# Which Debian package provides each host tool we call.
TOOL_PACKAGES: dict[str, str] = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "mount": "mount",
    "umount": "mount",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mdir": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "sfdisk": "fdisk",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-system-aarch64": "qemu-system-arm",
    "xorriso": "xorriso",
    "shellcheck": "shellcheck",
    "xz": "xz-utils",
    "zstd": "zstd",
}

TAIL_LINES = 40

# qemu-user's default CPU ("max") emulates pointer authentication, which every
# trixie arm64 binary uses: measured here, perl ran 25x slower than on cortex-a72,
# an armv8.0 core without it that still runs everything Debian's arm64 baseline
# allows. QEMU_CPU in the environment overrides it; native arm64 hosts ignore it.
EMULATED_CPU = "cortex-a72"

# Children currently running, so an interrupt can stop them before teardown.
_RUNNING: set[subprocess.Popen[bytes]] = set()


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child environment built explicitly rather than inherited wholesale."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "TERM": "dumb",
        "QEMU_CPU": os.environ.get("QEMU_CPU", EMULATED_CPU),
    }
    for name in ("SOURCE_DATE_EPOCH", "http_proxy", "https_proxy", "no_proxy"):
        if name in os.environ:
            env[name] = os.environ[name]
    if extra:
        env.update(extra)
    return env


def which(tool: str) -> str | None:
    try:
        return str(local.which(tool))
    except CommandNotFound:
        return None


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = False,
    label: str | None = None,
    ok: Sequence[int] = (0,),
    where: str | None = None,
    hint: str | None = None,
    tool_log: Path | None = None,
) -> str:
    """Run argv, stream its output to the log, return stdout when `capture`."""
    args = [str(a) for a in argv]
    label = label or Path(args[0]).name
    try:
        command = local[args[0]][args[1:]]
    except CommandNotFound:
        raise ToolMissing(args[0], TOOL_PACKAGES.get(Path(args[0]).name, args[0])) from None
    LOG.command(shlex.join(args))
    child_env = base_env(env)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    captured: list[str] = []
    process = command.popen(
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture else subprocess.STDOUT,
        cwd=str(cwd) if cwd else None,
        env=child_env,
        start_new_session=True,
    )
    _RUNNING.add(process)
    try:
        assert process.stdout
        if capture:
            out, err = process.communicate(input)
            captured.append(out.decode(errors="replace"))
            for line in err.decode(errors="replace").splitlines():
                tail.append(line)
                LOG.tool_line(label, line)
        else:
            if input is not None:
                assert process.stdin
                process.stdin.write(input)
                process.stdin.close()
            for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                tail.append(line)
                LOG.tool_line(label, line)
        code = process.wait()
    except BaseException:
        stop_process(process)
        raise
    finally:
        _RUNNING.discard(process)
    if code not in ok:
        if tool_log and tool_log.exists():
            tail.extend(tool_log.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        raise ToolError(args, code, list(tail), LOG.log_path, where=where, hint=hint)
    return "".join(captured)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGINT the child's process group, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_all() -> None:
    """Stop every child still running (used when the build is interrupted)."""
    for process in list(_RUNNING):
        stop_process(process)
