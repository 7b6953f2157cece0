"""Config validation: every problem names file, key and the allowed values; exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi.config import Config, load_board, load_config, summary_lines
from amberpi.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user.yaml"
    path.write_text(text)
    return path


def problems_of(config_file: Path | None = None, **overrides: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(config_file, dict(overrides))
    assert info.value.exit_code == 2
    return [str(p) for p in info.value.problems]


def test_defaults_resolve() -> None:
    config = load_config(None, {})
    assert config.board == "qemu" and config.suite == "trixie"
    assert config.mirror.startswith("http"), "a mirror is always resolved (host's or debootstrap's default)"
    assert len(config.image_id) == 8


def test_unknown_board_names_allowed_values() -> None:
    (problem,) = problems_of(board="pi5")
    assert "command line: board: unknown board 'pi5'" in problem
    assert "pi3, pi4, qemu" in problem


def test_unknown_suite_names_allowed_values() -> None:
    (problem,) = problems_of(suite="trixy")
    assert "suite: 'trixy' is not supported" in problem
    assert "did you mean `trixie`" in problem


def test_unknown_key_in_file_gets_nearest_name(tmp_path: Path) -> None:
    config_file = write(tmp_path, "hostnme: pi\n")
    (problem,) = problems_of(config_file)
    assert problem.startswith(f"{config_file}: hostnme: unknown key")
    assert "did you mean `hostname`" in problem


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    config_file = write(tmp_path, "suite: trixie\npackages: [vim\n")
    (problem,) = problems_of(config_file)
    assert str(config_file) in problem and "not valid YAML" in problem and "line" in problem


def test_all_problems_reported_sorted(tmp_path: Path) -> None:
    config_file = write(tmp_path, "suite: potato\nboot_size_mib: lots\nroot_password_hash: secret\nzzz: 1\n")
    problems = problems_of(config_file)
    keys = [p.split(": ")[1] for p in problems]
    assert keys == sorted(keys)
    assert len(problems) == 4
    assert any("root_password_hash: not a crypt(3) hash" in p and "openssl passwd -6" in p for p in problems)
    assert any("boot_size_mib: 'lots' is not a whole number" in p for p in problems)


def test_types_and_ranges(tmp_path: Path) -> None:
    config_file = write(tmp_path, "packages: 3\npersistence_size_mib: 10\nimage_id: XYZ\n")
    problems = problems_of(config_file)
    assert any("packages: 3 is not a list of strings" in p for p in problems)
    assert any("persistence_size_mib: 10 is out of range" in p for p in problems)
    assert any("image_id: 'XYZ' is not 8 lowercase hex digits" in p for p in problems)


def test_not_a_mapping(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "- a\n- b\n"))
    assert "must be a mapping" in problem


def test_missing_config_file(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert "file not found" in problem


def test_hooks_dirs_relative_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "myhooks").mkdir()
    config = load_config(write(tmp_path, "hooks_dirs: [myhooks]\n"), {})
    assert config.hooks_dirs == [str(tmp_path / "myhooks")]
    assert any("not a folder" in p for p in problems_of(write(tmp_path, "hooks_dirs: [absent]\n")))


def test_command_line_overrides_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "suite: bookworm\nhostname: a\n"), {"suite": "trixie"})
    assert config.suite == "trixie" and config.hostname == "a"


def test_json_round_trip() -> None:
    config = load_config(None, {"board": "pi3"})
    assert Config.from_json(config.to_json()) == config


def test_summary_hides_password_hash() -> None:
    config = load_config(None, {})
    config = Config.from_json({**config.to_json(), "root_password_hash": "$6$x$y"})
    text = "\n".join(summary_lines(config))
    assert "$6$x$y" not in text and "(set)" in text


@pytest.mark.parametrize("board", ["qemu", "pi3", "pi4"])
def test_boards_load(board: str) -> None:
    loaded = load_board(board)
    assert loaded.description
    if board != "qemu":
        assert loaded.firmware == "raspi" and loaded.uboot and loaded.device_trees


def test_source_date_epoch_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert load_config().source_date_epoch == 0, "0: the newest package's date decides"
    assert any("source_date_epoch: -5 is negative" in p for p in problems_of(write(tmp_path, "source_date_epoch: -5\n")))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert load_config().source_date_epoch == 1700000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ConfigError) as error:
        load_config()
    assert "environment (SOURCE_DATE_EPOCH)" in error.value.render() and "not a whole number" in error.value.render()


def test_board_file_problems_come_with_the_config_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass, one error: a broken board file and a broken config are reported together."""
    from amberpi import config as config_module

    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "odd.yaml").write_text("description: x\nfirmware: bios\ndevice_trees: [not-a-tree]\nconfig_txt: [{filter: pi3}]\nspeed: 3\n")
    monkeypatch.setattr(config_module, "BOARDS_DIR", boards)
    problems = problems_of(write(tmp_path, "hostname: Bad_Name\n"), board="odd")
    text = "\n".join(problems)
    assert "hostname: 'Bad_Name' is not a valid hostname" in text
    assert "odd.yaml: firmware: 'bios' is not supported" in text
    assert "odd.yaml: device_trees: 'not-a-tree' is not a device tree path" in text
    assert "odd.yaml: config_txt[0].device_tree: missing" in text
    assert "odd.yaml: speed: unknown key" in text
    assert len(problems) >= 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('kernel_cmdline: "quiet\\" rescue"\n', "kernel_cmdline: "),
        ("kernel_cmdline: quiet $root\n", "is not a kernel command line GRUB can carry"),
        ("kernel_tries: 0\n", "kernel_tries: 0 is out of range"),
        ('root_password_hash: "$6$salt:with:colons"\n', "root_password_hash: not a crypt(3) hash"),
        ("output: ''\n", "output: must not be empty"),
    ],
)
def test_values_that_would_break_what_they_are_pasted_into(tmp_path: Path, text: str, message: str) -> None:
    assert any(message in problem for problem in problems_of(write(tmp_path, text)))


def test_a_config_that_is_not_utf8_or_is_a_folder(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"hostname: \xff\xfe\n")
    assert any("is not UTF-8 text" in p for p in problems_of(binary))
    assert any("is a folder" in p for p in problems_of(tmp_path))


def test_resilience_defaults_and_layers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "resilience:\n  mode: readonly\n  zram_percent: 25\n"), {})
    assert config.resilience.mode == "readonly" and config.resilience.zram_percent == 25
    assert config.resilience.zram_algorithm == "zstd", "keys the file does not name keep their defaults"
    assert Config.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resilience:\n  mode: nonsense\n", "resilience.mode: 'nonsense' is not supported"),
        ("resilience:\n  persistent_paths: [home]\n", "resilience.persistent_paths: 'home' is not an absolute path"),
        ("resilience:\n  zram_percent: 150\n", "resilience.zram_percent: 150 is out of range"),
        ("resilience:\n  watchdog_seconds: 0\n", "resilience.watchdog_seconds: 0 is out of range"),
        ("resilience:\n  jumper: gpiochip0:17\n", "resilience.jumper: the qemu board has no GPIO header"),
        ("resilience:\n  halt_button: pin 5\n", "resilience.halt_button: 'pin 5' is not a GPIO line"),
        ("resilience:\n  grow_persistence: maybe\n", "resilience.grow_persistence: 'maybe' is not true or false"),
        ("resilience:\n  zram: 5\n", "resilience.zram: unknown key"),
        ("resilience: readonly\n", "resilience: must be a mapping"),
        ("resilience:\n  persistent_paths: [/var/log]\n", "resilience.ram_paths: /var/log overlaps a persistent path"),
    ],
)
def test_resilience_bad_values(tmp_path: Path, text: str, message: str) -> None:
    assert any(message in problem for problem in problems_of(write(tmp_path, text))), problems_of(write(tmp_path, text))


def test_resilience_gpio_on_a_pi_board(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "resilience:\n  jumper: gpiochip0:22\n"), {"board": "pi3"})
    assert config.resilience.jumper == "gpiochip0:22"
    problems = problems_of(write(tmp_path, "resilience:\n  halt_button: gpiochip0:17\n"), board="pi3")
    assert any("resilience.halt_button: gpiochip0:17 is the jumper's line too" in p for p in problems)
