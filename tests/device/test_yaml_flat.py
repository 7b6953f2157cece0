"""yaml-flat.awk and flat.sh: cloud-init's NoCloud files, as Raspberry Pi Imager writes them, read from sh.

The awk runs under every awk the device may have (mawk, busybox awk, gawk --posix);
PyYAML, which cloud-init reads the files with, is the reference for what they mean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.device.devicekit import ROOTFS, SHELLS, fake_tool, require
from tests.samples import imager_network_config, imager_user_data

FLATTEN = ROOTFS / "usr/lib/amberpi/yaml-flat.awk"
FLAT_SH = ROOTFS / "usr/lib/amberpi/flat.sh"
AWKS = [["mawk"], ["busybox", "awk"], *([["gawk", "--posix"]] if shutil.which("gawk") else [])]
# gawk in a UTF-8 locale counts characters, not bytes (the BOM is one).
ENV = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"}
awks = pytest.mark.parametrize("awk", AWKS, ids=lambda a: a[0])
shells = pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])

USER_DATA = imager_user_data(
    hostname="amber-test",
    password_hash="$5$rounds=1000$abc$xyz/.ABC",
    public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG alice@laptop",
    runcmd=r"""
runcmd:
  - [ rfkill, unblock, wifi ]
  - [ sh, -c, "for f in /var/lib/systemd/rfkill/*:wlan; do echo 0 > \"$f\"; done" ]
""",
)
USER_DATA_FLAT = r"""hostname	amber-test
manage_etc_hosts	true
packages/0	avahi-daemon
apt/conf	Acquire {\n  Check-Date "false";\n};\n
timezone	Europe/Berlin
keyboard/model	pc105
keyboard/layout	de
enable_ssh	true
users/0/name	alice
users/0/groups	users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo
users/0/shell	/bin/bash
users/0/lock_passwd	false
users/0/passwd	$5$rounds=1000$abc$xyz/.ABC
users/0/ssh_authorized_keys/0	ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG alice@laptop
users/0/sudo	ALL=(ALL) NOPASSWD:ALL
ssh_pwauth	true
runcmd/0/0	rfkill
runcmd/0/1	unblock
runcmd/0/2	wifi
runcmd/1/0	sh
runcmd/1/1	-c
runcmd/1/2	for f in /var/lib/systemd/rfkill/*:wlan; do echo 0 > "$f"; done
"""
NETWORK_CONFIG = imager_network_config(r'"My \"home\" net/5G"', "0123456789abcdef" * 4)
AP = "network/wifis/wlan0/access-points"


def lines(*leaves: tuple[str, str]) -> str:
    """yaml-flat.awk's output for these (path, encoded value) pairs."""
    return "".join(f"{path}\t{value}\n" for path, value in leaves)


NETWORK_CONFIG_FLAT = f"""network/version	2
network/wifis/wlan0/dhcp4	true
network/wifis/wlan0/regulatory-domain	DE
{AP}/My "home" net%2F5G/password	{"0123456789abcdef" * 4}
network/wifis/wlan0/optional	true
"""

# (name, document, its flattened lines): each is also checked against PyYAML.
DOCUMENTS = [
    ("imager user-data", USER_DATA, USER_DATA_FLAT),
    ("imager network-config", NETWORK_CONFIG, NETWORK_CONFIG_FLAT),
    ("imager meta-data", "instance-id: rpi-imager-1732000000000\n", "instance-id\trpi-imager-1732000000000\n"),
    ("meta-data instance_id", "instance_id: rpi-imager-1732000000000\n", "instance_id\trpi-imager-1732000000000\n"),
    (
        "scalars",
        r"""plain: hello world   # a comment
hash: a#b
single: 'it''s ''quoted'' # not a comment'
double: "tab\there \"q\" back\\slash \/ nl\nend"
spaces: "  lead and trail  "
url: http://example.com:8080/x
"quoted: key": 1
'single # key': 2
key with spaces : 3
special: $5$a'b"c%d\e
"a/b%c\td": tab and slash in a key
empty:
tilde: ~
null: null
empty_quoted: ''
""",
        lines(
            ("plain", "hello world"),
            ("hash", "a#b"),
            ("single", "it's 'quoted' # not a comment"),
            ("double", r'tab\there "q" back\\slash / nl\nend'),
            ("spaces", "  lead and trail  "),
            ("url", "http://example.com:8080/x"),
            ("quoted: key", "1"),
            ("single # key", "2"),
            ("key with spaces", "3"),
            ("special", r"""$5$a'b"c%d\\e"""),
            ("a%2Fb%25c%09d", "tab and slash in a key"),
            ("empty", ""),
            ("tilde", ""),
            ("null", ""),
            ("empty_quoted", ""),
        ),
    ),
    (
        "block scalars",
        "lit: |\n  a\n   b\n\n  c\n\n\nclip_end: x\nstrip: |-\n  a\n\nkeep: |+\n  a\n\n\n"
        "fold: >\n  one\n  two\n\n  three\n   indented\n  four\nfold_strip: >-  # a comment\n  x\n  y\n"
        "fold_keep: >+\n  x\n\nempty: |\nin_seq:\n- |\n  # not a comment\n  \ttab\nlast: |\n    deep\n      deeper\n",
        lines(
            ("lit", r"a\n b\n\nc\n"),
            ("clip_end", "x"),
            ("strip", "a"),
            ("keep", r"a\n\n\n"),
            ("fold", r"one two\nthree\n indented\nfour\n"),
            ("fold_strip", "x y"),
            ("fold_keep", r"x\n\n"),
            ("empty", ""),
            ("in_seq/0", r"# not a comment\n\ttab\n"),
            ("last", r"deep\n  deeper\n"),
        ),
    ),
    (
        "collections",
        """seq:
- a
- - n1
  - n2
-
  k: v
-\x20
- {}
- []
same_indent:
- x: 1
  y:
  - deep
  z: 2
- - q
indented:
    -   a: 1
        b: 2
flow: [ a , 'b, c', "d]", -e, ~ ]  # comment
empty_flow: [ ]
empty_map: {}
trailing_comma: [a, b,]
deep:
  a:
    b:
      c: d
top: end
""",
        lines(
            ("seq/0", "a"),
            ("seq/1/0", "n1"),
            ("seq/1/1", "n2"),
            ("seq/2/k", "v"),
            ("seq/3", ""),
            ("seq/4", ""),
            ("seq/5", ""),
            ("same_indent/0/x", "1"),
            ("same_indent/0/y/0", "deep"),
            ("same_indent/0/z", "2"),
            ("same_indent/1/0", "q"),
            ("indented/0/a", "1"),
            ("indented/0/b", "2"),
            ("flow/0", "a"),
            ("flow/1", "b, c"),
            ("flow/2", "d]"),
            ("flow/3", "-e"),
            ("flow/4", ""),
            ("empty_flow", ""),
            ("empty_map", ""),
            ("trailing_comma/0", "a"),
            ("trailing_comma/1", "b"),
            ("deep/a/b/c", "d"),
            ("top", "end"),
        ),
    ),
    ("duplicate keys", "a: 1\nb: 2\na: 3\n", "a\t1\nb\t2\na\t3\n"),
    (
        "markers and comments",
        "# leading\n\n---   # start\n  # indented comment\na: 1\n  \nb:\n  # between\n  c: 2\n...\n# trailing\n",
        "a\t1\nb/c\t2\n",
    ),
    ("indented top level", "  a: 1\n  b:\n  - x\n", "a\t1\nb/0\tx\n"),
    ("top-level sequence", "- a\n- b: 1\n", "0\ta\n1/b\t1\n"),
    ("only comments", "#cloud-config\n", ""),
    ("key without value at the end", "a: 1\nb:\n", "a\t1\nb\t\n"),
]


class Result(NamedTuple):
    code: int
    out: str
    err: str


def run(args: list[str], env: dict[str, str] = ENV) -> Result:
    # Bytes, not text=True: universal newlines would turn a value's \r into \n.
    proc = subprocess.run(args, capture_output=True, env=env, timeout=30)
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def flatten(awk: list[str], tmp: Path, document: str | bytes, name: str = "user-data") -> Result:
    require(awk[0])
    source = tmp / name
    source.write_bytes(document.encode() if isinstance(document, str) else document)
    return run([*awk, "-f", str(FLATTEN), str(source)])


def key_name(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F").replace("\t", "%09").replace("\n", "%0A")


def decode(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            out.append({"n": "\n", "t": "\t"}.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def meaning(flat: str) -> dict[str, str]:
    """What a reader taking the last line for a path sees."""
    leaves = {}
    for line in flat.splitlines():
        path, _, value = line.partition("\t")
        leaves[path] = decode(value)
    return leaves


def reference(document: str | bytes) -> dict[str, str]:
    """PyYAML's reading, flattened the same way (every scalar a string; ~ and null empty)."""
    leaves: dict[str, str] = {}

    def walk(path: str, node: object) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None or not node:
            leaves[path] = "" if items is not None or node in ("~", "null", "Null", "NULL") else str(node)
            return
        for key, child in items:
            walk(f"{path}/{key_name(str(key))}".lstrip("/"), child)

    walk("", yaml.load(document, Loader=yaml.BaseLoader))
    return leaves


@awks
@pytest.mark.parametrize(("document", "flat"), [d[1:] for d in DOCUMENTS], ids=[d[0] for d in DOCUMENTS])
def test_documents_flatten_to_what_pyyaml_reads(awk: list[str], document: str, flat: str, tmp_path: Path) -> None:
    result = flatten(awk, tmp_path, document)
    assert (result.code, result.err) == (0, "")
    assert result.out == flat
    if flat:
        assert meaning(result.out) == reference(document)


@awks
def test_crlf_a_byte_order_mark_and_a_tab_in_quotes(awk: list[str], tmp_path: Path) -> None:
    document = (
        "\ufeff#cloud-config\r\nhostname: x\r\nlist:\r\n- 'a'\r\ntext: |\r\n  l1\r\n\r\n  l2\r\nkeep: |+\r\n  k\r\n\r\nz: \"q\tr\"\r\n"
    )
    result = flatten(awk, tmp_path, document.encode())
    assert (result.code, result.err) == (0, "")
    assert result.out == lines(("hostname", "x"), ("list/0", "a"), ("text", r"l1\n\nl2\n"), ("keep", r"k\n\n"), ("z", r"q\tr"))
    assert meaning(result.out) == reference(document.encode())


# (name, document, the line at fault, what the message names, whether PyYAML reads it).
ERRORS = [
    ("tab in indentation", "a:\n\tb: 1\n", 2, "tab", False),
    ("tab after spaces", "a:\n  \tb: 1\n", 2, "tab", False),
    ("tab before a comment", "a: 1\n\t# c\n", 2, "tab", False),
    ("tab after a colon", "a:\tb\n", 1, "tab", False),
    ("tab after a dash", "a:\n-\tb\n", 2, "tab", False),
    ("tab in a plain value", "a: b\tc\n", 1, "tab", False),
    ("tab after a quoted value", "a: 'b'\t# c\n", 1, "tab", False),
    ("tab in a flow sequence", "a: [b,\tc]\n", 1, "tab", False),
    ("inconsistent indentation", "a:\n    b: 1\n  c: 2\n", 3, "inconsistent indentation", False),
    ("unexpected indentation", "a: 1\n  b: 2\n", 2, "unexpected indentation", False),
    ("continued plain value", "a: one\n  two\n", 2, "unexpected indentation", True),
    ("left of the top level", "  a: 1\nb: 2\n", 2, "inconsistent indentation", False),
    ("anchor", "a: &x 1\nb: 2\n", 1, "anchor", True),
    ("alias", "a: 1\nb: *x\n", 2, "alias", False),
    ("tag", "a: !!str 1\n", 1, "tag", True),
    ("local tag in a sequence", "a:\n- !x foo\n", 2, "tag", True),
    ("anchor on a key", "&k a: 1\n", 1, "anchor", True),
    ("second document", "a: 1\n---\nb: 2\n", 2, "second document", False),
    ("content after ...", "a: 1\n...\nb: 2\n", 3, "end of the document", False),
    ("directive", "%YAML 1.1\n---\na: 1\n", 1, "directive", True),
    ("flow mapping", "a: {b: 1}\n", 1, "flow mapping", True),
    ("nested flow sequence", "a: [b, [c]]\n", 1, "nested flow", True),
    ("flow mapping in a flow sequence", "a: [b, {c: 1}]\n", 1, "nested flow", True),
    ("pair in a flow sequence", "a: [b: 1]\n", 1, "flow mapping", True),
    ("unterminated flow sequence", "a: [b, c\n", 1, "unterminated flow", False),
    ("flow sequence over lines", "a: [b,\n  c]\n", 1, "unterminated flow", True),
    ("unterminated double quote", 'a: 1\nb: "c\n', 2, "unterminated", False),
    ("unterminated single quote", "a: 'c\n", 1, "unterminated", False),
    ("quote over lines", 'a: "b\n  c"\n', 1, "unterminated", True),
    ("unterminated quoted key", 'a:\n  "b: 1\n', 2, "unterminated", False),
    ("unknown escape", 'a: "\\x41"\n', 1, "escape \\x", True),
    ("text after a quote", 'a: "b" c\n', 1, "after a quoted", False),
    ("indentation indicator", "a: |2\n  x\n", 1, "indentation indicator", True),
    ("indentation indicator after chomping", "a: >-1\n x\n", 1, "indentation indicator", True),
    ("text after a block indicator", "a: | x\n", 1, "block scalar", False),
    ("complex key", "? a\n: b\n", 1, "complex key", True),
    ("scalar where an entry is expected", "a: 1\nplain line\n", 2, "mapping entry", False),
    ("top-level scalar", "just text\n", 1, "mapping entry", True),
    ("item where an entry is expected", "a: 1\n- b\n", 2, "sequence item where", False),
    ("entry where an item is expected", "a:\n  - b\n  c: 1\n", 3, "expected a sequence item", False),
    ("value with colon space", "a: b: c\n", 1, '": "', False),
    ("compact value with colon space", "- a: b: c\n", 1, '": "', False),
    ("sequence on its key's line", "a: - b\n", 1, "sequence on the line", False),
    ("reserved character", "a: @b\n", 1, "starting with @", False),
    ("missing key", ": b\n", 1, "without a key", False),
]


@awks
@pytest.mark.parametrize(("document", "line", "what", "pyyaml_reads"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_what_it_does_not_read_is_an_error(awk: list[str], document: str, line: int, what: str, pyyaml_reads: bool, tmp_path: Path) -> None:
    result = flatten(awk, tmp_path, document)
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith(f"{tmp_path / 'user-data'}:{line}: "), result.err
    assert what in result.err and result.err.endswith(")\n") and result.err.count("\n") == 1, result.err
    if not pyyaml_reads:
        with pytest.raises(yaml.YAMLError):
            yaml.load(document, Loader=yaml.BaseLoader)


@awks
def test_an_error_does_not_truncate_the_log_stderr_goes_to(awk: list[str], tmp_path: Path) -> None:
    (tmp_path / "user-data").write_text("a: *x\n")
    log = tmp_path / "log"
    log.write_text("earlier\n")
    with log.open("a") as stderr:
        code = subprocess.run([*awk, "-f", str(FLATTEN), str(tmp_path / "user-data")], stderr=stderr, env=ENV, timeout=30).returncode
    assert code == 2
    assert log.read_text().startswith("earlier\n") and ":1: an alias" in log.read_text()


# --- flat.sh ------------------------------------------------------------------

TRICKY = {
    "dollar": "$HOME $(id) `id` ${x}",
    "quotes": 'it\'s "q"',
    "percent": "100% %2F %s",
    "backslash": "a\\b\\nc\\\\",
    "spaces": "  lead and trail  ",
    "newline": "a\nb\n",
    "tab": "a\tb",
    "dash": "-n",
    "empty": "",
    "cr": "a\rb",
}


def double_quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{escaped}"'


TRICKY_YAML = "".join(f"{key}: {double_quoted(value)}\n" for key, value in TRICKY.items())


def flat_sh(shell: list[str], awk: list[str], tmp: Path, code: str, *args: str) -> Result:
    """Runs `code` with flat.sh sourced and $1.. set to args, the awk on PATH being `awk`."""
    require(shell[0], awk[0])
    awkbin = tmp / "awkbin"
    if not awkbin.exists():
        fake_tool(awkbin, "awk", f'exec {" ".join(awk)} "$@"\n')
    return run([*shell, "-c", f'. "$0"; {code}', str(FLAT_SH), *args], env={**ENV, "PATH": f"{awkbin}:{ENV['PATH']}"})


def flat_file(tmp: Path, document: str, name: str = "flat") -> str:
    result = flatten(["mawk"], tmp, document, name + ".yaml")
    assert result.code == 0, result.err
    (tmp / name).write_text(result.out)
    return str(tmp / name)


@shells
@awks
def test_an_ssid_round_trips(shell: list[str], awk: list[str], tmp_path: Path) -> None:
    flat = flat_file(tmp_path, NETWORK_CONFIG)
    code = 'ssid=$(flat_children "$1" "$2"); echo "$ssid"; flat_key "$ssid"; flat_get "$1" "$2/$(flat_key "$ssid")/password"'
    assert flat_sh(shell, awk, tmp_path, code, flat, AP) == (0, f'My "home" net/5G\nMy "home" net%2F5G\n{"0123456789abcdef" * 4}\n', "")


@shells
@awks
def test_flat_get_prints_any_value_as_it_is(shell: list[str], awk: list[str], tmp_path: Path) -> None:
    flat = flat_file(tmp_path, TRICKY_YAML + USER_DATA.replace("#cloud-config\n", "") + "dollar: last wins\n")
    expected = {
        **TRICKY,
        "dollar": "last wins",
        "users/0/passwd": "$5$rounds=1000$abc$xyz/.ABC",
        "apt/conf": 'Acquire {\n  Check-Date "false";\n};\n',
    }
    code = 'f=$1; shift; for path; do flat_get "$f" "$path"; echo "=$?"; done'
    result = flat_sh(shell, awk, tmp_path, code, flat, *expected)
    assert result == (0, "".join(f"{value}\n=0\n" for value in expected.values()), "")


@shells
@awks
def test_paths_are_literal(shell: list[str], awk: list[str], tmp_path: Path) -> None:
    (tmp_path / "flat").write_text("a.b\t1\n[x]*\t2\nback\\\\slash\t3\nnocolumn\n")
    code = 'f=$1; shift; for path; do flat_get "$f" "$path" || echo "none $?"; done'
    result = flat_sh(
        shell, awk, tmp_path, code, str(tmp_path / "flat"), "a.b", "aXb", "[x]*", "x", "back\\\\slash", "back\\slash", "nocolumn"
    )
    assert result == (0, "1\nnone 1\n2\nnone 1\n3\nnone 1\nnone 1\n", "")


HAS = [
    ("", True),
    ("users", True),
    ("users/0", True),
    ("users/0/name", True),
    ("users/0/ssh_authorized_keys/0", True),
    ("user", False),
    ("users/0/nam", False),
    ("users/1", False),
    ("users/0/name/x", False),
    ("Users", False),
]


@shells
@awks
def test_flat_has_finds_leaves_and_the_paths_above_them(shell: list[str], awk: list[str], tmp_path: Path) -> None:
    flat = flat_file(tmp_path, USER_DATA)
    result = flat_sh(shell, awk, tmp_path, 'f=$1; shift; for path; do flat_has "$f" "$path"; echo $?; done', flat, *(p for p, _ in HAS))
    assert result == (0, "".join("0\n" if has else "1\n" for _, has in HAS), "")


CHILDREN = [
    ("", "hostname manage_etc_hosts packages apt timezone keyboard enable_ssh users ssh_pwauth runcmd dup".split()),
    ("users", ["0"]),
    ("users/0", "name groups shell lock_passwd passwd ssh_authorized_keys sudo".split()),
    ("runcmd", ["0", "1"]),
    ("runcmd/1", ["0", "1", "2"]),
    ("hostname", []),
    ("nothing", []),
    ("dup", ["a", "b/c", "a%2F", "t\tab"]),
]


@shells
@awks
@pytest.mark.parametrize(("path", "children"), CHILDREN, ids=lambda c: repr(c) if isinstance(c, str) else None)
def test_flat_children_lists_each_child_once(shell: list[str], awk: list[str], path: str, children: list[str], tmp_path: Path) -> None:
    extra = 'dup:\n  a: 1\n  "b/c":\n    x: 1\n    y: 2\n  a: 3\n  a%2F: 4\n  "t\\tab": 5\n'
    flat = flat_file(tmp_path, USER_DATA + extra)
    assert flat_sh(shell, awk, tmp_path, 'flat_children "$1" "$2"', flat, path) == (0, "".join(f"{c}\n" for c in children), "")


@shells
@awks
def test_flat_key_encodes_what_flat_children_decodes(shell: list[str], awk: list[str], tmp_path: Path) -> None:
    names = ["plain", "a/b", "100%", "%2F", "t\tab", "$x 'y' \"z\" \\n"]
    flat = flat_file(tmp_path, "".join(f"{double_quoted(name)}:\n  v: {i}\n" for i, name in enumerate(names)))
    code = 'flat_children "$1" "" | while IFS= read -r name; do flat_key "$name"; flat_get "$1" "$(flat_key "$name")/v"; done'
    result = flat_sh(shell, awk, tmp_path, code, flat)
    assert result == (0, "".join(f"{key_name(name)}\n{i}\n" for i, name in enumerate(names)), "")
