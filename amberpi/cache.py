"""Content-addressed stage cache.

A stage's key is the sha256 of canonical JSON of {name, version, key inputs,
upstream keys}: a chain, so a change anywhere reruns that stage and every stage
after it. Entries are built in a staging folder and renamed into place with a
`key.json` written last; an entry without it is partial and never used.

Every stage's facts (kernel version, sizes, the build's timestamp...) are kept
too, by key, in `facts/<stage>/<key>.json`: a stage whose output a cached later
stage made unnecessary still tells the report what it made.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amberpi.errors import CacheError, LockError, cleanup_after
from amberpi.log import LOG
from amberpi.trees import remove_tree


class Incremental(enum.StrEnum):
    """How the cache is used: `no` rebuilds everything, `strict` fails on any stale stage."""

    yes = "yes"
    no = "no"
    strict = "strict"


LOCK_NAME = ".lock"
# Facts are a few bytes each: keep many more than entries.
FACTS_KEPT = 50


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def stage_key(name: str, version: int, inputs: dict[str, Any], upstream: dict[str, str]) -> tuple[str, dict[str, Any]]:
    manifest = {"name": name, "version": version, "inputs": inputs, "upstream": upstream}
    return hashlib.sha256(canonical(manifest).encode()).hexdigest(), manifest


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Paths of the fields that differ between two key manifests."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


class Cache:
    def __init__(self, root: Path, mode: Incremental) -> None:
        self.root = root
        self.mode = mode
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache folder {root}: {exc.strerror}", hint="choose another with --cache-dir") from None

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Path | None:
        if self.mode is Incremental.no:
            return None
        entry = self.entry(stage, key)
        if (entry / "key.json").is_file():
            os.utime(entry)
            return entry
        if entry.exists():
            LOG.detail(f"cache: discarding partial entry {entry}")
            remove_tree(entry)
        return None

    def made_at(self, stage: str, key: str) -> float | None:
        """When the entry was made (its key.json is written once, last), or None."""
        try:
            return (self.entry(stage, key) / "key.json").stat().st_mtime
        except OSError:
            return None

    def manifests(self, stage: str) -> list[tuple[float, dict[str, Any]]]:
        """(time made, key manifest) of each complete entry of `stage`, the newest first."""
        found = []
        for path in (self.root / stage).glob("*/key.json"):
            try:
                found.append((path.stat().st_mtime, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        return sorted((item for item in found if isinstance(item[1], dict)), key=lambda item: item[0], reverse=True)

    def explain_miss(self, stage: str, manifest: dict[str, Any]) -> str:
        """Which key fields changed since the newest entry of this stage."""
        folder = self.root / stage
        entries = sorted(folder.glob("*/key.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.exists() else []
        if not entries:
            return "no earlier entry"
        old = json.loads(entries[0].read_text())
        changes = changed_fields(old, manifest)
        return "changed: " + ", ".join(changes[:6]) if changes else "entry missing"

    @contextmanager
    def staging(self, stage: str, key: str, manifest: dict[str, Any]) -> Iterator[Path]:
        """A folder to build an entry in; committed by rename only if the block succeeds."""
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{key[:16]}-{os.getpid()}"
        if tmp.exists():
            remove_tree(tmp)
        tmp.mkdir()

        def discard_partial() -> None:
            if tmp.exists():
                remove_tree(tmp)

        with cleanup_after(discard_partial):
            yield tmp
            (tmp / "key.json").write_text(canonical(manifest))
            final = self.entry(stage, key)
            if final.exists():
                remove_tree(final)
            os.rename(tmp, final)
        self.prune(stage, keep=3)

    def facts_file(self, stage: str, key: str) -> Path:
        return self.root / "facts" / stage / f"{key}.json"

    def save_facts(self, stage: str, key: str, facts: Mapping[str, Any]) -> None:
        path = self.facts_file(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(dict(facts), sort_keys=True))
        os.replace(tmp, path)
        newest_first = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in newest_first[FACTS_KEPT:]:
            old.unlink(missing_ok=True)

    def load_facts(self, stage: str, key: str) -> dict[str, Any] | None:
        """The facts a build with this key recorded, or None (never with --incremental=no)."""
        if self.mode is Incremental.no:
            return None
        try:
            data = json.loads(self.facts_file(stage, key).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def prune(self, stage: str, keep: int) -> None:
        """Keep the newest few entries of a stage: trees are large."""
        folder = self.root / stage
        entries = sorted((p for p in folder.iterdir() if (p / "key.json").exists()), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            remove_tree(old)

    def reap_partial(self) -> list[Path]:
        """Staging folders left by builds that were killed (with their chroots' mounts, if any).

        Called under the cache lock: every build stages under that lock, so whatever
        staging folder exists while it is held belongs to a build that is gone.
        """
        reaped = []
        for staging in sorted(self.root.glob("*/.tmp-*")):
            remove_tree(staging)
            reaped.append(staging)
        return reaped

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_NAME

    def clean(self) -> None:
        """Empty the cache, holding its lock: a build running on it is never wiped from under it."""
        with locked(self.lock_file, f"the cache {self.root}"):
            for child in self.root.iterdir():
                if child == self.lock_file:
                    continue  # others may wait on this very file: unlinking it would split the lock
                if child.is_dir() and not child.is_symlink():
                    remove_tree(child)
                else:
                    child.unlink()

    def timings_file(self) -> Path:
        return self.root / "timings.json"

    def load_timings(self) -> dict[str, float]:
        try:
            data = json.loads(self.timings_file().read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError):
            return {}

    def save_timings(self, timings: dict[str, float]) -> None:
        merged = self.load_timings()
        merged.update(timings)
        tmp = self.timings_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=1))
        os.replace(tmp, self.timings_file())


@contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """An exclusive flock on `path`, failing fast when another build holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + 2
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockError(f"another build is using {what}", where=str(path), hint="wait for it to finish") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
