"""update-initramfs's module copies run natively: the static-binary check, the cp script, the mounts."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import amberpi.nativecopy
from amberpi.nativecopy import CHROOT_CP, HELPERS, is_static_executable, native_module_copies
from amberpi.render import write_rendered
from tests.fakes import FakeTools

X86_64 = 62
AARCH64 = 183


def elf(machine: int, *segment_types: int) -> bytes:
    """A 64-bit little-endian ELF header and its program headers, of the given segment types."""
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HH", header, 16, 2, machine)
    struct.pack_into("<Q", header, 32, phoff)
    struct.pack_into("<HH", header, 54, phentsize, len(segment_types))
    return bytes(header) + b"".join(struct.pack("<I", kind) + bytes(phentsize - 4) for kind in segment_types)


@pytest.mark.parametrize(
    ("content", "machine", "static"),
    [
        (elf(X86_64, 1, 1, 4), X86_64, True),
        (elf(X86_64, 6, 3, 1), X86_64, False),  # PT_INTERP: needs the host's ld.so, absent from an arm64 tree
        (elf(AARCH64, 1, 1), X86_64, False),  # another machine's: it would need emulation itself
        (b"#!/bin/sh\n", X86_64, False),
        (elf(X86_64, 1)[:40], X86_64, False),
    ],
    ids=["static", "dynamic", "other-machine", "script", "truncated"],
)
def test_only_a_static_executable_for_the_host_qualifies(tmp_path: Path, content: bytes, machine: int, static: bool) -> None:
    binary = tmp_path / "busybox"
    binary.write_bytes(content)
    assert is_static_executable(binary, machine) is static


def test_a_dynamic_host_program_is_not_static() -> None:
    assert not is_static_executable(Path(sys.executable).resolve(), X86_64)


@pytest.fixture
def helpers(tmp_path: Path) -> Path:
    """The cp script as the build renders it, with a busybox beside it and a recording stand-in for the chroot's cp."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed (tests/run.py installs busybox-static)")
    folder = tmp_path / "helpers"
    folder.mkdir()
    shutil.copy2(busybox, folder / "busybox")
    write_rendered(folder / "cp", "native-cp.j2", mode=0o755, helpers=str(folder), native_folders=(str(tmp_path / "lib/modules"),))
    emulated = folder / "cp.emulated"
    emulated.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/emulated-calls\n')
    emulated.chmod(0o755)
    return folder


def dracut_cp(helpers: Path, source: Path, target: Path, preserve: str) -> None:
    """cp as dracut-install starts it (execlp), with both of its --preserve forms."""
    subprocess.run([helpers / "cp", "--reflink=auto", "--sparse=auto", preserve, "-fL", str(source), str(target)], check=True)


@pytest.mark.parametrize("preserve", ["--preserve=mode,xattr,timestamps,ownership", "--preserve=mode,timestamps,ownership"])
def test_dracut_installs_module_copy_runs_natively_and_keeps_content_mode_and_time(tmp_path: Path, helpers: Path, preserve: str) -> None:
    module = tmp_path / "lib/modules/6.12/kernel/fs/ext4.ko.xz"
    module.parent.mkdir(parents=True)
    module.write_bytes(os.urandom(5000))
    module.chmod(0o640)
    os.utime(module, (1_600_000_000, 1_700_000_000))
    link = tmp_path / "lib/modules/6.12/kernel/fs/link.ko.xz"
    link.symlink_to(module.name)
    target = tmp_path / "initramfs/ext4.ko.xz"
    target.parent.mkdir()
    dracut_cp(helpers, link, target, preserve)
    assert not target.is_symlink() and target.read_bytes() == module.read_bytes()
    assert (target.stat().st_mode & 0o7777, target.stat().st_mtime) == (0o640, 1_700_000_000)
    assert not (tmp_path / "emulated-calls").exists()


def test_every_other_cp_call_is_the_chroots_own(tmp_path: Path, helpers: Path) -> None:
    outside = tmp_path / "usr/lib/libc.so.6"
    outside.parent.mkdir(parents=True)
    outside.write_text("x")
    dracut_cp(helpers, outside, tmp_path / "libc.so.6", "--preserve=mode,timestamps,ownership")
    subprocess.run([helpers / "cp", "-pP", "/etc/ld.so.conf", str(tmp_path / "conf")], check=True)
    subprocess.run([helpers / "cp", "-fL", "a", "b", "c", "d", "e"], check=True)
    assert (tmp_path / "emulated-calls").read_text().splitlines() == [
        f"--reflink=auto --sparse=auto --preserve=mode,timestamps,ownership -fL {outside} {tmp_path / 'libc.so.6'}",
        f"-pP /etc/ld.so.conf {tmp_path / 'conf'}",
        "-fL a b c d e",
    ]


def test_the_copies_are_mounted_over_the_chroots_cp_and_released(
    tmp_path: Path, fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tools.add("mount", "umount")
    busybox = tmp_path / "static-busybox"
    busybox.write_bytes(elf(X86_64, 1))
    monkeypatch.setattr(amberpi.nativecopy, "static_busybox", lambda: busybox)
    root = tmp_path / "tree"
    (root / "usr/bin").mkdir(parents=True)
    (root / CHROOT_CP).write_text("the chroot's cp")
    helpers = root / HELPERS.lstrip("/")
    with native_module_copies(root) as what:
        assert what == f"module copies native ({busybox})"
        assert [argv[1:] for argv in fake_tools.calls("mount")] == [
            ["-o", "bind", str(root / CHROOT_CP), str(helpers / "cp.emulated")],
            ["-o", "bind", str(helpers / "cp"), str(root / CHROOT_CP)],
        ]
        assert fake_tools.calls("umount") == []
        assert (helpers / "busybox").read_bytes() == busybox.read_bytes()
        assert os.access(helpers / "cp", os.X_OK) and (helpers / "cp").read_text().startswith(f"#!{HELPERS}/busybox sh\n")
    assert [argv[-1] for argv in fake_tools.calls("umount")] == [str(root / CHROOT_CP), str(helpers / "cp.emulated")]
    assert (root / CHROOT_CP).read_text() == "the chroot's cp"


def test_without_a_static_busybox_nothing_is_mounted(tmp_path: Path, fake_tools: FakeTools) -> None:
    fake_tools.add("mount", "umount")
    with native_module_copies(tmp_path) as what:
        assert "emulated" in what and "busybox-static" in what
    assert fake_tools.calls("mount") == [] and not (tmp_path / "run").exists()


def test_the_cp_script_is_shellcheck_clean(helpers: Path) -> None:
    result = subprocess.run(["shellcheck", str(helpers / "cp")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
