"""The archive's state in the cache keys (amberpi/archive.py): read from the Release files, offline from the cache."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from amberpi.archive import Suite, archive_state, index_digests
from amberpi.cache import Cache, Incremental, stage_key
from amberpi.errors import StageError
from tests.fakes import DEFAULT_INDEXES, MIRROR, FakeArchive, release_file

TRIXIE = (Suite(MIRROR, "trixie", ("main",)),)


def test_the_release_file_lists_each_components_index() -> None:
    text = release_file({"main/binary-arm64/Packages": "1" * 64, "contrib/binary-arm64/Packages": "3" * 64}).decode()
    assert index_digests(text, ("main", "non-free-firmware"), "arm64") == {"main/binary-arm64/Packages": "1" * 64}


def test_the_state_names_the_suite_and_follows_its_indexes(fake_archive: FakeArchive, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache", Incremental.yes)
    (first,) = archive_state(cache, "bootstrap", TRIXIE, "arm64")
    assert first.startswith(f"{MIRROR} trixie: ")
    fake_archive.serve(MIRROR, "trixie", {**DEFAULT_INDEXES, "main/binary-arm64/Packages": "9" * 64})
    fake_archive.forget()
    assert archive_state(cache, "bootstrap", TRIXIE, "arm64") != (first,)
    # non-free-firmware is not what debootstrap reads: its index does not reach the bootstrap key.
    fake_archive.serve(MIRROR, "trixie", {**DEFAULT_INDEXES, "non-free-firmware/binary-arm64/Packages": "8" * 64})
    fake_archive.forget()
    assert archive_state(cache, "bootstrap", TRIXIE, "arm64") == (first,)


def test_each_release_file_is_read_once_per_build(fake_archive: FakeArchive, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache", Incremental.yes)
    archive_state(cache, "bootstrap", TRIXIE, "arm64")
    archive_state(cache, "packages", TRIXIE, "arm64")
    assert fake_archive.fetched == [f"{MIRROR}/dists/trixie/InRelease"]


def test_a_mirror_without_inrelease_is_read_through_release(
    fake_archive: FakeArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    from amberpi import archive

    def only_release(url: str) -> bytes:
        fake_archive.fetched.append(url)
        if url.endswith("/InRelease"):
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, io.BytesIO())  # type: ignore[arg-type]
        return release_file(DEFAULT_INDEXES)

    monkeypatch.setattr(archive, "fetch", only_release)
    assert archive_state(Cache(tmp_path / "cache", Incremental.yes), "bootstrap", TRIXIE, "arm64")[0].startswith(f"{MIRROR} trixie: ")
    assert fake_archive.fetched == [f"{MIRROR}/dists/trixie/InRelease", f"{MIRROR}/dists/trixie/Release"]


def cached_entry(cache: Cache, stage: str, archive: tuple[str, ...], days_old: float) -> None:
    key, manifest = stage_key(stage, 1, {"suite": "trixie", "archive": list(archive)}, {})
    with cache.staging(stage, key, manifest):
        pass
    made = time.time() - days_old * 86400
    os.utime(cache.entry(stage, key) / "key.json", (made, made))


def test_offline_the_newest_cached_entry_gives_the_state_and_the_build_says_how_old(
    fake_archive: FakeArchive, tmp_path: Path, quiet_log: io.StringIO
) -> None:
    cache = Cache(tmp_path / "cache", Incremental.yes)
    older, newer = (f"{MIRROR} trixie: {'1' * 64}",), (f"{MIRROR} trixie: {'2' * 64}",)
    cached_entry(cache, "bootstrap", older, days_old=9)
    cached_entry(cache, "bootstrap", newer, days_old=3)
    cached_entry(cache, "bootstrap", ("http://other.example/debian trixie: " + "4" * 64,), days_old=1)
    fake_archive.down = "Temporary failure in name resolution"
    assert archive_state(cache, "bootstrap", TRIXIE, "arm64") == newer
    note = quiet_log.getvalue()
    assert f"cannot read {MIRROR}/dists/trixie/InRelease (Temporary failure in name resolution)" in note
    assert "3 days ago" in note and "updates since then are not in this build" in note


def test_offline_without_a_cached_entry_the_build_stops_naming_the_url(fake_archive: FakeArchive, tmp_path: Path) -> None:
    fake_archive.down = "Network is unreachable"
    with pytest.raises(StageError) as info:
        archive_state(Cache(tmp_path / "cache", Incremental.yes), "packages", TRIXIE, "arm64")
    assert info.value.what == f"cannot read the Debian archive's Release file {MIRROR}/dists/trixie/InRelease: Network is unreachable"
    assert info.value.hint is not None and "--mirror" in info.value.hint


def test_a_host_that_does_not_answer_is_asked_once(fake_archive: FakeArchive, tmp_path: Path) -> None:
    fake_archive.down = "timed out"
    suites = (Suite(MIRROR, "trixie", ("main",)), Suite(MIRROR, "trixie-updates", ("main",)))
    cache = Cache(tmp_path / "cache", Incremental.yes)
    for _ in range(2):
        with pytest.raises(StageError):
            archive_state(cache, "packages", suites, "arm64")
    assert fake_archive.fetched == [f"{MIRROR}/dists/trixie/InRelease"], "one timeout per build, not one per suite"


def test_a_state_read_recently_is_reused_without_asking_the_mirror(
    fake_archive: FakeArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Builds in a row key the same archive (a test run's strict builds must find their entries)."""
    import json

    monkeypatch.setenv("AMBERPI_ARCHIVE_MAX_AGE", "3600")
    cache = Cache(tmp_path, Incremental.yes)
    suites = (Suite(MIRROR, "trixie", ("main",)),)
    first = archive_state(cache, "bootstrap", suites, "arm64")
    fake_archive.serve(MIRROR, "trixie", {**DEFAULT_INDEXES, "main/binary-arm64/Packages": "7" * 64})
    fake_archive.forget()
    assert archive_state(cache, "bootstrap", suites, "arm64") == first
    assert len(fake_archive.fetched) == 1
    record = tmp_path / "archive-states.json"
    aged = {name: [when - 7200, state] for name, (when, state) in json.loads(record.read_text()).items()}
    record.write_text(json.dumps(aged))
    assert archive_state(cache, "bootstrap", suites, "arm64") != first, "an old record is read again"
