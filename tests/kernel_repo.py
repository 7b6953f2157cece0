"""A local apt repository of trixie-backports' newer arm64 kernel, served on loopback.

The guest reaches it through QEMU's user network (10.0.2.2 is the host's
loopback). Package files are kept in a cache folder between runs.
"""

from __future__ import annotations

import functools
import http.server
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from amberpi.mirror import debootstrap_default_mirror, detect_host_mirrors
from amberpi.render import write_rendered
from amberpi.stages.firmware import KEYRING, private_apt_options

KERNEL_META = "linux-image-arm64"
SUITE = "trixie-backports"
GUEST_HOST = "10.0.2.2"
# In the guest: a sources list of its own, so apt reads only the local repository.
LOCAL_LIST = "/etc/apt/sources.list.d/amberpi-test.list"
APT_LOCAL = f"apt-get -q -o Dir::Etc::SourceList={LOCAL_LIST} -o Dir::Etc::SourceParts=/nonexistent"


def _apt_root(work: Path) -> list[str]:
    for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "state" / "status").write_text("")
    mirror = detect_host_mirrors()[0] or debootstrap_default_mirror()
    write_rendered(work / "sources.list", "firmware.sources.list.j2", arch="arm64", keyring=KEYRING, mirror=mirror, suite=SUITE)
    options = private_apt_options(work)
    subprocess.run(["apt-get", *options, "-q", "update"], check=True, capture_output=True)
    return options


def _closure(options: list[str], root: str) -> list[str]:
    """root and every dependency that backports itself provides (the rest the image has)."""
    known = set(subprocess.run(["apt-cache", *options, "pkgnames"], capture_output=True, text=True, check=True).stdout.split())
    wanted, todo = [], [root]
    while todo:
        name = todo.pop()
        if name in wanted or name not in known:
            continue
        wanted.append(name)
        info = subprocess.run(["apt-cache", *options, "show", "--no-all-versions", name], capture_output=True, text=True, check=True)
        for line in info.stdout.splitlines():
            if line.startswith(("Depends:", "Pre-Depends:")):
                for group in line.split(":", 1)[1].split(","):
                    names = [re.sub(r"\s*\(.*\)", "", alt).strip().split(":")[0] for alt in group.split("|")]
                    todo += [n for n in names if n in known][:1]
    return wanted


def make_kernel_repo(folder: Path) -> tuple[Path, str]:
    """Download the backports kernel and what it needs from backports; returns (repo, version)."""
    repo = folder / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    options = _apt_root(folder / "apt")
    packages = _closure(options, KERNEL_META)
    subprocess.run(["apt-get", *options, "-q", "download", *packages], cwd=repo, check=True, capture_output=True)
    index = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, capture_output=True, text=True, check=True).stdout
    (repo / "Packages").write_text(index)
    versions = re.findall(r"^Package: linux-image-(\d\S*-arm64)$", index, re.MULTILINE)
    assert versions, f"no versioned kernel image among {packages}"
    return repo, versions[0]


class QuietRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; its request lines (apt's 404s for index variants among them) go to a file, not stderr."""

    request_log: Path | None = None

    def log_message(self, format: str, *args: object) -> None:
        if self.request_log is not None:
            with self.request_log.open("a") as log:
                log.write(f"{self.address_string()} {format % args}\n")


@contextmanager
def serve(repo: Path, request_log: Path | None = None) -> Iterator[int]:
    """Serve `repo` on 127.0.0.1 (an ephemeral port) for the duration; requests logged to `request_log`."""
    handler_class = type("RepoHandler", (QuietRequestHandler,), {"request_log": request_log})
    handler = functools.partial(handler_class, directory=str(repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
