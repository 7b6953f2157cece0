"""Config validation: every problem names file, key and the allowed values; exit code 2."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from amberpi.config import Config, Resilience, load_board, load_config, summary_lines
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


def test_firstboot_dir_relative_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "seeds").mkdir()
    assert load_config(write(tmp_path, "firstboot_dir: seeds\n"), {}).firstboot_dir == str(tmp_path / "seeds")
    assert load_config(write(tmp_path, "firstboot_dir: ''\n"), {}).firstboot_dir == ""
    assert any("absent is not a folder" in p for p in problems_of(write(tmp_path, "firstboot_dir: absent\n")))


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
        # Pasted into a systemd unit file: a newline or a space would add directives or units.
        ('kernel_confirm_units: ["ssh.service\\nExecStart=/bin/sh"]\n', "is not a systemd unit name"),
        ("kernel_confirm_units: [ssh]\n", "is not a systemd unit name"),
        ("kernel_confirm_seconds: 0\n", "kernel_confirm_seconds: 0 is out of range"),
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


# --- YAML 1.1's numbers and booleans, hostnames, SSH keys, mirror URLs ------------------------


def test_numbers_yaml_would_read_in_octal_or_as_booleans_stay_as_written(tmp_path: Path) -> None:
    """Before: `image_id: 01234567` was the octal number 342391, reported as "'342391' is not 8 hex digits"."""
    config = load_config(write(tmp_path, "image_id: 01234567\nhostname: no\nboot_size_mib: 0200\n"), {})
    assert config.image_id == "01234567"
    assert config.hostname == "no", "YAML 1.1's false, a hostname as written"
    assert config.boot_size_mib == 200, "digits are decimal, as YAML 1.2 reads them"
    (problem,) = problems_of(write(tmp_path, "image_id: 0x1a2b3c4d\n"))
    assert "image_id: '0x1a2b3c4d' is not 8 lowercase hex digits" in problem
    (problem,) = problems_of(write(tmp_path, "kernel_tries: 0x2\n"))
    assert "kernel_tries: 0x2 is not a whole number (write it in decimal digits)" in problem


def test_a_config_round_trips_through_the_docker_backends_yaml(tmp_path: Path) -> None:
    import yaml

    config = load_config(write(tmp_path, "image_id: 01234567\nhostname: 'no'\n"), {})
    assert load_config(write(tmp_path, yaml.safe_dump(config.to_json())), {}) == config


@pytest.mark.parametrize("name", ["1234", "localhost", "Bad_Name", "-pi", "pi-", "a" * 64, "pi.lan", ""])
def test_hostnames_that_are_refused(tmp_path: Path, name: str) -> None:
    """Before: an all-digit name (an address to `ping`) and `localhost` were accepted."""
    (problem,) = problems_of(write(tmp_path, f"hostname: '{name}'\n"))
    assert problem.startswith(f"{tmp_path / 'user.yaml'}: hostname: ")


@pytest.mark.parametrize("name", ["pi", "kiosk-2", "0pi", "a" * 63])
def test_hostnames_that_are_accepted(tmp_path: Path, name: str) -> None:
    assert load_config(write(tmp_path, f"hostname: '{name}'\n"), {}).hostname == name


def ssh_key(kind: str, payload: bytes = bytes(32)) -> str:
    import base64
    import struct

    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", len(payload)) + payload
    return f"{kind} {base64.b64encode(blob).decode()} me@laptop"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (ssh_key("ssh-dss"), "has the unknown key type 'ssh-dss'"),
        ("ssh-foo AAAAC3NzaC1lZDI1NTE5 me", "has the unknown key type 'ssh-foo'"),
        ('from="10.0.0.1" ' + ssh_key("ssh-ed25519"), "has the unknown key type"),
        ("ssh-ed25519 not*base64 me", "the key data is not base64"),
        (ssh_key("ssh-rsa").replace("ssh-rsa ", "ssh-ed25519 ", 1), "the key data is not a ssh-ed25519 key"),
        ("ssh-ed25519", "is not an SSH public key line"),
    ],
)
def test_ssh_key_lines_of_unknown_types_or_broken_data_are_refused(tmp_path: Path, line: str, message: str) -> None:
    """Before: any line that started with ssh-, ecdsa- or sk- and had two words passed."""
    import yaml

    (problem,) = problems_of(write(tmp_path, yaml.safe_dump({"ssh_authorized_keys": [line]})))
    assert "ssh_authorized_keys: " in problem and message in problem, problem


def test_ssh_keys_of_known_types_are_accepted(tmp_path: Path) -> None:
    import yaml

    keys = [ssh_key("ssh-ed25519"), ssh_key("ecdsa-sha2-nistp256", bytes(65)), ssh_key("sk-ssh-ed25519@openssh.com")]
    assert load_config(write(tmp_path, yaml.safe_dump({"ssh_authorized_keys": keys})), {}).ssh_authorized_keys == keys


@pytest.mark.parametrize("key", ["mirror", "security_mirror", "image_mirror"])
def test_mirror_urls_with_credentials_are_refused_without_repeating_them(tmp_path: Path, key: str) -> None:
    """Before: http://user:password@host/debian was accepted, and written into the image's apt sources and the report."""
    (problem,) = problems_of(write(tmp_path, f"{key}: http://builder:s3cret@mirror.example/debian\n"))
    assert f"{key}: holds a user name or password (user:password@)" in problem and "apt sources" in problem
    assert "s3cret" not in problem and "apt-cacher-ng" in problem


def test_a_mirror_with_credentials_in_the_hosts_apt_sources_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amberpi import config as config_module

    monkeypatch.setattr(config_module, "detect_host_mirrors", lambda: ("http://u:pw@mirror.lan/debian", ""))
    (problem,) = problems_of()
    assert "this host's apt sources" in problem and "mirror: holds a user name or password" in problem and ":pw@" not in problem
    assert load_config(None, {"mirror": "http://mirror.lan/debian"}).mirror == "http://mirror.lan/debian"


def test_image_mirror_defaults_to_the_build_mirror(tmp_path: Path) -> None:
    assert load_config(None, {"mirror": "http://build.example/debian"}).image_mirror == "http://build.example/debian"
    config = load_config(write(tmp_path, "image_mirror: http://deb.debian.org/debian\n"), {"mirror": "http://proxy.lan:3142/debian"})
    assert (config.mirror, config.image_mirror) == ("http://proxy.lan:3142/debian", "http://deb.debian.org/debian")


# --- secrets ----------------------------------------------------------------------------------


def test_a_secret_of_the_wrong_type_is_never_repeated_back(tmp_path: Path) -> None:
    """Before: `root_password_hash: [HASH]` was reported as "['$6$…'] is not a string", hash and all."""
    (problem,) = problems_of(write(tmp_path, "root_password_hash: ['$6$salt$leakedhash']\n"))
    assert "root_password_hash: the value is not a string" in problem and "leakedhash" not in problem


def test_a_configs_printout_never_shows_the_password_hash() -> None:
    """Before: repr(Config) (in a debug printout, a traceback's locals) held the hash."""
    config = Config(root_password_hash="$6$salt$leakedhash")
    assert "leakedhash" not in repr(config) and "leakedhash" not in str(config)


# --- every setting, every type ----------------------------------------------------------------


def every_setting() -> list[tuple[str, Any, Any]]:
    """(key, its type, its declaration) of every config key, sections' keys as section.key."""
    from dataclasses import fields

    from amberpi.config import SETTING_FIELDS, field_type

    found = []
    for name, spec in SETTING_FIELDS.items():
        if spec.metadata.get("section"):
            section = field_type(Config, name)
            found += [(f"{name}.{sub.name}", field_type(section, sub.name), sub) for sub in fields(section)]
            found.append((name, "section", spec))
        else:
            found.append((name, field_type(Config, name), spec))
    return found


# Values of the wrong type for each kind of setting, as YAML. A number or true/false where text is
# expected is text as written (`hostname: no`), so text settings get lists and mappings.
WRONG = {
    bool: ["maybe", "[true]", "{a: 1}", "3"],
    int: ["lots", "[1]", "{a: 1}", "1.5", "0x10", "true"],
    str: ["['$6$x$leaked']", "{a: leaked}"],
    "list": ["{a: 1}", "[[1]]", "[{a: 1}]", "true"],
    "section": ["5", "[1]", "text"],
}


def wrong_values() -> list[Any]:
    cases = []
    for key, kind, _spec in every_setting():
        kind_name = "list" if typing.get_origin(kind) is list else kind
        cases += [pytest.param(key, value, id=f"{key}={value}") for value in WRONG[kind_name]]
    return cases


@pytest.mark.parametrize(("key", "value"), wrong_values())
def test_every_setting_with_a_value_of_the_wrong_type_gives_one_located_problem(tmp_path: Path, key: str, value: str) -> None:
    """Every key of `summary`, each wrong type: one problem naming the file and the key, never a crash."""
    section, _, sub = key.partition(".")
    text = f"{section}:\n  {sub}: {value}\n" if sub else f"{key}: {value}\n"
    config_file = write(tmp_path, text)
    problems = problems_of(config_file)
    assert len(problems) == 1 and problems[0].startswith(f"{config_file}: {key}: "), problems
    assert "leaked" not in problems[0] or "root_password_hash" not in key


def cli_wrong_value(name: str, spec: Any) -> str:
    """A value no command-line setting may take: the command line gives text, so a wrong value of its kind."""
    if name == "board":
        return "pi5"
    if spec.metadata.get("choices"):
        return "nonsense"
    if spec.metadata.get("pattern"):
        return "not one"
    if not spec.metadata.get("allow_empty", True):
        return ""
    raise AssertionError(f"--{name.replace('_', '-')}: give this test a wrong value for it")


@pytest.mark.parametrize("name", [name for name, _kind, spec in every_setting() if spec.metadata.get("cli")])
def test_every_command_line_setting_with_a_wrong_value_gives_a_located_problem(name: str) -> None:
    from amberpi.cli import parse_args, setting_overrides
    from amberpi.config import SETTING_FIELDS

    args = parse_args(["summary", f"--{name.replace('_', '-')}", cli_wrong_value(name, SETTING_FIELDS[name])])
    problems = problems_of(**setting_overrides(args))
    assert len(problems) == 1 and problems[0].startswith(f"command line: {name}: "), problems


# A value of the wrong type for every setting, top level and nested: each is refused with a
# message naming the key (exit 2), never a crash. A YAML scalar given to a text setting is
# that text (`output: 5` is the folder "5"), by design: YAML's number forms are not guessed at.
WRONG_VALUES: dict[object, list[object]] = {
    int: ["abc", [1], {"a": 1}, 1.5, True],
    str: [[1], {"a": 1}],
    bool: ["maybe", 3, [True]],
    list[str]: [5, "x", {"a": 1}, [1], [None], [["nested"]]],
}


def wrong_typed_settings() -> list[tuple[str, object]]:
    cases = []
    for section, cls in (("", Config), ("resilience.", Resilience)):
        for name, hint in typing.get_type_hints(cls).items():
            cases += [(section + name, value) for value in WRONG_VALUES.get(hint, [])]
    return cases


@pytest.mark.parametrize(("key", "value"), wrong_typed_settings(), ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_every_setting_refuses_a_value_of_the_wrong_type(tmp_path: Path, key: str, value: object) -> None:
    section, _, name = key.rpartition(".")
    data = {section: {name: value}} if section else {name: value}
    problems = problems_of(write(tmp_path, yaml.safe_dump(data)))
    assert any(f"{name}:" in problem or f"{name}[" in problem for problem in problems), problems
