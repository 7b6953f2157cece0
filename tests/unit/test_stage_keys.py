"""Which stages a change reaches: the real stages' keys, planned (nothing built) before and after each edit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from amberpi.cache import Cache, Incremental
from amberpi.config import Config
from amberpi.context import Layout
from amberpi.pipeline import Pipeline
from amberpi.stages import STAGES
from tests.conftest import REPO
from tests.fakes import DEFAULT_INDEXES, FakeArchive

ALL = [stage.name for stage in STAGES]
ROOTFS = ["bootstrap", "packages", "epoch", "customize", "squash", "bootfiles"]
# Neither the firmware (fetched apart) nor the empty persistence partition depend on the rootfs.
NOT_FROM_ROOTFS = {"firmware", "persistence"}


def after(first: str) -> set[str]:
    """`first` and every stage after it in build order."""
    return set(ALL[ALL.index(first) :])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's hooks, includes and package lists, so the test can edit them."""
    import shutil

    root = tmp_path / "project"
    for folder in ("hooks", "includes", "package-lists", "amberpi/device"):
        shutil.copytree(REPO / folder, root / folder, symlinks=True)
    return root


def keys(config: Config, project: Path, tmp_path: Path) -> dict[str, str]:
    pipeline = Pipeline(config)
    context = dataclasses.replace(pipeline.context(tmp_path, Cache(tmp_path / "cache", Incremental.yes)), layout=Layout(project))
    pipeline.make_plan(context)
    return {name: planned.key for name, planned in pipeline.plan.items()}


BASE = Config(board="qemu", mirror="http://m/debian", security_mirror="http://s/debian-security", image_id="1a2b3c4d", output="out")


@pytest.mark.parametrize(
    ("change", "reached"),
    [
        ({"image_id": "99999999"}, after("bootfs") - {"bootfs"} | {"bootfs"}),
        ({"source_date_epoch": 1_800_000_000}, after("epoch") - {"firmware"}),
        ({"hostname": "kiosk"}, after("customize") - NOT_FROM_ROOTFS),
        ({"root_password_hash": "$6$salt$hash"}, after("customize") - NOT_FROM_ROOTFS),
        ({"packages": ["vim"]}, after("packages") - {"firmware"}),
        # The qemu board fetches no firmware, so the mirror does not reach that stage.
        ({"mirror": "http://other/debian"}, set(ALL) - {"firmware"}),
        # bootfs too: toram's RAM check needs the squashfs's size.
        ({"squashfs_compression": "xz"}, {"squash", "bootfs", "iso", "disk", "release"}),
        ({"kernel_tries": 3}, {"bootfs", "iso", "disk", "release"}),
        ({"kernel_cmdline": "quiet"}, {"bootfs", "iso", "disk", "release"}),
        # What a kernel on trial must show is written into the rootfs (/etc/amberpi/kernel-confirm.conf).
        ({"kernel_confirm_units": ["ssh.service"]}, after("customize") - NOT_FROM_ROOTFS),
        ({"kernel_confirm_degraded": True}, after("customize") - NOT_FROM_ROOTFS),
        ({"board": "pi3"}, {"firmware", "bootfs", "iso", "disk", "release"}),
        ({"persistence_size_mib": 2048}, {"persistence", "disk", "release"}),
        ({"compress": "xz"}, {"release"}),
        # The Imager list's download links.
        ({"release_url": "https://example.org/amberpi/v1/"}, {"release"}),
        # Only the device's apt sources, written at the end of customize: the build fetches from `mirror`.
        ({"image_mirror": "http://device-mirror/debian"}, after("customize") - NOT_FROM_ROOTFS),
        # A limit, not an input: a hook that finishes in time makes the same tree under any limit
        # (only the report, which records the whole config, changes).
        ({"hook_timeout_seconds": 60}, {"release"}),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_a_setting_reaches_exactly_the_stages_that_read_it(
    project: Path, tmp_path: Path, change: dict[str, object], reached: set[str]
) -> None:
    before = keys(BASE, project, tmp_path)
    changed = keys(dataclasses.replace(BASE, **change), project, tmp_path)  # type: ignore[arg-type]
    assert {name for name in ALL if before[name] != changed[name]} == reached


def test_the_image_id_never_reaches_the_rootfs(project: Path, tmp_path: Path) -> None:
    """Hooks do not see the image id, so a cached rootfs is right for every id."""
    before = keys(BASE, project, tmp_path)
    changed = keys(dataclasses.replace(BASE, image_id="0badcafe"), project, tmp_path)
    assert all(before[name] == changed[name] for name in ROOTFS)


@pytest.mark.parametrize(
    ("path", "reached_from"),
    [
        ("hooks/0100-network.hook.chroot", "customize"),
        ("includes/etc/systemd/network/20-wired.network", "customize"),
        ("amberpi/device/rootfs/usr/sbin/amberpi-kernel", "customize"),
        ("package-lists/base.list.chroot", "packages"),
    ],
)
def test_a_file_a_stage_reads_reaches_it(project: Path, tmp_path: Path, path: str, reached_from: str) -> None:
    before = keys(BASE, project, tmp_path)
    with (project / path).open("a") as handle:
        handle.write("\n# edited\n" if path.endswith(".chroot") or path.endswith("kernel") else "\n")
    if path.startswith("package-lists"):
        (project / path).write_text((project / path).read_text() + "vim\n")
    changed = keys(BASE, project, tmp_path)
    expected = after(reached_from) - NOT_FROM_ROOTFS
    if reached_from == "packages":
        expected.add("persistence")  # through the build's timestamp: the newest package's date
    assert {name for name in ALL if before[name] != changed[name]} == expected


def test_a_hook_added_in_hooks_dirs_reaches_customize(project: Path, tmp_path: Path) -> None:
    extra = tmp_path / "my-hooks"
    extra.mkdir()
    before = keys(dataclasses.replace(BASE, hooks_dirs=[str(extra)]), project, tmp_path)
    (extra / "9000-motd.hook.chroot").write_text("#!/bin/sh\necho hello > /etc/motd\n")
    changed = keys(dataclasses.replace(BASE, hooks_dirs=[str(extra)]), project, tmp_path)
    assert {name for name in ALL if before[name] != changed[name]} == after("customize") - NOT_FROM_ROOTFS


def test_the_password_hash_is_keyed_by_digest_only(project: Path, tmp_path: Path) -> None:
    pipeline = Pipeline(dataclasses.replace(BASE, root_password_hash="$6$salt$secrethash"))
    pipeline.make_plan(dataclasses.replace(pipeline.context(tmp_path, Cache(tmp_path / "cache", Incremental.yes)), layout=Layout(project)))
    manifest = str(pipeline.plan["customize"].manifest)
    assert "secrethash" not in manifest


@pytest.mark.parametrize(
    ("suite", "reached"),
    [
        # A point release: debootstrap and apt would install other versions.
        ("trixie", set(ALL) - {"firmware"}),
        # A stable update or a security update: only what apt installs.
        ("trixie-updates", after("packages") - {"firmware"}),
        ("trixie-security", after("packages") - {"firmware"}),
    ],
)
def test_a_new_debian_release_reaches_the_stages_that_install_from_it(
    project: Path, tmp_path: Path, fake_archive: FakeArchive, suite: str, reached: set[str]
) -> None:
    """Before: a warm cache kept its bootstrap and packages trees whatever the archive had published since."""
    mirror = BASE.security_mirror if suite.endswith("-security") else BASE.mirror
    before = keys(BASE, project, tmp_path)
    fake_archive.serve(mirror, suite, {**DEFAULT_INDEXES, "main/binary-arm64/Packages": "9" * 64})
    fake_archive.forget()
    changed = keys(BASE, project, tmp_path)
    assert {name for name in ALL if before[name] != changed[name]} == reached


def test_an_archive_change_another_architecture_sees_changes_nothing(project: Path, tmp_path: Path, fake_archive: FakeArchive) -> None:
    before = keys(BASE, project, tmp_path)
    # A new Date and new amd64 indexes: the same arm64 ones.
    fake_archive.serve(
        BASE.mirror, "trixie", {**DEFAULT_INDEXES, "main/binary-amd64/Packages": "c" * 64}, date="Sun, 11 Jan 2026 04:00:00 UTC"
    )
    fake_archive.forget()
    assert keys(BASE, project, tmp_path) == before
