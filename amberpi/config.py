"""Settings, declared once: type, default, help, allowed values and rules live on each field.

Parsing, CLI flags, validation, `summary` and the JSON round trip all derive from
the declarations below; config/defaults.yaml holds no defaults of its own (it is an
optional site-wide layer, empty as shipped).

Sources, later overriding earlier: the defaults declared here, config/defaults.yaml,
the user's --config FILE, SOURCE_DATE_EPOCH, then command-line flags. The board file
(config/boards/<board>.yaml) is validated in the same pass, so every problem of a
build's input comes out in one error.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import json
import os
import re
import secrets
import struct
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from amberpi.errors import ConfigError, ConfigProblem
from amberpi.mirror import APT_DIR, debootstrap_default_mirror, detect_host_mirrors

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
BOARDS_DIR = CONFIG_DIR / "boards"
DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"


@dataclass(frozen=True)
class Pattern:
    """A regular expression a value must match, and what to tell the user when it does not."""

    regex: str
    says: str
    hint: str | None = None

    def check(self, value: str, *, secret: bool = False) -> str | None:
        """Why value does not match, or None; a secret value is never repeated back."""
        if re.fullmatch(self.regex, value):
            return None
        return f"not {self.says}" if secret else f"{shown(value)} is not {self.says}"

    def hint_for(self, value: str) -> str | None:
        """How to fix `value` (the one hint of the rule, unless a rule knows better)."""
        return self.hint


# scheme://[user[:password]@]host...: the part before the host names someone.
USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")


@dataclass(frozen=True)
class UrlPattern(Pattern):
    """A mirror URL. It is written into the image's apt sources and into the build report, so it
    must not carry a user name or password (which this rule never repeats back)."""

    def check(self, value: str, *, secret: bool = False) -> str | None:
        if USERINFO.match(value):
            return "holds a user name or password (user:password@): it would be written into the image's apt sources and the report"
        return super().check(value, secret=secret)

    def hint_for(self, value: str) -> str | None:
        if USERINFO.match(value):
            return "use a mirror that needs none, such as a local apt-cacher-ng, or reach it through http_proxy"
        return self.hint


# The key types the image's OpenSSH accepts (DSA is gone from OpenSSH 10).
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


@dataclass(frozen=True)
class SshKeyPattern(Pattern):
    """An authorized_keys line, TYPE BASE64 [COMMENT]: a known type, and key data of that type."""

    def check(self, value: str, *, secret: bool = False) -> str | None:
        problem = super().check(value, secret=secret)
        if problem:
            return problem
        kind, blob = value.split(" ", 2)[:2]
        if kind not in SSH_KEY_TYPES:
            return f"{shown(value)} has the unknown key type {shown(kind, 24)}"
        try:
            data = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            return f"{shown(value)}: the key data is not base64"
        # The key data starts with its own type, as a length-prefixed string (RFC 4253, 6.6).
        if not data.startswith(struct.pack(">I", len(kind)) + kind.encode()):
            return f"{shown(value)}: the key data is not a {kind} key (cut short, or another key's type)"
        return None

    def hint_for(self, value: str) -> str | None:
        if value.split(" ", 1)[0] not in SSH_KEY_TYPES:
            return f"the image's OpenSSH takes {', '.join(SSH_KEY_TYPES)}; one key per line, without options"
        return self.hint


def shown(value: str, limit: int = 40) -> str:
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    cli: bool = False,
    low: int | None = None,
    high: int | None = None,
    pattern: Pattern | None = None,
    item_pattern: Pattern | None = None,
    allow_empty: bool = True,
    secret: bool = False,
    relative_folders: bool = False,
) -> Any:
    """Declare one setting: default, help text, and the rules its value must follow.

    low/high bound a whole number; pattern a string, item_pattern each string of a list
    (an empty string passes when allow_empty); secret keeps the value out of every
    printout and report; relative_folders resolves paths against the config file's folder.
    """
    meta = {
        "help": help,
        "choices": choices,
        "cli": cli,
        "low": low,
        "high": high,
        "pattern": pattern,
        "item_pattern": item_pattern,
        "allow_empty": allow_empty,
        "secret": secret,
        "relative_folders": relative_folders,
    }
    # A secret stays out of repr() too: no printout of a Config (or of an error holding one) shows it.
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def section(cls: type, help: str) -> Any:
    """Declare a nested section of settings (a mapping in YAML), itself a settings dataclass."""
    return field(default_factory=cls, metadata={"help": help, "section": True, "cli": False})


SUITES = ("bookworm", "trixie", "forky", "sid")
COMPRESSIONS = ("zstd", "xz", "lz4", "gzip")
IMAGE_COMPRESSIONS = ("none", "xz")
FIRMWARES = ("none", "raspi")
HEX8 = Pattern(r"[0-9a-f]{8}", "8 lowercase hex digits", "e.g. 1a2b3c4d, or leave it empty")
NAME = Pattern(r"[a-z0-9][a-z0-9.-]*", "a valid file name stem", "lowercase letters, digits, '-', '.'")
# One DNS label (RFC 1123); not only digits (`ping 1234` is an address) and not localhost (/etc/hosts names it apart).
HOSTNAME = Pattern(
    r"(?!\d+$)(?!localhost$)(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?",
    "a valid hostname",
    "lowercase letters, digits and '-', at most 63, not only digits, not localhost",
)
PACKAGE = Pattern(r"[a-z0-9][a-z0-9+.-]+", "a Debian package name")
CRYPT_HASH = Pattern(r"\$(1|5|6|y|gy|2[abxy]?)\$[^:\s]+", "a crypt(3) hash", "generate one with `openssl passwd -6`")
SSH_KEY = SshKeyPattern(r"\S+ \S+( [^\n\r]*)?", "an SSH public key line", "TYPE BASE64 [COMMENT], as in ~/.ssh/id_ed25519.pub")
URL = UrlPattern(r"(https?|file)://\S+", "a URL", "e.g. http://HOST/debian")
# Pasted into grub.cfg inside double quotes: nothing that ends the string or expands in it.
CMDLINE = Pattern(r"[^\"$\\`;\n\r]*", "a kernel command line GRUB can carry", 'no " $ \\ ` ; or line breaks')
CONSOLE = Pattern(r"tty[A-Za-z0-9]+(,[0-9]+[noe0-9]*)?", "a serial console", "e.g. ttyS1,115200")
IMAGER_TAG = Pattern(r"[a-z0-9][a-z0-9-]*", "a Raspberry Pi Imager device tag", "e.g. pi4-64bit")
DTB = Pattern(r"[A-Za-z0-9_./-]+\.dtb", "a device tree path", "e.g. broadcom/bcm2837-rpi-3-b.dtb")


MODES = ("persistent", "readonly", "toram", "toram-persistent")
ABSOLUTE_PATH = Pattern(r"/[A-Za-z0-9._@+-]+(/[A-Za-z0-9._@+-]+)*", "an absolute path", "e.g. /home or /var/lib/myapp")
SYSTEMD_UNIT = Pattern(
    r"[A-Za-z0-9@_.:-]+\.(service|target|socket|mount|path|timer|device|swap)", "a systemd unit name", "e.g. ssh.service"
)
GPIO_SPEC = Pattern(r"auto|off|gpiochip[0-9]+:[0-9]+", "a GPIO line", "gpiochipN:LINE (e.g. gpiochip0:17), `off`, or `auto`")
ZRAM_ALGORITHMS = ("zstd", "lz4", "lzo-rle", "lzo")
LEVELS = ("low", "high")


@dataclass(frozen=True)
class Resilience:
    """How the device treats its card: the `resilience:` section of the build config."""

    mode: str = setting(
        "persistent",
        "the default mode: persistent (changes kept on p4), readonly (changes in RAM, the card never written), "
        "toram (the system copied to RAM, nothing kept), toram-persistent (the system in RAM, changes kept on p4)",
        choices=MODES,
    )
    maintenance_mode: str = setting("persistent", "the mode the GPIO jumper switches a boot to", choices=MODES)
    persistent_paths: list[str] = setting(
        [], "in persistent modes, keep only these folders on p4 (e.g. /home); empty: the whole root", item_pattern=ABSOLUTE_PATH
    )
    ram_paths: list[str] = setting(
        ["/var/log", "/var/tmp"], "folders on a tmpfs in every mode, sparing the card (/tmp always is)", item_pattern=ABSOLUTE_PATH
    )
    journal_max_mib: int = setting(32, "the journal's size cap in RAM (MiB)", low=4, high=1024)
    journal_save: bool = setting(
        True, "in persistent modes, keep copies of the journal on p4 (at shutdown, and every journal_save_minutes)"
    )
    journal_save_minutes: int = setting(
        0, "in persistent modes, copy the journal to p4 every N minutes as well as at shutdown (0: at shutdown only)", low=0, high=1440
    )
    zram_percent: int = setting(50, "zram swap, in % of RAM (0: none)", low=0, high=100)
    zram_algorithm: str = setting("zstd", "zram compression", choices=ZRAM_ALGORITHMS)
    panic_reboot_seconds: int = setting(10, "a panicked kernel reboots after this many seconds", low=1, high=3600)
    watchdog_seconds: int = setting(15, "the hardware watchdog's timeout; systemd feeds it, a hung system reboots", low=1, high=600)
    jumper: str = setting(
        "auto", "boot-time jumper that switches to maintenance_mode: gpiochipN:LINE, off, or auto (the board's)", pattern=GPIO_SPEC
    )
    jumper_active: str = setting("low", "the level the jumper reads when set (low: it connects the line to ground)", choices=LEVELS)
    halt_button: str = setting(
        "auto", "button that shuts the device down cleanly: gpiochipN:LINE, off, or auto (the board's)", pattern=GPIO_SPEC
    )
    halt_active: str = setting("low", "the level the halt button reads when pressed", choices=LEVELS)
    toram_margin_mib: int = setting(
        256, "RAM toram leaves free beside the system's copy, or it boots readonly instead (MiB)", low=0, high=1 << 16
    )
    grow_persistence: bool = setting(True, "first boot grows p4 to the end of the card")


@dataclass(frozen=True)
class Config:
    """The resolved build configuration. Every key here is a valid config-file key."""

    board: str = setting("qemu", "target board (`python build.py boards` lists them)", cli=True)
    suite: str = setting("trixie", "Debian suite of the image", choices=SUITES, cli=True)
    mirror: str = setting("", "Debian mirror URL (default: this host's configured Debian mirror)", cli=True, pattern=URL)
    security_mirror: str = setting("", "Debian security mirror URL for the image's apt sources (default: the host's)", pattern=URL)
    image_mirror: str = setting(
        "", "Debian mirror URL the device's apt sources point at (default: `mirror`, the one the build uses)", pattern=URL
    )
    output: str = setting("out", "folder that receives the image, its report and log", cli=True, allow_empty=False)
    image_name: str = setting("", "file name stem of the image (default: amberpi-<board>)", pattern=NAME)
    image_id: str = setting("", "8 hex digits naming this build's partitions (default: random per build)", pattern=HEX8)
    hostname: str = setting("amberpi", "hostname of the device", pattern=HOSTNAME, allow_empty=False)
    packages: list[str] = setting([], "extra Debian packages to install, beside package-lists/", item_pattern=PACKAGE)
    root_password_hash: str = setting(
        "", "crypt(3) hash for root (e.g. from `openssl passwd -6`); empty: locked", pattern=CRYPT_HASH, secret=True
    )
    ssh_authorized_keys: list[str] = setting([], "SSH public keys allowed to log in as root", item_pattern=SSH_KEY)
    hooks_dirs: list[str] = setting([], "extra folders of *.hook.chroot scripts, run after hooks/", relative_folders=True)
    hook_timeout_seconds: int = setting(
        1800, "seconds a chroot hook may run before it is stopped, with every process it started", low=1, high=86400
    )
    includes_dirs: list[str] = setting([], "extra folders copied over the rootfs, after includes/", relative_folders=True)
    firstboot_dir: str = setting(
        "",
        "folder of first-boot files (user-data, network-config, meta-data: cloud-init NoCloud, as Raspberry Pi Imager writes them)"
        " put on p1; the device applies them at first boot",
        relative_folders=True,
    )
    kernel_cmdline: str = setting("", "extra kernel command-line arguments", pattern=CMDLINE)
    kernel_tries: int = setting(2, "boots a newly installed kernel gets to confirm a good boot before GRUB falls back", low=1, high=9)
    kernel_confirm_units: list[str] = setting(
        ["network-online.target", "ssh.service"],
        "units a kernel on trial must bring up to be kept (a kernel without its network driver must not be)",
        item_pattern=SYSTEMD_UNIT,
    )
    kernel_confirm_seconds: int = setting(
        300, "seconds after multi-user.target a kernel on trial has to bring them up, or the device reboots to try again", low=10, high=3600
    )
    kernel_confirm_degraded: bool = setting(False, "keep a kernel on trial even when some unit failed (systemd's 'degraded')")
    squashfs_compression: str = setting("zstd", "squashfs compressor", choices=COMPRESSIONS)
    boot_size_mib: int = setting(128, "size of p1, the FAT boot partition (MiB)", low=64, high=4096)
    kernel_size_mib: int = setting(256, "size of p3, the kernel partition (MiB)", low=128, high=4096)
    persistence_size_mib: int = setting(1024, "size of p4, the persistence partition in the image (MiB)", low=256, high=1 << 20)
    compress: str = setting("none", "also write the image compressed, for downloads (<name>.img.xz)", choices=IMAGE_COMPRESSIONS, cli=True)
    release_url: str = setting(
        "",
        "the base URL the release's files will be served from (download links in the Imager list); empty: bare file names",
        cli=True,
        pattern=URL,
    )
    cache_dir: str = setting("/var/cache/amberpi", "build cache folder", cli=True, allow_empty=False)
    source_date_epoch: int = setting(
        0, "the build's timestamp for every file it writes (0: the newest installed package's date; SOURCE_DATE_EPOCH sets it too)", low=0
    )
    resilience: Resilience = section(Resilience, "how the device treats its card: modes, RAM paths, zram, watchdogs, GPIO")

    def to_json(self, *, redact: bool = False) -> dict[str, Any]:
        """Every setting; with `redact`, secrets are replaced by whether they are set."""
        data = dataclasses.asdict(self)
        if redact:
            for name in SECRET_SETTINGS:
                data[name] = "(set)" if data[name] else ""
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        return cls(**{**data, "resilience": Resilience(**data.get("resilience", {}))})

    @property
    def name(self) -> str:
        return self.image_name or f"amberpi-{self.board}"


@dataclass(frozen=True)
class ConfigTxtSection:
    filter: str = setting("", "a config.txt conditional filter, e.g. pi3, pi4, pi400", allow_empty=False)
    device_tree: str = setting("", "the device tree file that filter loads", pattern=DTB, allow_empty=False)


@dataclass(frozen=True)
class Board:
    """Facts about one board, from config/boards/<name>.yaml."""

    name: str = ""
    description: str = setting("", "one line shown by `boards`", allow_empty=False)
    firmware: str = setting("none", "boot firmware before GRUB", choices=FIRMWARES)
    serial_console: str = setting("ttyAMA0,115200", "the serial console the kernel logs to", pattern=CONSOLE)
    device_trees: list[str] = setting([], "device trees (from the kernel package) the board boots with", item_pattern=DTB)
    uboot: str = setting("", "U-Boot binary from u-boot-rpi, e.g. rpi_arm64/u-boot.bin")
    config_txt: list[ConfigTxtSection] = setting([], "config.txt sections: [{filter, device_tree}]")
    gpio_jumper: str = setting("", "the jumper's line when the config says auto (gpiochipN:LINE); empty: the board has no GPIO header")
    gpio_halt: str = setting("", "the halt button's line when the config says auto (gpiochipN:LINE)")
    imager_devices: list[str] = setting(
        [], "Raspberry Pi Imager device tags the image is listed for (e.g. pi4-64bit); empty: not in Imager's list", item_pattern=IMAGER_TAG
    )


SETTING_FIELDS = {f.name: f for f in fields(Config)}
SECRET_SETTINGS = tuple(name for name, spec in SETTING_FIELDS.items() if spec.metadata.get("secret"))


def nearest(name: str, allowed: list[str] | tuple[str, ...]) -> str | None:
    match = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return match[0] if match else None


def choice_hint(value: str, allowed: list[str] | tuple[str, ...]) -> str:
    guess = nearest(value, allowed)
    return f"allowed: {', '.join(allowed)}" + (f"; did you mean `{guess}`?" if guess else "")


def unknown_key_problem(file: str, key: str, allowed: list[str]) -> ConfigProblem:
    guess = nearest(key, allowed)
    hint = f"did you mean `{guess}`?" if guess else f"allowed keys: {', '.join(sorted(allowed))}"
    return ConfigProblem(file, key, "unknown key", hint)


def list_boards() -> dict[str, str]:
    """Board name → one-line description (unreadable board files are reported when used)."""
    boards = {}
    for path in sorted(BOARDS_DIR.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        boards[path.stem] = str(data.get("description", "")) if isinstance(data, dict) else ""
    return boards


class YamlText(str):
    """A plain scalar YAML 1.1 reads as a number, a boolean or a date, kept as it was written.

    `typed` is what YAML 1.1 made of it. A string setting takes the text: `image_id: 01234567`
    is 01234567, not the octal number 342391, and `hostname: no` is `no`, not false. A number
    setting takes the digits in decimal (0700 is seven hundred, as YAML 1.2 reads it), a
    true-or-false setting takes `typed`.
    """

    typed: Any


class SettingsLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, but numbers, booleans and dates stay YamlText until a setting's type says what they are."""


def _keeping_text(construct: Any) -> Any:
    def constructor(loader: SettingsLoader, node: yaml.ScalarNode) -> YamlText:
        text = YamlText(node.value)
        text.typed = construct(loader, node)
        return text

    return constructor


for _tag, _construct in (
    ("int", yaml.constructor.SafeConstructor.construct_yaml_int),
    ("float", yaml.constructor.SafeConstructor.construct_yaml_float),
    ("bool", yaml.constructor.SafeConstructor.construct_yaml_bool),
    ("timestamp", yaml.constructor.SafeConstructor.construct_yaml_timestamp),
):
    SettingsLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _keeping_text(_construct))


def read_yaml(path: Path, problems: list[ConfigProblem]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=SettingsLoader)  # SettingsLoader is a SafeLoader
    except FileNotFoundError:
        problems.append(ConfigProblem(str(path), "-", "file not found", "check the path given to --config"))
        return {}
    except IsADirectoryError:
        problems.append(ConfigProblem(str(path), "-", "is a folder, not a YAML file", "give the path of a .yaml file"))
        return {}
    except UnicodeDecodeError as exc:
        problems.append(ConfigProblem(str(path), "-", f"is not UTF-8 text (byte {exc.start})", "save it as UTF-8"))
        return {}
    except OSError as exc:
        problems.append(ConfigProblem(str(path), "-", f"cannot be read: {exc.strerror}"))
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


def field_type(owner: type, name: str) -> Any:
    return typing.get_type_hints(owner)[name]


def whole_number(value: Any) -> int | None:
    """A whole number from YAML or from text (command line, environment), in decimal; None if it is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value.strip().replace("_", "")
        if re.fullmatch(r"[-+]?[0-9]+", digits):
            return int(digits, 10)
    return None


def coerce(file: str, key: str, spec: dataclasses.Field[Any], expected: Any, value: Any, problems: list[ConfigProblem]) -> Any:
    """Check one value against its setting's type and rules; None when invalid (the problem is recorded)."""

    def bad(message: str, hint: str | None = None) -> None:
        problems.append(ConfigProblem(file, key, message, hint))

    meta = spec.metadata
    secret = bool(meta.get("secret", False))

    def said(item: Any) -> str:
        """The value in a message: as written (a number as a number, text quoted), and never a secret's."""
        if secret:
            return "the value"
        return str(item) if isinstance(item, YamlText) else repr(item)

    if expected is bool:
        typed = value.typed if isinstance(value, YamlText) else value
        if isinstance(typed, bool):
            return typed
        bad(f"{said(value)} is not true or false")
        return None
    if expected is int:
        number = whole_number(value)
        if number is None:
            octal_or_hex = isinstance(value, YamlText) and isinstance(value.typed, int) and not isinstance(value.typed, bool)
            bad(f"{said(value)} is not a whole number", "write it in decimal digits" if octal_or_hex else None)
            return None
        value = number
        low, high = meta.get("low"), meta.get("high")
        if low is not None and value < low and high is None:
            bad(f"{value} is {'negative' if low == 0 else f'below {low}'}", "seconds since 1970, e.g. `date +%s`" if low == 0 else None)
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            bad(f"{value} is out of range", f"allowed: {low}..{high}")
            return None
        return value
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        if dataclasses.is_dataclass(item_type):
            if not isinstance(value, list):
                bad(f"{said(value)} is not a list")
                return None
            items = [parse_dataclass(item_type, entry, file, f"{key}[{index}]", problems) for index, entry in enumerate(value)]
            return None if any(item is None for item in items) else items
        if value is None:
            return []  # `packages:` with nothing after it
        if isinstance(value, str) and not isinstance(value, YamlText):
            value = [value]  # one name for a list of one; a number or true/false is no list
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad(f"{said(value)} is not a list of strings")
            return None
        value = [str(item) for item in value]
        if meta.get("relative_folders") and any(not item.strip() for item in value):
            bad("an empty folder name", "name each folder, relative to the config file's folder")
            return None
        rule: Pattern | None = meta.get("item_pattern")
        failures = [(item, message) for item in value if rule and (message := rule.check(item, secret=secret))]
        for item, message in failures:
            bad(message, rule.hint_for(item) if rule else None)
        return None if failures else value
    if value is None:
        value = ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        bad(f"{said(value)} is not a string")
        return None
    value = str(value)
    choices = meta.get("choices")
    if choices and value not in choices:
        bad(f"{said(value)} is not supported", choice_hint(value, choices))
        return None
    if value == "":
        if not meta.get("allow_empty", True):
            bad("must not be empty")
            return None
        return value
    pattern: Pattern | None = meta.get("pattern")
    if pattern and (message := pattern.check(value, secret=secret)):
        bad(message, pattern.hint_for(value))
        return None
    return value


def coerce_keys(cls: Any, data: dict[Any, Any], file: str, prefix: str, problems: list[ConfigProblem]) -> dict[str, Any]:
    """The valid values of a mapping for the settings dataclass `cls` (each problem recorded)."""
    specs = {f.name: f for f in fields(cls) if f.metadata}
    values = {}
    for key, raw in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in specs:
            problems.append(unknown_key_problem(file, path, list(specs)))
            continue
        value = coerce(file, path, specs[key], field_type(cls, key), raw, problems)
        if value is not None:
            values[str(key)] = value
    return values


def parse_dataclass(cls: Any, data: Any, file: str, prefix: str, problems: list[ConfigProblem]) -> Any:
    """An instance of a settings dataclass from a mapping, or None (each problem recorded)."""
    if not isinstance(data, dict):
        problems.append(ConfigProblem(file, prefix, "must be a mapping of key: value"))
        return None
    specs = {f.name: f for f in fields(cls) if f.metadata}
    before = len(problems)
    values = coerce_keys(cls, data, file, prefix, problems)
    for name, spec in specs.items():
        if name not in data and not spec.metadata.get("allow_empty", True):
            problems.append(ConfigProblem(file, f"{prefix}.{name}" if prefix else name, "missing", spec.metadata["help"]))
    return None if len(problems) > before else cls(**values)


def load_board(name: str, problems: list[ConfigProblem] | None = None) -> Board:
    """The board's facts; its problems go to `problems` (raised at once when none is given)."""
    own = problems if problems is not None else []
    path = BOARDS_DIR / f"{name}.yaml"
    board = parse_dataclass(Board, read_yaml(path, own), str(path), "", own)
    if board is not None and board.firmware == "raspi" and not (board.uboot and board.device_trees):
        own.append(ConfigProblem(str(path), "uboot", "a raspi board needs `uboot` and `device_trees`"))
    if problems is None and own:
        raise ConfigError(own)
    return dataclasses.replace(board, name=name) if board is not None else Board(name=name)


def merge_section(
    origin: str, key: str, cls: Any, raw: Any, values: dict[str, Any], origins: dict[str, str], problems: list[ConfigProblem]
) -> None:
    """A nested section's keys, layer over layer: a later layer changes only the keys it names."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        problems.append(ConfigProblem(origin, key, "must be a mapping of key: value"))
        return
    given = coerce_keys(cls, raw, origin, key, problems)
    values.setdefault(key, {}).update(given)
    origins.update({f"{key}.{name}": origin for name in given})


Layer = tuple[str, dict[str, Any], Path | None]  # origin, values, the folder relative paths start from


def merge_layers(layers: list[Layer], problems: list[ConfigProblem]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for origin, data, base in layers:
        for key, raw in data.items():
            key = str(key)
            if key not in SETTING_FIELDS:
                problems.append(unknown_key_problem(origin, key, list(SETTING_FIELDS)))
                continue
            spec = SETTING_FIELDS[key]
            if spec.metadata.get("section"):
                merge_section(origin, key, field_type(Config, key), raw, values, origins, problems)
                continue
            value = coerce(origin, key, spec, field_type(Config, key), raw, problems)
            if value is None:
                continue
            if spec.metadata.get("relative_folders"):
                folders = [value] if isinstance(value, str) else value
                folders = [str((base / v).resolve()) if base is not None else str(Path(v).resolve()) for v in folders if v]
                problems.extend(ConfigProblem(origin, key, f"{folder} is not a folder") for folder in folders if not Path(folder).is_dir())
                value = (folders[0] if folders else "") if isinstance(value, str) else folders
            values[key] = value
            origins[key] = origin
    return values, origins


def gpio_line(spec: str, board_default: str) -> str:
    """The line a jumper or button setting means on this board: gpiochipN:LINE, or "" for none."""
    if spec == "auto":
        return board_default
    return "" if spec == "off" else spec


def check_resilience(resilience: Resilience, board: Board, origins: dict[str, str], problems: list[ConfigProblem]) -> None:
    """The rules that tie the section to the board and its keys to each other."""

    def bad(key: str, message: str, hint: str | None = None) -> None:
        problems.append(ConfigProblem(origins.get(f"resilience.{key}", "defaults"), f"resilience.{key}", message, hint))

    for key, spec in (("jumper", resilience.jumper), ("halt_button", resilience.halt_button)):
        if spec not in ("auto", "off") and not board.gpio_jumper:
            bad(key, f"the {board.name} board has no GPIO header", "use `off` (or `auto`) on this board")
    jumper = gpio_line(resilience.jumper, board.gpio_jumper)
    if jumper and jumper == gpio_line(resilience.halt_button, board.gpio_halt):
        bad("halt_button", f"{jumper} is the jumper's line too", "give the halt button a line of its own")
    for path in resilience.ram_paths:
        if any(path == kept or path.startswith(kept + "/") or kept.startswith(path + "/") for kept in resilience.persistent_paths):
            bad("ram_paths", f"{path} overlaps a persistent path", "a folder is either kept or in RAM")


def load_config(config_file: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Merge the layers, validate everything (board file included), report all problems at once."""
    problems: list[ConfigProblem] = []
    layers: list[Layer] = []
    if DEFAULTS_FILE.exists():
        layers.append((str(DEFAULTS_FILE), read_yaml(DEFAULTS_FILE, problems), DEFAULTS_FILE.parent))
    if config_file is not None:
        # Path("") is ".", the current folder: an empty --config must be caught as text.
        if str(config_file).strip() == "":
            problems.append(ConfigProblem("command line", "config", "empty path", "give --config FILE a file"))
        else:
            path = Path(config_file)
            layers.append((str(path), read_yaml(path, problems), path.resolve().parent))
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch:
        layers.append(("environment (SOURCE_DATE_EPOCH)", {"source_date_epoch": epoch}, None))
    if overrides:
        layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}, None))
    values, origins = merge_layers(layers, problems)
    merged = {name: values.get(name, getattr(Config(), name)) for name in SETTING_FIELDS}
    merged["resilience"] = Resilience(**values.get("resilience", {}))
    boards = list(list_boards())
    board = merged["board"]
    if board not in boards:
        origin = origins.get("board", "defaults")
        problems.append(ConfigProblem(origin, "board", f"unknown board {board!r}", choice_hint(board, boards)))
    else:
        check_resilience(merged["resilience"], load_board(merged["board"], problems), origins, problems)
    if problems:
        raise ConfigError(problems)
    host_mirror, host_security = detect_host_mirrors()
    if not merged["mirror"]:
        merged["mirror"] = host_mirror or debootstrap_default_mirror()
    if not merged["security_mirror"]:
        merged["security_mirror"] = host_security
    if not merged["image_mirror"]:
        merged["image_mirror"] = merged["mirror"]
    # A mirror taken from this host's apt sources must not carry credentials into the image either.
    for name in ("mirror", "security_mirror"):
        if name not in origins and USERINFO.match(merged[name]):
            message = URL.check(merged[name])
            problems.append(ConfigProblem(f"this host's apt sources ({APT_DIR})", name, str(message), f"set `{name}` in the config"))
    if problems:
        raise ConfigError(problems)
    if not merged["image_id"]:
        merged["image_id"] = secrets.token_hex(4)
    return Config(**merged)


def summary_lines(config: Config) -> list[str]:
    """Each setting with its value and help, for `summary`; secrets show only whether they are set."""
    shown_values = config.to_json(redact=True)
    lines = []
    rows: list[tuple[str, Any, str]] = []
    for name, spec in SETTING_FIELDS.items():
        if spec.metadata.get("section"):
            rows += [(f"{name}.{sub.name}", shown_values[name][sub.name], sub.metadata["help"]) for sub in fields(field_type(Config, name))]
        else:
            rows.append((name, shown_values[name], spec.metadata["help"]))
    width = max(len(name) for name, _, _ in rows)
    for name, value, help_text in rows:
        shown = json.dumps(value) if isinstance(value, (list, bool)) else str(value)
        lines.append(f"{name:<{width}}  {shown:<40}  # {help_text}")
    return lines
