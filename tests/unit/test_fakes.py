"""The fake host tools of tests/fakes.py, seen through amberpi.run as the stages see them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import plumbum
import pytest

from amberpi import run as runner
from amberpi.errors import ToolError, ToolMissing
from tests.fakes import FakeTools

pytestmark = pytest.mark.usefixtures("quiet_log")


def test_run_calls_the_fake_and_its_argv_is_recorded(fake_tools: FakeTools) -> None:
    fake_tools.add("mksquashfs")
    runner.run(["mksquashfs", "a", "b"])
    assert fake_tools.calls("mksquashfs") == [["mksquashfs", "a", "b"]]


def test_argv_is_kept_exactly(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("mcopy")
    argv = ["mcopy", "-i", str(tmp_path / "a b.img"), "-s", "ünïcode", "", "--", "$HOME", "'quoted'"]
    runner.run(argv)
    assert fake_tools.calls("mcopy") == [argv]


def test_calls_are_kept_per_tool_and_in_order(fake_tools: FakeTools) -> None:
    fake_tools.add("mkfs.vfat", "mcopy", "mmd")
    runner.run(["mkfs.vfat", "-n", "BOOT", "boot.img"])
    runner.run(["mmd", "-i", "boot.img", "::overlays"])
    runner.run(["mcopy", "-i", "boot.img", "config.txt", "::"])
    runner.run(["mcopy", "-i", "boot.img", "cmdline.txt", "::"])
    assert fake_tools.calls("mcopy") == [["mcopy", "-i", "boot.img", "config.txt", "::"], ["mcopy", "-i", "boot.img", "cmdline.txt", "::"]]
    assert [argv[0] for argv in fake_tools.all_calls()] == ["mkfs.vfat", "mmd", "mcopy", "mcopy"]
    assert fake_tools.calls("sfdisk") == []
    assert fake_tools.shell_lines("mmd") == ["mmd -i boot.img ::overlays"]


def test_exit_status_and_output_reach_the_caller(fake_tools: FakeTools) -> None:
    fake_tools.add("sfdisk", status=3, stdout="sfdisk: cannot open img\n", stderr="sfdisk: second line\n")
    with pytest.raises(ToolError) as info:
        runner.run(["sfdisk", "img"])
    assert info.value.code == 3
    assert info.value.argv == ["sfdisk", "img"]
    assert info.value.output_tail == ["sfdisk: cannot open img", "sfdisk: second line"]
    assert fake_tools.calls("sfdisk") == [["sfdisk", "img"]], "a failing call is recorded too"


def test_status_allowed_by_the_caller(fake_tools: FakeTools) -> None:
    fake_tools.add("dpkg-query", status=1)
    assert runner.run(["dpkg-query", "-W", "zstd"], capture=True, ok=(0, 1)) == ""


def test_stdout_is_captured(fake_tools: FakeTools) -> None:
    fake_tools.add("xz", stdout="xz (XZ Utils) 5.4.1\n", stderr="not captured\n")
    assert runner.run(["xz", "--version"], capture=True) == "xz (XZ Utils) 5.4.1\n"


def test_output_file_by_argument_index(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("mksquashfs", creates=-1, content=b"hsqs")
    target = tmp_path / "deep" / "root.squashfs"
    runner.run(["mksquashfs", str(tmp_path / "tree"), str(target)])
    assert target.read_bytes() == b"hsqs", "parents are made"

    fake_tools.add("mksquashfs", creates=2)
    runner.run(["mksquashfs", str(tmp_path / "tree"), str(tmp_path / "second.squashfs"), "-comp", "zstd"])
    assert (tmp_path / "second.squashfs").read_bytes() == b""


def test_output_file_by_template_and_by_path(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("xz", creates="{last}.xz", content="compressed")
    runner.run(["xz", "-T0", str(tmp_path / "amberpi.img")])
    assert (tmp_path / "amberpi.img.xz").read_text() == "compressed"

    fake_tools.add("debootstrap", creates=["{argv[3]}/debootstrap/debootstrap.log", 1])
    runner.run(["debootstrap", str(tmp_path / "first"), "trixie", str(tmp_path / "tree")])
    assert (tmp_path / "tree" / "debootstrap" / "debootstrap.log").exists()
    assert (tmp_path / "first").exists()

    literal = tmp_path / "{not a template}"
    fake_tools.add("chroot", creates=literal)
    runner.run(["chroot", str(tmp_path), "true"])
    assert literal.exists()


def test_mixed_literal_and_template_paths_are_refused(fake_tools: FakeTools, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mixes"):
        fake_tools.add("xz", creates=[tmp_path / "a", "{last}.xz"])


def test_relative_output_file_lands_in_the_callers_folder(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("xz", creates="{last}.xz")
    runner.run(["xz", "image"], cwd=tmp_path)
    assert (tmp_path / "image.xz").exists()


def test_stdin_is_recorded_when_asked(fake_tools: FakeTools) -> None:
    fake_tools.add("sfdisk", record_stdin=True)
    fake_tools.add("mksquashfs")
    runner.run(["sfdisk", "disk.img"], input=b"label: dos\nstart=8192, type=c\n")
    runner.run(["sfdisk", "disk2.img"])
    runner.run(["mksquashfs", "a", "b"])
    assert fake_tools.stdin("sfdisk") == ["label: dos\nstart=8192, type=c\n", ""]
    assert fake_tools.stdin("mksquashfs") == [], "only stubs added with record_stdin read it"


def test_environment_is_recorded_when_asked(fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QEMU_CPU", raising=False)
    for name in runner.PASSED_THROUGH:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AMBERPI_NOT_PASSED", "1")
    fake_tools.add("chroot", record_env=True)
    fake_tools.add("mksquashfs")
    runner.run(["chroot", "/tree", "true"], env={"SOURCE_DATE_EPOCH": "1700000000"})
    runner.run(["chroot", "/tree", "true"])
    runner.run(["mksquashfs", "a", "b"], env={"SOURCE_DATE_EPOCH": "1"})
    first, second = fake_tools.env("chroot")
    assert first == runner.base_env({"SOURCE_DATE_EPOCH": "1700000000"}), "exactly what amberpi.run gives the child"
    assert second == runner.base_env()
    assert "AMBERPI_NOT_PASSED" not in first
    assert fake_tools.env("mksquashfs") == [], "only stubs added with record_env keep it"


def test_a_stub_can_be_reconfigured_between_calls(fake_tools: FakeTools) -> None:
    fake_tools.add("mount", status=32)
    with pytest.raises(ToolError):
        runner.run(["mount", "-t", "proc", "proc", "/nowhere"])
    fake_tools.add("mount")
    runner.run(["mount", "-t", "proc", "proc", "/nowhere"])
    assert len(fake_tools.calls("mount")) == 2


def test_every_lookup_finds_the_fake(fake_tools: FakeTools) -> None:
    fake_tools.add("debootstrap")
    stub = str(fake_tools.bin / "debootstrap")
    assert runner.which("debootstrap") == stub, "amberpi.run.which (plumbum)"
    assert shutil.which("debootstrap") == stub, "shutil.which (hostsetup)"
    assert str(plumbum.local["debootstrap"].executable) == stub


def test_tools_not_faked_still_resolve_unless_only_fakes(tmp_path: Path) -> None:
    real = shutil.which("true")
    if real is None:
        pytest.skip("no `true` on this host")
    with pytest.MonkeyPatch.context() as mp:
        FakeTools(tmp_path / "prepended").activate(mp)
        assert runner.which("true") is not None
    with pytest.MonkeyPatch.context() as mp:
        FakeTools(tmp_path / "alone").activate(mp, only_fakes=True)
        assert runner.which("true") is None
        with pytest.raises(ToolMissing) as info:
            runner.run(["true"])
        assert info.value.tool == "true"


def test_path_is_restored_afterwards(tmp_path: Path) -> None:
    before = (os.environ.get("PATH"), plumbum.local.env.get("PATH"), list(plumbum.local.env.path))
    with pytest.MonkeyPatch.context() as mp:
        tools = FakeTools(tmp_path / "tools")
        tools.activate(mp)
        tools.add("mksquashfs")
        assert plumbum.local.env.path[0] == plumbum.local.path(tools.bin)
    assert (os.environ.get("PATH"), plumbum.local.env.get("PATH"), list(plumbum.local.env.path)) == before
    assert runner.which("mksquashfs") != str(tools.bin / "mksquashfs")


def test_bad_tool_names_are_refused(fake_tools: FakeTools) -> None:
    for name in ("", "../mksquashfs", "/usr/bin/xz"):
        with pytest.raises(ValueError, match="not a tool name"):
            fake_tools.add(name)
