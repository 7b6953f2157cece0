"""Host preparation errors say what is missing and how to get it."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi import hostsetup
from amberpi.errors import BackendError, ToolMissing
from tests.fakes import GOOD_ENTRY, binfmt


def test_missing_tool_without_apt_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostsetup.shutil, "which", lambda tool: None)
    with pytest.raises(ToolMissing) as info:
        hostsetup.install_tools(["mksquashfs"])
    text = info.value.render()
    assert "host tool `mksquashfs` is not installed" in text
    assert "apt-get install squashfs-tools" in text


def test_failed_install_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(argv, **kwargs):  # type: ignore[no-untyped-def]
        from amberpi.errors import ToolError

        raise ToolError(argv, 100, ["E: Unable to locate package"], None)

    monkeypatch.setattr(hostsetup.shutil, "which", lambda tool: "/usr/bin/" + tool)
    monkeypatch.setattr(hostsetup, "run", failing_run)
    with pytest.raises(BackendError) as info:
        hostsetup.install_tools(["debootstrap"])
    assert "apt-get install debootstrap" in info.value.render()


def test_binfmt_unregistered(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "register").write_text("")
    monkeypatch.setattr(hostsetup, "BINFMT_DIR", tmp_path)
    monkeypatch.setattr(hostsetup.shutil, "which", lambda tool: None)
    with pytest.raises(BackendError) as info:
        hostsetup.ensure_arm64_emulation()
    assert "qemu-user-static binfmt-support" in info.value.render()


def test_emulated_cpu_defaults_to_one_without_pointer_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    from amberpi.run import EMULATED_CPU, base_env

    monkeypatch.delenv("QEMU_CPU", raising=False)
    assert base_env()["QEMU_CPU"] == EMULATED_CPU == "cortex-a72"
    monkeypatch.setenv("QEMU_CPU", "max")
    assert base_env()["QEMU_CPU"] == "max", "the user's choice wins"


# --- arm64 emulation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "mounted", "problem", "fix"),
    [
        (None, False, "binfmt_misc is not mounted at", "sudo mount -t binfmt_misc binfmt_misc"),
        (None, True, "qemu-aarch64 is not registered with binfmt_misc", "apt-get install qemu-user-static binfmt-support"),
        ("enabled\nflags: P\n", True, "registered without the F (fix binary) flag", "echo -1 | sudo tee"),
        ("disabled\nflags: PF\n", True, "is disabled", "dnf install qemu-user-static"),
    ],
)
def test_binfmt_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entry: str | None, mounted: bool, problem: str, fix: str) -> None:
    monkeypatch.setattr(hostsetup, "BINFMT_DIR", binfmt(tmp_path, entry, mounted=mounted))
    with pytest.raises(BackendError) as info:
        hostsetup.ensure_arm64_emulation(fix=False)
    text = info.value.render()
    assert problem in text and fix in text
    assert ":qemu-aarch64:M::" in text and ":FP'" in text, "the one-off registration is spelled out"


def test_binfmt_ready(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hostsetup, "BINFMT_DIR", binfmt(tmp_path, GOOD_ENTRY))
    assert hostsetup.arm64_emulation_problem() is None
    hostsetup.ensure_arm64_emulation(fix=False)
