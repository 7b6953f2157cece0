"""Cache keys chain through upstream stages; entries commit atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi.cache import Cache, Incremental, changed_fields, stage_key
from amberpi.digests import digest_paths


def test_key_changes_with_inputs_version_and_upstream() -> None:
    base, _ = stage_key("squash", 1, {"compression": "zstd"}, {"customize": "a"})
    assert stage_key("squash", 1, {"compression": "zstd"}, {"customize": "a"})[0] == base
    assert stage_key("squash", 2, {"compression": "zstd"}, {"customize": "a"})[0] != base
    assert stage_key("squash", 1, {"compression": "xz"}, {"customize": "a"})[0] != base
    assert stage_key("squash", 1, {"compression": "zstd"}, {"customize": "b"})[0] != base


def test_digest_paths_sees_content_names_and_modes(tmp_path: Path) -> None:
    hook = tmp_path / "a.hook.chroot"
    hook.write_text("echo 1\n")
    first = digest_paths([tmp_path])
    hook.write_text("echo 2\n")
    assert digest_paths([tmp_path]) != first
    second = digest_paths([tmp_path])
    hook.chmod(0o755)
    assert digest_paths([tmp_path]) != second


def test_changed_fields() -> None:
    assert changed_fields({"inputs": {"a": 1, "b": 2}}, {"inputs": {"a": 1, "b": 3}}) == ["inputs.b"]


def test_staging_commits_only_on_success(tmp_path: Path) -> None:
    cache = Cache(tmp_path, Incremental.yes)
    key, manifest = stage_key("squash", 1, {}, {})
    with pytest.raises(RuntimeError), cache.staging("squash", key, manifest) as out:
        (out / "file").write_text("half")
        raise RuntimeError("stage failed")
    assert cache.lookup("squash", key) is None
    assert list((tmp_path / "squash").iterdir()) == []
    with cache.staging("squash", key, manifest) as out:
        (out / "file").write_text("whole")
    hit = cache.lookup("squash", key)
    assert hit is not None and (hit / "file").read_text() == "whole"


def test_partial_entry_is_discarded(tmp_path: Path) -> None:
    cache = Cache(tmp_path, Incremental.yes)
    partial = tmp_path / "squash" / "abc"
    partial.mkdir(parents=True)
    (partial / "filesystem.squashfs").write_text("truncated")
    assert cache.lookup("squash", "abc") is None
    assert not partial.exists()


def test_incremental_no_ignores_entries(tmp_path: Path) -> None:
    key, manifest = stage_key("squash", 1, {}, {})
    with Cache(tmp_path, Incremental.yes).staging("squash", key, manifest):
        pass
    assert Cache(tmp_path, Incremental.no).lookup("squash", key) is None


def test_initramfs_key_follows_what_mkinitramfs_reads(tmp_path: Path) -> None:
    from amberpi.stages.customize import initramfs_key

    tree = tmp_path / "rootfs"
    for folder in ("etc/initramfs-tools/conf.d", "usr/lib/modules/6.12.1-arm64/kernel", "var/lib/dpkg"):
        (tree / folder).mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text("Package: busybox\nVersion: 1\n")
    (tree / "usr/lib/modules/6.12.1-arm64/kernel/a.ko").write_bytes(b"module")
    (tree / "etc/motd").write_text("hello\n")
    first, _ = initramfs_key(tree, "6.12.1-arm64", 1)

    (tree / "etc/motd").write_text("a hook changed the motd\n")
    assert initramfs_key(tree, "6.12.1-arm64", 1)[0] == first, "files the initrd is not made from do not matter"
    assert initramfs_key(tree, "6.12.2-arm64", 1)[0] != first
    assert initramfs_key(tree, "6.12.1-arm64", 2)[0] != first, "the build's timestamp is in the archive"

    changes = {
        "etc/initramfs-tools/conf.d/compress": "COMPRESS=xz\n",
        "var/lib/dpkg/status": "Package: busybox\nVersion: 2\n",
        "usr/lib/modules/6.12.1-arm64/kernel/b.ko": "a module a hook built",
        "etc/modprobe.d/blacklist.conf": "blacklist a\n",
    }
    seen = {first}
    for path, text in changes.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
        key = initramfs_key(tree, "6.12.1-arm64", 1)[0]
        assert key not in seen, f"a change to {path} makes a new initrd"
        seen.add(key)


def test_clean_waits_for_no_build_and_keeps_the_lock_file(tmp_path: Path) -> None:
    """Before: clean -f took no lock and deleted the lock file, so it could wipe a running build."""
    from amberpi.cache import locked
    from amberpi.errors import LockError

    cache = Cache(tmp_path, Incremental.yes)
    (tmp_path / "squash" / "abc").mkdir(parents=True)
    with locked(cache.lock_file, "the cache"), pytest.raises(LockError):
        cache.clean()
    assert (tmp_path / "squash" / "abc").exists(), "nothing removed while a build holds the cache"
    cache.clean()
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_half_made_entries_of_killed_builds_are_reaped(tmp_path: Path) -> None:
    cache = Cache(tmp_path, Incremental.yes)
    (tmp_path / "packages" / ".tmp-0123456789abcdef-4242" / "tree" / "proc").mkdir(parents=True)
    (tmp_path / "packages" / "0123456789abcdef").mkdir()
    (tmp_path / "packages" / "0123456789abcdef" / "key.json").write_text("{}")
    assert [p.name for p in cache.reap_partial()] == [".tmp-0123456789abcdef-4242"]
    assert [p.name for p in (tmp_path / "packages").iterdir()] == ["0123456789abcdef"]
