"""Failures mid-build: the error names the cause, mounts are released, no image is left."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.buildtools import amberpi_mounts, build_cache_dir, hook_config, hook_left_running, start_build_in_hook
from tests.conftest import BuiltImage, amberpi, write_test_config

pytestmark = pytest.mark.integration


def test_failing_hook_stops_the_build(qemu_image: BuiltImage, tmp_path: Path) -> None:
    config = hook_config(tmp_path, "echo 'about to fail' >&2\nexit 3\n")
    out = tmp_path / "out"
    result = amberpi("--config", str(config), "--output", str(out))
    assert result.returncode == 1
    assert "hook 9999-test.hook.chroot failed (exit status 3)" in result.stderr
    assert str(tmp_path / "hooks" / "9999-test.hook.chroot") in result.stderr
    assert amberpi_mounts() == []
    assert not (out / "amberpi-qemu.img").exists()
    assert not list(out.glob(".*.partial"))
    log = (out / "amberpi-qemu.build.log").read_text()
    assert "about to fail" in log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_chroot_releases_mounts(qemu_image: BuiltImage, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C, or a CI runner's or service manager's stop."""
    process = start_build_in_hook(tmp_path)
    assert amberpi_mounts(), "the chroot is mounted while the hook runs"
    process.send_signal(sig)
    _, rest = process.communicate(timeout=180)
    assert process.returncode == 130, rest[-3000:]
    assert "interrupted" in rest
    assert amberpi_mounts() == []
    assert not (tmp_path / "out" / "amberpi-qemu.img").exists()
    assert hook_left_running() == "", "no process of the hook survives"


def test_a_full_output_folder_fails_before_writing_and_keeps_the_earlier_build(qemu_image: BuiltImage, tmp_path: Path) -> None:
    """The image does not fit: said before anything is written, the earlier image and its sidecars untouched."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "amberpi-test-full", str(small)], check=True)
    try:
        earlier = {"amberpi-qemu.img": b"earlier image", "amberpi-qemu.img.sha256": b"earlier checksum"}
        for name, content in earlier.items():
            (small / name).write_bytes(content)
        config = write_test_config(tmp_path)
        result = amberpi("--config", str(config), "--output", str(small))
        assert result.returncode == 1, result.stderr[-3000:]
        assert "error: the output folder has" in result.stderr and "MiB free; the image and its files need" in result.stderr
        assert f"where: {small}" in result.stderr and "--output" in result.stderr
        assert "internal error" not in result.stderr
        for name, content in earlier.items():
            assert (small / name).read_bytes() == content, f"{name} is as it was"
        assert not list(small.glob(".*.partial"))
        assert amberpi_mounts() == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    # The cache is whole: the same build into a folder with room succeeds at once.
    out = tmp_path / "out"
    result = amberpi("--config", str(config), "--output", str(out), check=True)
    assert (out / "amberpi-qemu.img").stat().st_size == qemu_image.path.stat().st_size


def test_a_full_cache_folder_names_the_stage_and_keeps_what_was_cached(qemu_image: BuiltImage, tmp_path: Path) -> None:
    """The shared cache copied to a tmpfs with room for little more: a squashfs of another
    compressor does not fit. Said as such; the entries that were there serve the next build."""
    cache = build_cache_dir()
    used = int(subprocess.run(["du", "-sb", str(cache)], capture_output=True, text=True, check=True).stdout.split()[0])
    small = tmp_path / "cache"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={(used >> 20) + 64}m", "amberpi-test-full", str(small)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{cache}/.", str(small)], check=True)
        config = write_test_config(tmp_path, squashfs_compression="gzip")
        out = tmp_path / "out"
        result = amberpi("--config", str(config), "--cache-dir", str(small), "--output", str(out))
        assert result.returncode == 1, result.stderr[-3000:]
        assert "error: stage squash ran out of room: No space left on device" in result.stderr
        assert f"where: the cache folder {small} (" in result.stderr and "--cache-dir" in result.stderr
        assert "the stage's own error: `mksquashfs" in result.stderr and "No space left on device" in result.stderr
        assert "internal error" not in result.stderr
        assert amberpi_mounts() == []
        assert not list(small.glob("*/.tmp-*")), "no half-made entry is left"
        assert not list(out.glob("*.img*"))
        subprocess.run(["mount", "-o", f"remount,size={(used >> 20) + 2048}m", str(small)], check=True)
        after = amberpi("--config", str(write_test_config(tmp_path)), "--cache-dir", str(small), "--output", str(out), check=True)
        assert "squash      cached" in after.stderr, after.stderr[-3000:]
    finally:
        subprocess.run(["umount", str(small)], check=True)
