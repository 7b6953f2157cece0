"""Golden tests of the generated files: every generated file comes from a template."""

from __future__ import annotations

import jinja2
import pytest

from amberpi.config import ConfigTxtSection, load_board
from amberpi.layout import plan_layout
from amberpi.render import render, template_paths
from tests.samples import grub_cfg

MIB = 1 << 20


def test_strict_undefined() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render("hostname.j2")


def test_debian_sources_trixie() -> None:
    text = render("debian.sources.j2", suite="trixie", mirror="http://m/debian", security_mirror="http://s/debian-security")
    assert "URIs: http://m/debian\nSuites: trixie trixie-updates\nComponents: main non-free-firmware\n" in text
    assert "URIs: http://s/debian-security\nSuites: trixie-security\n" in text


def test_debian_sources_sid_has_no_updates_or_security() -> None:
    text = render("debian.sources.j2", suite="sid", mirror="http://m/debian", security_mirror="http://s/debian-security")
    assert "Suites: sid\n" in text and "security" not in text


def test_grub_cfg_pins_this_image() -> None:
    text = grub_cfg(extra_cmdline="X")
    assert 'set amberpi_args="boot=live live-media=/dev/disk/by-label/AMBERPI_SYS_1A2B3C4D amberpi.id=1a2b3c4d ' in text
    assert 'panic=10 amberpi.toram_mib=506 quickusbmodules X"' in text, "toram needs the squashfs (250 MiB) and the margin (256 MiB)"
    assert '[ "${amberpi_krn_label}" != "AMBERPI_KRN_1A2B3C4D" ]' in text
    assert 'linux "${amberpi_krn}/vmlinuz"' in text and 'linux "${amberpi_sys}/live/vmlinuz"' in text
    assert "set default=factory" in text, "the factory kernel is the default until the kernel partition checks out"
    assert 'sha256sum --check "${amberpi_krn}/SHA256SUMS" --prefix "${amberpi_krn}"' in text
    assert 'if [ -d "${amberpi_data}/rw/usr/lib/modules" ]; then' in text
    assert "[ ! -d" not in text, "GRUB's negated -d is true for nothing when a parent folder is missing"
    assert 'load_env --file "${prefix}/grubenv" amberpi_state amberpi_version amberpi_tries' in text


def test_grubenv_is_1024_bytes_and_grub_readable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from amberpi.stages.bootfs import write_grubenv

    env = tmp_path / "grubenv"
    write_grubenv(env, [("amberpi_state", "good"), ("amberpi_version", "6.12.1")])
    assert env.stat().st_size == 1024
    listed = subprocess.run(["grub-editenv", str(env), "list"], capture_output=True, text=True, check=True).stdout
    assert listed.splitlines() == ["amberpi_state=good", "amberpi_version=6.12.1"]


def test_config_txt_for_pi3() -> None:
    board = load_board("pi3")
    text = render("config.txt.j2", board="pi3", uboot="u-boot.bin", sections=board.config_txt)
    assert "arm_64bit=1\n" in text and "kernel=u-boot.bin\n" in text and "enable_uart=1\n" in text
    assert "[pi3]\ndevice_tree=bcm2837-rpi-3-b.dtb\n" in text
    assert text.rstrip().endswith("[all]")
    assert ConfigTxtSection("pi3", "bcm2837-rpi-3-b.dtb") in board.config_txt


def test_sfdisk_script() -> None:
    parts = plan_layout({"boot": 128 * MIB, "system": 8 * MIB, "kernel": 256 * MIB, "persistence": 16 * MIB})
    text = render("sfdisk.j2", partitions=parts, disk_id="1a2b3c4d")
    assert text.splitlines()[:3] == ["label: dos", "label-id: 0x1a2b3c4d", "unit: sectors"]
    assert "start=8192, size=262144, type=c, bootable\n" in text
    assert text.count("type=83") == 3


def test_persistence_conf() -> None:
    assert render("persistence.conf.j2", entries=["/ union"]) == "/ union\n"


def test_every_template_is_used_by_the_code() -> None:
    from pathlib import Path

    sources = "\n".join(p.read_text() for p in Path("amberpi").rglob("*.py"))
    unused = [t.name for t in template_paths() if f'"{t.name}"' not in sources]
    assert unused == []


@pytest.mark.parametrize("board", ["qemu", "pi3"])
def test_grub_cfg_parses_with_grub_script_check(board: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GRUB skips what it cannot parse and carries on, so a syntax error would silently change the boot choice."""
    import shutil
    import subprocess

    if shutil.which("grub-script-check") is None:
        pytest.fail("grub-script-check is missing (tests/run.py installs grub-common)")
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(grub_cfg("6.12.1+deb13-arm64", raspi=board == "pi3"))
    result = subprocess.run(["grub-script-check", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "set fallback=factory" in cfg.read_text()


def test_each_mode_entry_has_its_key() -> None:
    text = grub_cfg()
    for mode, key in (("persistent", "p"), ("readonly", "r"), ("toram", "t"), ("toram-persistent", "k")):
        assert f"--id mode-{mode} --hotkey={key} {{" in text
