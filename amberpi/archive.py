"""The state of the Debian archive a stage installs from, read from the suites' Release files.

A cached bootstrap or packages tree is right only for the archive it was made from: a
Debian point release or a security update changes what debootstrap and apt would install.
So the stages that install from the archive key its state: for each suite they use, the
SHA256 of its Packages indexes (their components, arm64), as the suite's InRelease (or
Release) file lists them. A new index is a new key, and the stage is made again; an
unchanged suite (a stable release between point releases) keeps its key.

Offline, the state cannot be read. A stage then keys the state its newest cached entry
for the same suites was made from, and the build says so and how old that is: a build
without network reuses the cache (and misses any update since). With no such entry the
build stops before any work, naming the URL and why it could not be read.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from amberpi.cache import Cache
from amberpi.errors import StageError
from amberpi.log import LOG, format_age

RELEASE_FILES = ("InRelease", "Release")
# A suite's state read within this long is reused without asking the mirror again: builds in a
# row (a test run, a release of several boards) key the same archive, and the mirror is spared.
# AMBERPI_ARCHIVE_MAX_AGE (seconds) changes it; 0 reads every time.
MAX_AGE_SECONDS = 3600
STATES_FILE = "archive-states.json"
FETCH_SECONDS = 15.0
# A Release file is a few hundred KiB; anything much larger is not one.
MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class Suite:
    """One suite a stage installs from: where, which, and the components it uses."""

    mirror: str
    suite: str
    components: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.mirror.rstrip('/')} {self.suite}"

    def release_urls(self) -> list[str]:
        return [f"{self.mirror.rstrip('/')}/dists/{self.suite}/{name}" for name in RELEASE_FILES]


class Unreachable(Exception):
    """A Release file could not be read: the URL and why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


def fetch(url: str) -> bytes:
    """The file at `url` (http, https or file; http_proxy and https_proxy apply)."""
    with urllib.request.urlopen(url, timeout=FETCH_SECONDS) as response:
        data: bytes = response.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES >> 20} MiB: not a Release file")
    return data


# What this process has read: each suite's Release file once per build, and a host that did not
# answer is not asked again (offline, one timeout rather than one per suite).
_READ: dict[str, bytes] = {}
_DOWN: dict[str, str] = {}


def read_release(suite: Suite) -> bytes:
    """The suite's InRelease file, or its Release file where there is no InRelease."""
    last = ""
    for url in suite.release_urls():
        if url in _READ:
            return _READ[url]
        host = urllib.parse.urlsplit(url).netloc
        if host in _DOWN:
            raise Unreachable(url, _DOWN[host])
        try:
            _READ[url] = fetch(url)
            return _READ[url]
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"  # the server answered: try the next name
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = str(getattr(exc, "reason", "") or exc) or type(exc).__name__
            if host:
                _DOWN[host] = reason
            raise Unreachable(url, reason) from None
    raise Unreachable(suite.release_urls()[0], last)


def index_digests(release: str, components: tuple[str, ...], arch: str) -> dict[str, str]:
    """Path → SHA256 of the Packages index of each component, from a Release file's SHA256 field."""
    wanted = {f"{component}/binary-{arch}/Packages" for component in components}
    found: dict[str, str] = {}
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] in wanted:
            found[parts[2]] = parts[0]
    return found


def suite_state(suite: Suite, arch: str) -> str:
    """`MIRROR SUITE: sha256 …` of the suite's indexes (of the whole Release file if it lists none of them)."""
    release = read_release(suite)
    digests = index_digests(release.decode(errors="replace"), suite.components, arch)
    listed = "".join(f"{path} {digest}\n" for path, digest in sorted(digests.items())).encode() if digests else release
    return f"{suite.label}: {hashlib.sha256(listed).hexdigest()}"


def max_age() -> float:
    try:
        return float(os.environ.get("AMBERPI_ARCHIVE_MAX_AGE", MAX_AGE_SECONDS))
    except ValueError:
        return MAX_AGE_SECONDS


def recent_state(cache: Cache, suite: Suite, arch: str) -> str:
    """The suite's state, from the cache's record when read recently enough, else from the mirror."""
    record = cache.root / STATES_FILE
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    name = f"{suite.label} {','.join(suite.components)} {arch}"
    entry = known.get(name)
    if isinstance(entry, list) and len(entry) == 2 and time.time() - float(entry[0]) < max_age():
        return str(entry[1])
    state = suite_state(suite, arch)
    known[name] = [time.time(), state]
    tmp = record.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, record)
    return state


def archive_state(cache: Cache, stage: str, suites: tuple[Suite, ...], arch: str) -> tuple[str, ...]:
    """The state of `suites` for `stage`'s key: read from the mirror (or its recent record), or offline from the cache."""
    try:
        return tuple(recent_state(cache, suite, arch) for suite in suites)
    except Unreachable as unreachable:
        labels = [suite.label for suite in suites]
        for made, manifest in cache.manifests(stage):
            known = manifest.get("inputs", {}).get("archive")
            if isinstance(known, list) and [str(item).split(": ", 1)[0] for item in known] == labels:
                LOG.note(
                    f"note: cannot read {unreachable.url} ({unreachable.reason}); stage {stage} keys the archive as its "
                    f"newest cached entry saw it, {format_age(time.time() - made)} ago: Debian updates since then are not in this build"
                )
                return tuple(str(item) for item in known)
        raise StageError(
            f"cannot read the Debian archive's Release file {unreachable.url}: {unreachable.reason}",
            where=f"stage {stage}: its cache key holds the archive's state, and no cached {stage} entry for {', '.join(labels)} exists",
            hint="check the network (http_proxy and https_proxy are used) and the mirror (--mirror URL); "
            "offline, only what was built before from these suites can be reused",
        ) from None
