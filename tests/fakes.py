"""Fakes for unit tests: the Docker SDK, the kernel's binfmt_misc folder, and host tools on PATH.

- `FakeClient`, `FakeContainer`, `FakeImages`: the parts of the Docker SDK the backends use;
  `sdk_error` builds the exception chain the real SDK raises when its socket fails.
- `binfmt`: a folder laid out like /proc/sys/fs/binfmt_misc.
- `FakeTools` and the `fake_tools` fixture: stub programs named after host tools, first on PATH,
  that record their argv (and, when asked, their stdin and environment) and do what a test tells
  them (exit status, output, an output file), or hang with a child of their own.
- `FakeArchive` and `use_fake_archive`: the Release files a Debian mirror serves, as
  amberpi/archive.py reads them; offline at a word (tests/unit's `fake_archive` fixture).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker
import plumbum
import pytest
import requests
import urllib3

# A mirror no test ever reaches.
MIRROR = "http://mirror.example/debian"


# --- the Docker SDK ---------------------------------------------------------------------------


def sdk_error(cause: OSError) -> docker.errors.DockerException:
    """The exception chain docker.from_env() raises when the socket fails (as seen from a real SDK)."""
    try:
        try:
            try:
                raise cause
            except OSError as exc:
                raise urllib3.exceptions.ProtocolError("Connection aborted.", exc) from None
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
    except requests.exceptions.ConnectionError as exc:
        try:
            raise docker.errors.DockerException(f"Error while fetching server API version: {exc}") from exc
        except docker.errors.DockerException as final:
            return final


def raising(exc: BaseException) -> Any:
    def factory() -> Any:
        raise exc

    return factory


class FakeContainer:
    def __init__(self, chunks: list[tuple[bytes | None, bytes | None]], code: int = 0, interrupt_after: int | None = None) -> None:
        self.chunks = chunks
        self.code = code
        self.interrupt_after = interrupt_after
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def attach(self, **kwargs: Any) -> Any:
        assert kwargs["demux"] and kwargs["stream"] and kwargs["logs"]
        for index, chunk in enumerate(self.chunks):
            if self.interrupt_after is not None and index == self.interrupt_after:
                raise KeyboardInterrupt
            yield chunk

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        self.calls.append("wait")
        return {"StatusCode": 130 if "kill:SIGINT" in self.calls else self.code}

    def kill(self, signal: str | None = None) -> None:
        self.calls.append(f"kill:{signal}")

    def logs(self, **kwargs: Any) -> bytes:
        return b"interrupted: stopped, mounts released, no image written\n"

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.calls.append(f"remove:force={force}")


class FakeImages:
    def __init__(self, present: set[str]) -> None:
        self.present = present
        self.pulled: list[str] = []

    def get(self, name: str) -> Any:
        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return type("Image", (), {"id": f"sha256:{name}", "short_id": name, "attrs": {"Size": 600 << 20}, "tags": [name]})()

    def pull(self, name: str, tag: str) -> Any:
        self.pulled.append(f"{name}:{tag}")
        raise docker.errors.APIError("pull failed", explanation="dial tcp: lookup registry-1.docker.io: no such host")

    def list(self, name: str) -> list[Any]:
        return []

    def remove(self, image: str) -> None:
        self.present.discard(image)


class FakeClient:
    def __init__(
        self, container: FakeContainer | None = None, images: set[str] | None = None, create_error: Exception | None = None
    ) -> None:
        self.container = container
        self.create_error = create_error
        self.created: list[dict[str, Any]] = []
        self.images = FakeImages(images or set())
        self.containers = self
        self.built: list[str] = []
        self.api = self

    # containers
    def create(self, **kwargs: Any) -> FakeContainer:
        self.created.append(kwargs)
        if self.create_error:
            raise self.create_error
        assert self.container
        return self.container

    def get(self, name: str) -> FakeContainer:
        raise docker.errors.NotFound(name)

    # api
    def build(self, **kwargs: Any) -> Any:
        self.built.append(kwargs["tag"])
        yield {"stream": "Step 1/1 : FROM amberpi/debian-base:bookworm\n"}
        yield {"stream": "Successfully built 0123\n"}
        self.images.present.add(kwargs["tag"])

    def info(self) -> dict[str, str]:
        return {"DockerRootDir": "/var/lib/docker"}

    def ping(self) -> bool:
        return True


# --- the kernel's binfmt_misc folder ----------------------------------------------------------


def binfmt(tmp_path: Path, entry: str | None, *, mounted: bool = True) -> Path:
    """A folder like /proc/sys/fs/binfmt_misc: `register` when mounted, a qemu-aarch64 `entry` when given."""
    if mounted:
        (tmp_path / "register").write_text("")
    if entry is not None:
        (tmp_path / "qemu-aarch64").write_text(entry)
    return tmp_path


GOOD_ENTRY = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"


# --- host tools -------------------------------------------------------------------------------

# A stub reads what to do from its spec file at every call, so a test may change it between calls.
# amberpi.run gives children a fixed environment, so nothing reaches the stub through the environment:
# its paths are written into it. -I -S: no user site, no site module, no PYTHON* variables.
STUB = """#!{python} -IS
import json, os, sys
from pathlib import Path

NAME = {name!r}
ROOT = Path({root!r})
argv = [NAME, *sys.argv[1:]]
spec = json.loads((ROOT / "specs" / (NAME + ".json")).read_text())
with open(ROOT / "calls.jsonl", "a", encoding="utf-8", errors="surrogateescape") as log:
    log.write(json.dumps(argv) + "\\n")
if spec["record_env"]:
    with open(ROOT / "env" / (NAME + ".jsonl"), "a", encoding="utf-8", errors="surrogateescape") as log:
        log.write(json.dumps(dict(os.environ)) + "\\n")
if spec["record_stdin"]:
    data = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")
    with open(ROOT / "stdin" / (NAME + ".jsonl"), "a", encoding="utf-8", errors="surrogateescape") as log:
        log.write(json.dumps(data) + "\\n")
if spec["hang_on"] and any(spec["hang_on"] in arg for arg in argv[1:]):
    import subprocess, time
    child = subprocess.Popen([sys.executable, "-IS", "-c", "import time; time.sleep(600)"])
    with open(ROOT / "hung" / (NAME + ".jsonl"), "a", encoding="utf-8") as log:
        log.write(json.dumps([os.getpid(), child.pid]) + "\\n")
    print("hanging", flush=True)
    time.sleep(600)
for item in spec["creates"]:
    if isinstance(item, int):
        target = argv[item]
    elif spec["literal"]:
        target = item
    else:
        target = item.format(argv=argv, last=argv[-1])
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes.fromhex(spec["content"]))
sys.stdout.write(spec["stdout"])
sys.stdout.flush()
sys.stderr.write(spec["stderr"])
sys.stderr.flush()
sys.exit(spec["status"])
"""


class FakeTools:
    """Stub host tools in `root`/bin; `activate` puts that folder first on PATH.

    Each call of a stub appends its argv (the tool's name first) as one JSON list per line to
    `root`/calls.jsonl (its stdin and environment too, when added with `record_stdin` or `record_env`),
    then creates the files it was told to, prints its stdout and stderr and exits with its status.
    Paths to create are either an index into that argv (-1: the last argument) or a path; a `str`
    path is a template with `{argv}` (the list) and `{last}` (its last item), e.g. "{last}.xz";
    a `Path` is taken as it is.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        for folder in (self.bin, root / "specs", root / "stdin", root / "env", root / "hung"):
            folder.mkdir(parents=True, exist_ok=True)
        self.log = root / "calls.jsonl"
        self.log.touch()
        python = sys.executable
        if len(python) > 120 or any(char.isspace() for char in python):
            raise RuntimeError(f"this interpreter's path cannot be a #! line: {python!r}")
        self._python = python

    def add(
        self,
        *names: str,
        status: int = 0,
        stdout: str = "",
        stderr: str = "",
        creates: int | str | Path | Sequence[int | str | Path] = (),
        content: bytes | str = b"",
        record_stdin: bool = False,
        record_env: bool = False,
        hang_on: str | None = None,
    ) -> None:
        """Install (or reconfigure) the stubs `names`. With `record_stdin` a stub reads its stdin
        to the end and keeps it (see `stdin`): only for callers that close it. With `record_env`
        it keeps the environment it was started with (see `env`). With `hang_on`, a call with an
        argument that contains that text never ends: it starts a child that holds its output and
        sleeps, as the child does (their pids: see `hung`)."""
        items = [creates] if isinstance(creates, int | str | os.PathLike) else list(creates)
        literal = [isinstance(item, os.PathLike) for item in items]
        if any(literal) and not all(literal):
            raise ValueError("`creates` mixes Path objects (literal) and str templates: use one kind")
        spec = {
            "status": status,
            "stdout": stdout,
            "stderr": stderr,
            "creates": [item if isinstance(item, int) else os.fspath(item) for item in items],
            "literal": any(literal),
            "content": (content.encode() if isinstance(content, str) else content).hex(),
            "record_stdin": record_stdin,
            "record_env": record_env,
            "hang_on": hang_on,
        }
        for name in names:
            if not name or "/" in name:
                raise ValueError(f"not a tool name: {name!r}")
            (self.root / "specs" / f"{name}.json").write_text(json.dumps(spec))
            stub = self.bin / name
            stub.write_text(STUB.format(python=self._python, name=name, root=str(self.root)))
            stub.chmod(0o755)

    def all_calls(self) -> list[list[str]]:
        """Every recorded argv, in the order the stubs ran."""
        with self.log.open(encoding="utf-8", errors="surrogateescape") as lines:
            return [json.loads(line) for line in lines if line.strip()]

    def calls(self, name: str) -> list[list[str]]:
        """The argv of each call of `name` (the name first), in order."""
        return [argv for argv in self.all_calls() if argv[0] == name]

    def stdin(self, name: str) -> list[str]:
        """What each call of `name` read on stdin (stubs added with `record_stdin`)."""
        path = self.root / "stdin" / f"{name}.jsonl"
        if not path.exists():
            return []
        with path.open(encoding="utf-8", errors="surrogateescape") as lines:
            return [json.loads(line) for line in lines if line.strip()]

    def env(self, name: str) -> list[dict[str, str]]:
        """The environment each call of `name` was started with (stubs added with `record_env`)."""
        path = self.root / "env" / f"{name}.jsonl"
        if not path.exists():
            return []
        with path.open(encoding="utf-8", errors="surrogateescape") as lines:
            return [json.loads(line) for line in lines if line.strip()]

    def hung(self, name: str) -> list[tuple[int, int]]:
        """(the stub's pid, its child's pid) of each call of `name` that hung (stubs added with `hang_on`)."""
        path = self.root / "hung" / f"{name}.jsonl"
        if not path.exists():
            return []
        return [(pids[0], pids[1]) for pids in (json.loads(line) for line in path.read_text().splitlines() if line.strip())]

    def shell_lines(self, name: str) -> list[str]:
        """The calls of `name` as shell command lines, for readable assertion messages."""
        return [shlex.join(argv) for argv in self.calls(name)]

    def activate(self, monkeypatch: pytest.MonkeyPatch, *, only_fakes: bool = False) -> None:
        """Put the stubs first on PATH (or, with `only_fakes`, alone on it) until `monkeypatch` undoes it.

        Both lookups are patched: os.environ's PATH (shutil.which) and plumbum's `local.env`, a copy
        of the environment taken when plumbum was imported, which `local[...]` and `local.which`
        search (amberpi.run). The children still get amberpi.run's fixed PATH; the stub is started
        by its full path, so that does not matter.
        """

        def first(path: str | None) -> str:
            return str(self.bin) if only_fakes or not path else os.pathsep.join([str(self.bin), path])

        monkeypatch.setenv("PATH", first(os.environ.get("PATH")))
        # LocalEnv has the item methods monkeypatch.setitem uses, but is no MutableMapping to a type checker.
        monkeypatch.setitem(plumbum.local.env, "PATH", first(plumbum.local.env.get("PATH")))  # type: ignore[arg-type]


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    """A FakeTools under tmp_path, first on PATH for the test. Add stubs with `fake_tools.add(...)`."""
    tools = FakeTools(tmp_path / "fake-tools")
    tools.activate(monkeypatch)
    return tools


def process_gone(pid: int, within: float = 5.0) -> bool:
    """The process ends within `within` seconds (a zombie nobody reaped yet counts as ended):
    a SIGKILLed process closes its files a moment before it leaves the process table."""
    import time

    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# --- a Debian mirror's Release files ----------------------------------------------------------


def release_file(indexes: dict[str, str], date: str = "Sat, 10 Jan 2026 10:00:00 UTC") -> bytes:
    """An InRelease as Debian writes it (clearsigned), listing `indexes` (path -> sha256) and decoys."""
    listed = {"main/binary-amd64/Packages": "a" * 64, "main/binary-arm64/Packages.xz": "b" * 64, **indexes}
    lines = "".join(f" {digest} {1000 + n} {path}\n" for n, (path, digest) in enumerate(sorted(listed.items())))
    body = f"Origin: Debian\nSuite: stable\nDate: {date}\nArchitectures: amd64 arm64\nSHA256:\n{lines}"
    signature = "-----BEGIN PGP SIGNATURE-----\n\nxx\n-----END PGP SIGNATURE-----\n"
    return f"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{body}{signature}".encode()


# What every suite serves unless a test says otherwise.
DEFAULT_INDEXES = {"main/binary-arm64/Packages": "1" * 64, "non-free-firmware/binary-arm64/Packages": "2" * 64}


class FakeArchive:
    """The Release files of every mirror, for amberpi.archive.fetch: `serve` one, or take `down` the network.

    Every suite serves DEFAULT_INDEXES unless `serve` says otherwise; `fetched` lists the URLs asked for.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.down: str | None = None
        self.fetched: list[str] = []
        # amberpi.archive's memory of what it read (a build reads each Release file once).
        self.memory: list[dict[str, Any]] = []

    def serve(self, mirror: str, suite: str, indexes: dict[str, str], date: str = "Sat, 10 Jan 2026 10:00:00 UTC") -> None:
        self.files[f"{mirror.rstrip('/')}/dists/{suite}/InRelease"] = release_file(indexes, date)

    def forget(self) -> None:
        """As a new build would: amberpi.archive reads every Release file again."""
        for memory in self.memory:
            memory.clear()

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if self.down:
            raise urllib.error.URLError(self.down)
        if url in self.files:
            return self.files[url]
        if url.endswith("/InRelease"):
            return release_file(DEFAULT_INDEXES)
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, io.BytesIO())  # type: ignore[arg-type]


def use_fake_archive(monkeypatch: pytest.MonkeyPatch) -> FakeArchive:
    """amberpi.archive reads its Release files from a new FakeArchive (and forgets what it read before)."""
    from amberpi import archive

    fake = FakeArchive()
    fake.memory = [{}, {}]
    monkeypatch.setattr(archive, "fetch", fake.fetch)
    monkeypatch.setattr(archive, "_READ", fake.memory[0])
    monkeypatch.setattr(archive, "_DOWN", fake.memory[1])
    # Every read asks the (fake) mirror, unless a test sets a longer reuse itself.
    monkeypatch.setenv("AMBERPI_ARCHIVE_MAX_AGE", "0")
    return fake
