"""Settings, declared once: parsing, CLI flags, validation and summary derive from them.

Sources, later overriding earlier: config/defaults.yaml, config/boards/<board>.yaml
(board facts only), the user's --config FILE, then command-line flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from amberpi.errors import ConfigError, ConfigProblem
from amberpi.mirror import debootstrap_default_mirror, detect_host_mirrors

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
BOARDS_DIR = CONFIG_DIR / "boards"

SUITES = ("bookworm", "trixie", "forky", "sid")
COMPRESSIONS = ("zstd", "xz", "lz4", "gzip")
IMAGE_COMPRESSIONS = ("none", "xz")
FIRMWARES = ("none", "raspi")
IMAGE_ID_RE = re.compile(r"^[0-9a-f]{8}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, cli: bool = False) -> Any:
    """Declare one setting: its default, help text, allowed values and whether it has a flag."""
    meta = {"help": help, "choices": choices, "cli": cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """The resolved build configuration. Every key here is a valid config-file key."""

    board: str = setting("qemu", "target board (see --list-boards)", cli=True)
    suite: str = setting("trixie", "Debian suite of the image", choices=SUITES, cli=True)
    mirror: str = setting("", "Debian mirror URL (default: this host's configured Debian mirror)", cli=True)
    security_mirror: str = setting("", "Debian security mirror URL for the image's apt sources (default: the host's)")
    output: str = setting("out", "folder that receives the image, its report and log", cli=True)
    image_name: str = setting("", "file name stem of the image (default: amberpi-<board>)")
    image_id: str = setting("", "8 hex digits naming this build's partitions (default: random per build)")
    hostname: str = setting("amberpi", "hostname of the device")
    packages: list[str] = setting([], "extra Debian packages to install, beside package-lists/")
    root_password_hash: str = setting("", "crypt(3) hash for root (e.g. from `openssl passwd -6`); empty: locked")
    ssh_authorized_keys: list[str] = setting([], "SSH public keys allowed to log in as root")
    hooks_dirs: list[str] = setting([], "extra folders of *.hook.chroot scripts, run after hooks/")
    includes_dirs: list[str] = setting([], "extra folders copied over the rootfs, after includes/")
    kernel_cmdline: str = setting("", "extra kernel command-line arguments")
    squashfs_compression: str = setting("zstd", "squashfs compressor", choices=COMPRESSIONS)
    boot_size_mib: int = setting(128, "size of p1, the FAT boot partition (MiB)")
    kernel_size_mib: int = setting(256, "size of p3, the kernel partition (MiB)")
    persistence_size_mib: int = setting(1024, "size of p4, the persistence partition in the image (MiB)")
    compress: str = setting("none", "also write the image compressed, for downloads (<name>.img.xz)", choices=IMAGE_COMPRESSIONS, cli=True)
    cache_dir: str = setting("/var/cache/amberpi", "build cache folder", cli=True)
    source_date_epoch: int = setting(
        0, "the build's timestamp for every file it writes (0: the newest installed package's date; SOURCE_DATE_EPOCH sets it too)"
    )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        return cls(**data)

    @property
    def name(self) -> str:
        return self.image_name or f"amberpi-{self.board}"


@dataclass(frozen=True)
class ConfigTxtSection:
    filter: str
    device_tree: str


@dataclass(frozen=True)
class Board:
    """Facts about one board, from config/boards/<name>.yaml."""

    name: str
    description: str
    firmware: str = "none"
    serial_console: str = "ttyAMA0,115200"
    device_trees: list[str] = field(default_factory=list)
    uboot: str = ""
    config_txt: list[ConfigTxtSection] = field(default_factory=list)


SETTING_FIELDS = {f.name: f for f in fields(Config)}
BOARD_KEYS = {f.name for f in fields(Board)} - {"name"}


def nearest(name: str, allowed: list[str] | tuple[str, ...]) -> str | None:
    match = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_problem(file: str, key: str, allowed: list[str]) -> ConfigProblem:
    guess = nearest(key, allowed)
    hint = f"did you mean `{guess}`?" if guess else f"allowed keys: {', '.join(sorted(allowed))}"
    return ConfigProblem(file, key, "unknown key", hint)


def list_boards() -> dict[str, str]:
    """Board name → one-line description."""
    boards = {}
    for path in sorted(BOARDS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        boards[path.stem] = str(data.get("description", ""))
    return boards


def read_yaml(path: Path, problems: list[ConfigProblem]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        problems.append(ConfigProblem(str(path), "-", "file not found", "check the path given to --config"))
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "-"
        problems.append(ConfigProblem(str(path), where, f"not valid YAML: {getattr(exc, 'problem', exc)}"))
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(ConfigProblem(str(path), "-", "must be a mapping of key: value"))
        return {}
    return data


def coerce(file: str, key: str, value: Any, problems: list[ConfigProblem]) -> Any:
    """Check one value against its setting's type and choices; None when invalid."""
    spec = SETTING_FIELDS[key]
    default = Config.__dataclass_fields__[key]
    expected = type(default.default_factory()) if default.default_factory is not dataclasses.MISSING else type(default.default)
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value))
            except ValueError:
                problems.append(ConfigProblem(file, key, f"{value!r} is not a whole number"))
                return None
    elif expected is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(ConfigProblem(file, key, f"{value!r} is not a list of strings"))
            return None
    elif expected is str:
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(ConfigProblem(file, key, f"{value!r} is not a string"))
            return None
        value = str(value)
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        guess = nearest(str(value), choices)
        hint = f"allowed: {', '.join(choices)}" + (f"; did you mean `{guess}`?" if guess else "")
        problems.append(ConfigProblem(file, key, f"{value!r} is not supported", hint))
        return None
    return value


def validate_values(values: dict[str, Any], origins: dict[str, str], problems: list[ConfigProblem]) -> None:
    """Cross-field and format checks that types alone do not catch."""

    def bad(key: str, message: str, hint: str | None = None) -> None:
        problems.append(ConfigProblem(origins.get(key, "defaults"), key, message, hint))

    boards = list_boards()
    if values["board"] not in boards:
        guess = nearest(values["board"], list(boards))
        hint = f"allowed: {', '.join(boards)}" + (f"; did you mean `{guess}`?" if guess else "")
        bad("board", f"unknown board {values['board']!r}", hint)
    if values["image_id"] and not IMAGE_ID_RE.match(values["image_id"]):
        bad("image_id", f"{values['image_id']!r} is not 8 lowercase hex digits", "e.g. 1a2b3c4d, or leave it empty")
    if not NAME_RE.match(values["hostname"]) or len(values["hostname"]) > 63:
        bad("hostname", f"{values['hostname']!r} is not a valid hostname", "lowercase letters, digits, '-' and '.'")
    if values["image_name"] and not NAME_RE.match(values["image_name"]):
        bad("image_name", f"{values['image_name']!r} is not a valid file name stem", "lowercase letters, digits, '-', '.'")
    for package in values["packages"]:
        if not PACKAGE_RE.match(package):
            bad("packages", f"{package!r} is not a Debian package name")
    pw = values["root_password_hash"]
    if pw and not re.match(r"^\$(1|5|6|y|gy|2[abxy]?)\$", pw):
        bad("root_password_hash", "not a crypt(3) hash", "generate one with `openssl passwd -6`")
    for key in values["ssh_authorized_keys"]:
        if not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", key):
            bad("ssh_authorized_keys", f"{key[:30]!r}… is not an SSH public key line")
    for mirror_key in ("mirror", "security_mirror"):
        if values[mirror_key] and not re.match(r"^(https?|file)://\S+$", values[mirror_key]):
            bad(mirror_key, f"{values[mirror_key]!r} is not a URL", "e.g. http://HOST/debian")
    if values["source_date_epoch"] < 0:
        bad("source_date_epoch", f"{values['source_date_epoch']} is negative", "seconds since 1970, e.g. `date +%s`")
    limits = {"boot_size_mib": (64, 4096), "kernel_size_mib": (128, 4096), "persistence_size_mib": (256, 1 << 20)}
    for key, (low, high) in limits.items():
        if not low <= values[key] <= high:
            bad(key, f"{values[key]} is out of range", f"allowed: {low}..{high}")


def load_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Merge defaults, the user's file and command-line overrides; validate everything."""
    problems: list[ConfigProblem] = []
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    allowed = list(SETTING_FIELDS)
    layers: list[tuple[str, dict[str, Any], Path | None]] = []
    defaults_file = CONFIG_DIR / "defaults.yaml"
    if defaults_file.exists():
        layers.append((str(defaults_file), read_yaml(defaults_file, problems), defaults_file.parent))
    if config_file is not None:
        layers.append((str(config_file), read_yaml(config_file, problems), config_file.resolve().parent))
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch:
        layers.append(("environment (SOURCE_DATE_EPOCH)", {"source_date_epoch": epoch}, None))
    if overrides:
        layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}, None))
    for origin, data, base in layers:
        for key, raw in data.items():
            key = str(key)
            if key not in SETTING_FIELDS:
                problems.append(unknown_key_problem(origin, key, allowed))
                continue
            value = coerce(origin, key, raw, problems)
            if value is None:
                continue
            if key in ("hooks_dirs", "includes_dirs") and base is not None:
                value = [str((base / v).resolve()) for v in value]
            values[key] = value
            origins[key] = origin
    defaults = Config()
    merged = {f: values.get(f, getattr(defaults, f)) for f in SETTING_FIELDS}
    validate_values(merged, origins, problems)
    for key in ("hooks_dirs", "includes_dirs"):
        for folder in merged[key]:
            if not Path(folder).is_dir():
                problems.append(ConfigProblem(origins.get(key, "defaults"), key, f"{folder} is not a folder"))
    if problems:
        raise ConfigError(problems)
    host_mirror, host_security = detect_host_mirrors()
    if not merged["mirror"]:
        merged["mirror"] = host_mirror or debootstrap_default_mirror()
    if not merged["security_mirror"]:
        merged["security_mirror"] = host_security
    if not merged["image_id"]:
        merged["image_id"] = secrets.token_hex(4)
    return Config(**merged)


def load_board(name: str) -> Board:
    path = BOARDS_DIR / f"{name}.yaml"
    problems: list[ConfigProblem] = []
    data = read_yaml(path, problems)
    for key in data:
        if key not in BOARD_KEYS:
            problems.append(unknown_key_problem(str(path), str(key), sorted(BOARD_KEYS)))
    if data.get("firmware", "none") not in FIRMWARES:
        problems.append(ConfigProblem(str(path), "firmware", f"{data['firmware']!r} is not supported", f"allowed: {', '.join(FIRMWARES)}"))
    if problems:
        raise ConfigError(problems)
    sections = [ConfigTxtSection(**s) for s in data.pop("config_txt", [])]
    return Board(name=name, config_txt=sections, **data)


def summary_lines(config: Config) -> list[str]:
    """Each setting with its value and help, for `summary`."""
    width = max(len(n) for n in SETTING_FIELDS)
    lines = []
    for name, spec in SETTING_FIELDS.items():
        value = getattr(config, name)
        shown = json.dumps(value) if isinstance(value, list) else str(value)
        if name == "root_password_hash" and value:
            shown = "(set)"
        lines.append(f"{name:<{width}}  {shown:<40}  # {spec.metadata['help']}")
    return lines
