"""Tree operations and the mount table: paths with any character, never deleting through a mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from amberpi.errors import StageError, cleanup_after
from amberpi.mounts import decode_mount_field, mounted_under
from amberpi.trees import copy_over, move_file, resolve_inside


def test_mount_table_escapes_are_all_decoded(tmp_path: Path) -> None:
    """Before: only \\040 was decoded, so a build folder with a backslash or tab hid its mounts."""
    root = tmp_path / "odd\\name\tx y"
    root.mkdir()
    table = tmp_path / "mounts"
    escaped = str(root).replace("\\", "\\134").replace("\t", "\\011").replace(" ", "\\040")
    table.write_text(f"proc {escaped}/proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n")
    assert mounted_under(root, table) == [f"{root}/proc"]
    assert decode_mount_field("a\\012b") == "a\nb"


def test_resolve_inside_never_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "evil").symlink_to("/etc/passwd")
    assert resolve_inside(root, "etc/evil") == root.resolve() / "etc" / "passwd"
    assert resolve_inside(root, "../../etc/shadow") == root.resolve() / "etc" / "shadow"


def test_move_file_keeps_the_content(tmp_path: Path) -> None:
    source = tmp_path / "a.img"
    source.write_bytes(b"image")
    move_file(source, tmp_path / "b.img")
    assert not source.exists() and (tmp_path / "b.img").read_bytes() == b"image"


def test_a_failing_cleanup_never_hides_the_first_error() -> None:
    """Before: an unmount that failed while a stage's error unwound replaced that error."""

    def broken_cleanup() -> None:
        raise StageError("umount: target is busy")

    with pytest.raises(RuntimeError) as error, cleanup_after(broken_cleanup):
        raise RuntimeError("the hook failed")
    assert str(error.value) == "the hook failed"
    assert error.value.__notes__ == ["cleaning up after this error failed too: umount: target is busy"]


def test_a_failing_cleanup_is_an_error_of_its_own_after_success() -> None:
    def broken_cleanup() -> None:
        raise StageError("umount: target is busy")

    with pytest.raises(StageError), cleanup_after(broken_cleanup):
        pass


def test_an_include_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    """Before: copy_over followed the link, so an include of /etc/amberpi/resilience.conf (a link to
    /run/live/medium/...) was written under the tree's /run and the device never saw it."""
    tree = tmp_path / "tree"
    (tree / "etc" / "amberpi").mkdir(parents=True)
    (tree / "run").mkdir()
    (tree / "etc" / "amberpi" / "resilience.conf").symlink_to("/run/live/medium/.disk/resilience.conf")
    includes = tmp_path / "includes"
    (includes / "etc" / "amberpi").mkdir(parents=True)
    (includes / "etc" / "amberpi" / "resilience.conf").write_text("HALT_LINE=3\n")
    copy_over(includes, tree)
    target = tree / "etc" / "amberpi" / "resilience.conf"
    assert not target.is_symlink() and target.read_text() == "HALT_LINE=3\n"
    assert not (tree / "run" / "live").exists()


def test_a_sparse_image_moved_across_file_systems_stays_sparse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image leaves the workspace (the builder container's) for the output folder (the host's) by copy:
    its holes must stay holes (the Docker backend's images took 1.7 GiB on disk against 425 MiB)."""
    import errno
    import hashlib

    from amberpi import trees

    source = tmp_path / "disk.img"
    with source.open("wb") as image:
        image.truncate(64 << 20)
        image.seek(1 << 20)
        image.write(b"p1" * 2048)
        image.seek(40 << 20)
        image.write(b"p4" * 2048)
    if source.stat().st_blocks * 512 > 8 << 20:
        pytest.skip("this file system keeps no holes")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    def across_file_systems(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(trees.os, "rename", across_file_systems)
    target = tmp_path / "out" / "amberpi.img"
    target.parent.mkdir()
    move_file(source, target)
    assert not source.exists()
    assert target.stat().st_size == 64 << 20 and hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert target.stat().st_blocks * 512 < 8 << 20, "the copy is as sparse as the image was"
