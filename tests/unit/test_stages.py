"""Each real stage's run(), called directly with a hand-made inputs object and tiny upstream artefacts.

Heavy or root-only tools (debootstrap, chroot, mount, apt-get, mksquashfs, xz...) are fakes that record
their argv; fast, harmless ones (mkfs.vfat, mcopy, pycdlib, mkfs.ext4, debugfs, sfdisk on a plain file)
run for real, and their output is read back.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import random
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from amberpi.cache import Cache, Incremental
from amberpi.chroot import ChrootSession
from amberpi.config import ConfigTxtSection
from amberpi.context import RunRecord, StageRecord
from amberpi.errors import StageError, ToolError
from amberpi.filesystems.fat import list_fat, read_fat_file
from amberpi.filesystems.iso9660 import iso_identity, list_iso, read_iso_file, volume_id
from amberpi.identity import ImageIdentity
from amberpi.manifest import QUERY_FORMAT
from amberpi.stages.base import Artefact, FileInput
from amberpi.stages.bootfiles import BootfilesInputs, BootfilesStage
from amberpi.stages.bootfs import BootfsInputs, BootfsStage, first_boot_token
from amberpi.stages.bootfs import firstboot_files as bootfs_firstboot_files
from amberpi.stages.bootstrap import BootstrapInputs, BootstrapStage
from amberpi.stages.customize import GRUB_MODULES, CustomizeInputs, CustomizeStage, KernelConfirm, kernel_version
from amberpi.stages.disk import DiskInputs, DiskStage
from amberpi.stages.epoch import EpochInputs, EpochStage
from amberpi.stages.firmware import FirmwareInputs, FirmwareStage
from amberpi.stages.iso import IsoInputs, IsoStage
from amberpi.stages.packages import PackagesInputs, PackagesStage
from amberpi.stages.persistence import PersistenceInputs, PersistenceStage
from amberpi.stages.release import ReleaseInputs, ReleaseStage
from amberpi.stages.squash import EXCLUDE, SquashInputs, SquashStage
from tests.conftest import EPOCH
from tests.fakes import MIRROR, FakeTools, process_gone
from tests.samples import FIRSTBOOT_READER, boot_modes, device_profile, system_profile

pytestmark = pytest.mark.usefixtures("quiet_log")

IDENTITY = ImageIdentity("1a2b3c4d")
KERNEL = "6.12.9-arm64"
DTB = "broadcom/bcm2711-rpi-4-b.dtb"
SECURITY = "http://security.example/debian-security"
IMAGE_MIRROR = "http://device-mirror.example/debian"
PASSWORD_HASH = "$6$salt$0123456789abcdef"
# The chroot as a session mounts it (amberpi/chroot.py), in order.
CHROOT_MOUNTS = ["proc", "sys", "dev", "dev/pts", "dev/shm", "run", "var/cache/apt/archives"]


def epoch() -> Artefact:
    """The epoch stage's facts: read, never its folder."""
    return Artefact(None, {"source_date_epoch": EPOCH})


def folder(tmp_path: Path, name: str, files: Mapping[str, bytes | str] | None = None) -> Path:
    """A folder holding `files` (relative path → content)."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return root


def out_dir(tmp_path: Path) -> Path:
    """The empty folder the pipeline hands a stage."""
    return folder(tmp_path, "out")


def fake_chroot_tools(fake_tools: FakeTools, *, status: int = 0) -> None:
    """mount, umount and chroot as fakes: nothing is mounted and nothing runs inside the tree."""
    fake_tools.add("mount", "umount")
    fake_tools.add("chroot", status=status)


def inside(fake_tools: FakeTools, tree: Path) -> list[list[str]]:
    """The commands run in the chroot `tree`, without the `chroot TREE` prefix."""
    calls = fake_tools.calls("chroot")
    assert all(argv[1] == str(tree.resolve()) for argv in calls), calls
    return [argv[2:] for argv in calls]


def assert_every_mount_released(fake_tools: FakeTools, tree: Path) -> None:
    """The session's mounts, in order, and an umount of each, in reverse order."""
    root = tree.resolve()
    mounted = [argv[-1] for argv in fake_tools.calls("mount")]
    assert mounted == [str(root / rel) for rel in CHROOT_MOUNTS]
    assert [argv[-1] for argv in fake_tools.calls("umount")] == mounted[::-1]


# --- bootstrap --------------------------------------------------------------------------------


ARCHIVE = (f"{MIRROR} trixie: {'1' * 64}",)


def bootstrap_inputs(tmp_path: Path) -> BootstrapInputs:
    return BootstrapInputs("trixie", MIRROR, "arm64", ("ca-certificates", "eatmydata"), "1.0.141", ARCHIVE, apt_cache=tmp_path / "debs")


def test_bootstrap_runs_debootstrap_minbase_for_arm64(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("debootstrap")
    out = out_dir(tmp_path)
    artefact = BootstrapStage().run(bootstrap_inputs(tmp_path), {}, out)
    assert fake_tools.calls("debootstrap") == [
        [
            "debootstrap",
            "--arch=arm64",
            "--variant=minbase",
            "--include=ca-certificates,eatmydata",
            f"--cache-dir={tmp_path / 'debs'}",
            "trixie",
            str(out / "tree"),
            MIRROR,
        ]
    ]
    assert (tmp_path / "debs").is_dir(), "the .deb cache is made for debootstrap"
    assert artefact.path == out


def test_bootstrap_leaves_no_build_host_hostname_or_resolver_in_the_tree(fake_tools: FakeTools, tmp_path: Path) -> None:
    """Before: debootstrap's copies of this host's /etc/hostname and /etc/resolv.conf stayed in the cached tree."""
    fake_tools.add("debootstrap", creates=["{argv[6]}/etc/hostname", "{argv[6]}/etc/resolv.conf"], content="build-host.lan\n")
    out = out_dir(tmp_path)
    BootstrapStage().run(bootstrap_inputs(tmp_path), {}, out)
    tree = out / "tree"
    assert not (tree / "etc/hostname").exists(), "customize writes the device's"
    assert (tree / "etc/resolv.conf").read_text() == "", "a chroot session brings the host's resolver only while it runs"


def test_bootstrap_failure_shows_debootstraps_own_log(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("debootstrap", status=1, creates="{argv[6]}/debootstrap/debootstrap.log", content="E: Couldn't download packages\n")
    with pytest.raises(ToolError) as info:
        BootstrapStage().run(bootstrap_inputs(tmp_path), {}, out_dir(tmp_path))
    assert "E: Couldn't download packages" in info.value.output_tail
    assert info.value.where is not None and MIRROR in info.value.where


# --- chroot session ---------------------------------------------------------------------------


def chroot_tree(tmp_path: Path) -> Path:
    return folder(tmp_path, "tree", {"etc/resolv.conf": "nameserver 192.0.2.1\n", "usr/sbin/.keep": ""})


def test_chroot_session_mounts_a_fresh_read_only_sysfs_and_releases_everything(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_chroot_tools(fake_tools)
    tree = chroot_tree(tmp_path)
    apt_cache = tmp_path / "debs"
    with ChrootSession(tree, apt_cache=apt_cache) as session:
        session.run(["true"])
        assert (tree / "usr/sbin/policy-rc.d").read_text().endswith("exit 101\n"), "no service starts in the chroot"
    root = tree.resolve()
    assert fake_tools.calls("mount") == [
        ["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(root / "proc")],
        ["mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(root / "sys")],
        ["mount", "-o", "bind", "/dev", str(root / "dev")],
        ["mount", "-t", "devpts", "-o", "gid=5,mode=620,ptmxmode=666", "devpts", str(root / "dev/pts")],
        ["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(root / "dev/shm")],
        ["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev", "tmpfs", str(root / "run")],
        ["mount", "-o", "bind", str(apt_cache), str(root / "var/cache/apt/archives")],
    ]
    assert not any("--rbind" in argv or "/sys" in argv for argv in fake_tools.calls("mount")), "never the host's /sys"
    assert fake_tools.calls("chroot") == [["chroot", str(root), "true"]]
    assert_every_mount_released(fake_tools, tree)
    assert (tree / "etc/resolv.conf").read_text() == "nameserver 192.0.2.1\n", "the tree's own file is back"
    assert not (tree / "usr/sbin/policy-rc.d").exists()


def test_chroot_session_stops_what_commands_left_running_before_releasing_mounts(
    fake_tools: FakeTools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a daemon a hook started in a session of its own outlived the session, running in the cached tree."""
    from amberpi import chroot

    fake_chroot_tools(fake_tools)
    stopped: list[tuple[Path, int]] = []
    monkeypatch.setattr(chroot, "kill_processes_in", lambda root: stopped.append((root, len(fake_tools.calls("umount")))))
    tree = chroot_tree(tmp_path)
    with ChrootSession(tree, apt_cache=tmp_path / "debs") as session:
        session.run(["true"])
    assert stopped == [(tree.resolve(), 0)], "every process in the tree is stopped first, before any umount"
    assert_every_mount_released(fake_tools, tree)


def test_chroot_session_rolls_back_a_half_done_setup(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_chroot_tools(fake_tools)
    tree = chroot_tree(tmp_path)
    folder(tmp_path, "tree", {"dev/pts": "a file where devpts goes"})
    with pytest.raises(FileExistsError), ChrootSession(tree, apt_cache=tmp_path / "debs"):
        pytest.fail("the session must not start")
    root = tree.resolve()
    assert [argv[-1] for argv in fake_tools.calls("umount")] == [str(root / "dev"), str(root / "sys"), str(root / "proc")]
    assert fake_tools.calls("chroot") == []


def test_chroot_session_releases_its_mounts_when_the_command_fails(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_chroot_tools(fake_tools, status=100)
    tree = chroot_tree(tmp_path)
    with pytest.raises(ToolError) as info, ChrootSession(tree, apt_cache=tmp_path / "debs") as session:
        session.run(["apt-get", "update"])
    assert info.value.argv[:3] == ["chroot", str(tree.resolve()), "apt-get"]
    assert info.value.code == 100
    assert_every_mount_released(fake_tools, tree)


def test_chroot_session_failing_teardown_does_not_hide_the_commands_error(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_chroot_tools(fake_tools, status=100)
    fake_tools.add("umount", status=32, stdout="umount: target is busy\n")
    tree = chroot_tree(tmp_path)
    with pytest.raises(ToolError) as info, ChrootSession(tree, apt_cache=tmp_path / "debs") as session:
        session.run(["apt-get", "update"])
    assert info.value.argv[0] == "chroot", "the command's error, not the umount's"
    assert any("umount" in note for note in info.value.__notes__), "the teardown failure rides along as a note"
    # Each mount point: umount, then umount --lazy; none is skipped because another failed.
    root = tree.resolve()
    released = [str(root / rel) for rel in reversed(CHROOT_MOUNTS)]
    assert fake_tools.calls("umount") == [argv for point in released for argv in (["umount", point], ["umount", "--lazy", point])]


# --- packages ---------------------------------------------------------------------------------


def packages_inputs(tmp_path: Path, lists: tuple[Path, ...] = ()) -> PackagesInputs:
    return PackagesInputs(
        packages=("linux-image-arm64", "live-boot", "systemd"),
        suite="trixie",
        mirror=MIRROR,
        security_mirror=SECURITY,
        templates="digest",
        archive=ARCHIVE,
        apt_cache=tmp_path / "debs",
        lists=lists,
    )


def bootstrap_tree(tmp_path: Path) -> Path:
    """What debootstrap leaves, as far as the packages stage reads it."""
    files = {"tree/etc/apt/sources.list": "deb http://old/ trixie main\n", "tree/etc/dpkg/dpkg.cfg.d/.keep": "", "tree/usr/sbin/.keep": ""}
    return folder(tmp_path, "bootstrap", files)


def test_packages_installs_through_eatmydata_in_the_chroot(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_chroot_tools(fake_tools)
    bootstrap = bootstrap_tree(tmp_path)
    out = out_dir(tmp_path)
    artefact = PackagesStage().run(packages_inputs(tmp_path), {"bootstrap": Artefact(bootstrap)}, out)
    tree = out / "tree"
    options = ["-o", "Dpkg::Use-Pty=0", "-o", "APT::Install-Recommends=false", "-o", "Acquire::Retries=3"]
    assert inside(fake_tools, tree) == [
        ["dpkg-divert", "--local", "--rename", "--add", "/usr/sbin/update-initramfs"],
        ["apt-get", *options, "update"],
        ["eatmydata", "apt-get", *options, "-y", "install", "--", "linux-image-arm64", "live-boot", "systemd"],
        ["apt-get", "clean"],
    ]
    assert_every_mount_released(fake_tools, tree)
    assert [argv[-2] for argv in fake_tools.calls("mount")][-1] == str(tmp_path / "debs"), "the shared .deb cache"
    assert artefact.facts == {"packages": ["linux-image-arm64", "live-boot", "systemd"]}
    assert (bootstrap / "tree/etc/apt/sources.list").exists(), "the bootstrap tree is copied, not changed"


def test_packages_writes_debian_sources_from_the_inputs(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_chroot_tools(fake_tools)
    bootstrap = bootstrap_tree(tmp_path)
    out = out_dir(tmp_path)
    PackagesStage().run(packages_inputs(tmp_path), {"bootstrap": Artefact(bootstrap)}, out)
    tree = out / "tree"
    sources = (tree / "etc/apt/sources.list.d/debian.sources").read_text()
    assert f"URIs: {MIRROR}\nSuites: trixie trixie-updates\n" in sources
    assert f"URIs: {SECURITY}\nSuites: trixie-security\n" in sources
    assert not (tree / "etc/apt/sources.list").exists(), "the one-line format is gone"
    stub = tree / "usr/sbin/update-initramfs"
    assert stub.read_text().startswith("#!/bin/sh") and stub.stat().st_mode & 0o777 == 0o755, "initramfs deferred"
    assert not (tree / "etc/dpkg/dpkg.cfg.d/amberpi-unsafe-io").exists(), "unsafe I/O only while installing"


def test_packages_preflight_names_the_list_line_that_is_no_package(tmp_path: Path) -> None:
    listed = folder(tmp_path, "package-lists", {"base.list.chroot": "# the base\nsystemd  live-boot # boot\n--allow-unauthenticated\n"})
    path = listed / "base.list.chroot"
    assert PackagesStage().preflight(packages_inputs(tmp_path, lists=(path,))) == [
        f"{path}:3: '--allow-unauthenticated' is not a Debian package name"
    ]


# --- epoch ------------------------------------------------------------------------------------


def packages_with_changelogs(tmp_path: Path, dates: dict[str, int]) -> Artefact:
    packages = folder(tmp_path, "packages", {f"tree/usr/share/doc/{name}/changelog.Debian.gz": b"" for name in dates})
    for name, date in dates.items():
        os.utime(packages / f"tree/usr/share/doc/{name}/changelog.Debian.gz", (date, date))
    return Artefact(packages)


def test_epoch_configured_value_wins(tmp_path: Path) -> None:
    upstream = {"packages": packages_with_changelogs(tmp_path, {"bash": 1_600_000_000})}
    assert EpochStage().run(EpochInputs(1_234_567_890), upstream, out_dir(tmp_path)).facts == {"source_date_epoch": 1_234_567_890}


def test_epoch_defaults_to_the_newest_package_changelog(tmp_path: Path) -> None:
    upstream = {"packages": packages_with_changelogs(tmp_path, {"bash": 1_600_000_000, "systemd": 1_700_000_000, "zlib1g": 1_500_000_000})}
    assert EpochStage().run(EpochInputs(0), upstream, out_dir(tmp_path)).facts == {"source_date_epoch": 1_700_000_000}


def test_epoch_without_any_changelog_says_how_to_set_it(tmp_path: Path) -> None:
    upstream = {"packages": packages_with_changelogs(tmp_path, {})}
    with pytest.raises(StageError, match="no package changelog") as info:
        EpochStage().run(EpochInputs(0), upstream, out_dir(tmp_path))
    assert info.value.hint is not None and "source_date_epoch" in info.value.hint


# --- customize --------------------------------------------------------------------------------

HOOK_ENV = {
    # Documented in amberpi/stages/customize.py: keyed values...
    "SOURCE_DATE_EPOCH": str(EPOCH),
    "AMBERPI_SUITE": "trixie",
    "AMBERPI_HOSTNAME": "amberpi-test",
    # ...fixed values...
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    # ...and the unkeyed ones passed through (set by the test below).
    "QEMU_CPU": "cortex-a72",
    "http_proxy": "http://proxy.example:3128",
}


def packages_tree(tmp_path: Path) -> Artefact:
    """What the packages stage leaves: a kernel, dpkg's status, and things customize must clean away."""
    packages = folder(
        tmp_path,
        "packages",
        {
            f"tree/boot/vmlinuz-{KERNEL}": b"kernel",
            f"tree/usr/lib/linux-image-{KERNEL}/{DTB}": b"dtb",
            "tree/usr/sbin/update-initramfs": "#!/bin/sh\nexit 0\n",
            "tree/var/lib/dpkg/status": "Package: systemd\n",
            "tree/etc/ssh/ssh_host_ed25519_key": "secret",
            "tree/etc/resolv.conf": "nameserver 192.0.2.1\n",
            "tree/var/log/apt/history.log": "installed\n",
            "tree/var/lib/apt/lists/mirror_Packages": "",
            "tree/tmp/leftover": "",
            "tree/root/.keep": "",
        },
    )
    return Artefact(packages)


def hook_inputs(tmp_path: Path, scripts: dict[str, str]) -> tuple[FileInput, ...]:
    hook_folder = folder(tmp_path, "hooks", scripts)
    return tuple(FileInput.of(hook_folder / name) for name in sorted(scripts))


def customize_inputs(
    tmp_path: Path, hooks: tuple[FileInput, ...] = (), password_hash: str = PASSWORD_HASH, hook_timeout: int = 1800
) -> CustomizeInputs:
    return CustomizeInputs(
        system=system_profile(),
        kernel_confirm=KernelConfirm(("network-online.target", "ssh.service"), 300, degraded_ok=False),
        suite="trixie",
        hostname="amberpi-test",
        ssh_authorized_keys=("ssh-ed25519 AAAAC3Nza test@example",),
        hooks=hooks,
        includes=(),
        templates="digest",
        grub_modules=GRUB_MODULES,
        image_mirror=IMAGE_MIRROR,
        security_mirror=SECURITY,
        root_password_hash=password_hash,
        apt_cache=tmp_path / "debs",
        initramfs_cache=None,
        hook_timeout_seconds=hook_timeout,
    )


def fake_customize_tools(fake_tools: FakeTools) -> None:
    # The chroot fake makes what update-initramfs and grub-mkimage would (at every call: harmless).
    fake_chroot_tools(fake_tools)
    fake_tools.add(
        "chroot",
        record_stdin=True,
        record_env=True,
        creates=["{argv[1]}/tmp/amberpi-grub/BOOTAA64.EFI", f"{{argv[1]}}/boot/initrd.img-{KERNEL}"],
        content=b"made in the chroot",
    )
    fake_tools.add("dpkg-query", stdout="systemd\t257.4-1\tarm64\tsystemd\t257.4-1\nbase-files\t13.8\tarm64\t\t\n")


def run_customize(tmp_path: Path, inputs: CustomizeInputs, out: str = "out") -> Artefact:
    upstream = {"packages": packages_tree(tmp_path), "epoch": epoch()}
    return CustomizeStage().run(inputs, upstream, folder(tmp_path, out))


def test_customize_runs_setup_hooks_initramfs_and_grub_in_the_chroot(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_customize_tools(fake_tools)
    scripts = {"20-motd.hook.chroot": "#!/bin/sh\necho hi\n", "10-users.hook.chroot": "#!/bin/sh\ntrue\n"}
    artefact = run_customize(tmp_path, customize_inputs(tmp_path, hook_inputs(tmp_path, scripts)))
    tree = tmp_path / "out/rootfs"
    assert inside(fake_tools, tree) == [
        ["chpasswd", "--encrypted"],
        ["/tmp/amberpi-hooks/000-10-users.hook.chroot"],
        ["/tmp/amberpi-hooks/001-20-motd.hook.chroot"],
        ["dpkg-divert", "--local", "--rename", "--remove", "/usr/sbin/update-initramfs"],
        ["update-initramfs", "-v", "-c", "-k", KERNEL],
        ["grub-mkimage", "-O", "arm64-efi", "-p", "/grub", "-o", "/tmp/amberpi-grub/BOOTAA64.EFI", *GRUB_MODULES],
    ]
    assert_every_mount_released(fake_tools, tree)
    assert fake_tools.calls("dpkg-query") == [["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", QUERY_FORMAT]]
    assert artefact.facts == {
        "kernel_version": KERNEL,
        "package_count": 2,
        "packages": ["base-files 13.8", "systemd 257.4-1"],
        "package_manifest": [
            {
                "name": "base-files",
                "version": "13.8",
                "architecture": "arm64",
                "source": "base-files",
                "source_version": "13.8",
                "licenses": None,
            },
            {
                "name": "systemd",
                "version": "257.4-1",
                "architecture": "arm64",
                "source": "systemd",
                "source_version": "257.4-1",
                "licenses": None,
            },
        ],
        "initramfs": "built",
    }
    # Before: a persistent path missing from the image made live-boot fail the boot
    # ("overlay needs at least one lower filesystem") and reboot, over and over.
    assert (tree / "var/lib/kiosk").is_dir()


def test_customize_root_password_hash_goes_on_stdin_never_in_argv(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_customize_tools(fake_tools)
    run_customize(tmp_path, customize_inputs(tmp_path))
    assert fake_tools.stdin("chroot")[0] == f"root:{PASSWORD_HASH}\n"
    assert not any(PASSWORD_HASH in arg for argv in fake_tools.all_calls() for arg in argv)


def test_customize_without_a_password_locks_root(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_customize_tools(fake_tools)
    run_customize(tmp_path, customize_inputs(tmp_path, password_hash=""))
    assert inside(fake_tools, tmp_path / "out/rootfs")[0] == ["passwd", "--lock", "root"]


def test_customize_hooks_get_exactly_the_documented_environment(
    fake_tools: FakeTools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("QEMU_CPU", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", HOOK_ENV["http_proxy"])
    monkeypatch.setenv("AMBERPI_IMAGE_ID", "deadbeef")  # the builder's environment does not leak in
    fake_customize_tools(fake_tools)
    run_customize(tmp_path, customize_inputs(tmp_path, hook_inputs(tmp_path, {"10-env.hook.chroot": "#!/bin/sh\nenv\n"})))
    commands = inside(fake_tools, tmp_path / "out/rootfs")
    environments = dict(zip((argv[0] for argv in commands), fake_tools.env("chroot"), strict=True))
    assert environments["/tmp/amberpi-hooks/000-10-env.hook.chroot"] == HOOK_ENV
    assert environments["update-initramfs"]["SOURCE_DATE_EPOCH"] == str(EPOCH), "the initrd's dates are the build's"


def test_customize_collects_boot_files_and_cleans_the_rootfs(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_customize_tools(fake_tools)
    run_customize(tmp_path, customize_inputs(tmp_path))
    out = tmp_path / "out"
    boot, tree = out / "boot", out / "rootfs"
    assert (boot / "vmlinuz").read_bytes() == b"kernel"
    assert (boot / "initrd.img").read_bytes() == b"made in the chroot"
    assert (boot / "BOOTAA64.EFI").read_bytes() == b"made in the chroot"
    assert (boot / "dtbs" / DTB).read_bytes() == b"dtb"
    assert (boot / "version").read_text() == f"{KERNEL}\n"
    assert (tree / "etc/hostname").read_text() == "amberpi-test\n"
    keys = tree / "root/.ssh/authorized_keys"
    assert "ssh-ed25519 AAAAC3Nza test@example\n" in keys.read_text() and keys.stat().st_mode & 0o777 == 0o600
    assert (tree / "etc/machine-id").read_text() == ""
    assert (tree / "etc/resolv.conf").read_text() == "", "no build host's resolver in the image"
    for gone in ("etc/ssh/ssh_host_ed25519_key", "var/log/apt/history.log", "var/lib/apt/lists/mirror_Packages", "tmp/leftover"):
        assert not (tree / gone).exists(), gone
    assert list((tree / "tmp").iterdir()) == [], "hooks and grub staging are gone"
    assert (tree / "tmp").stat().st_mtime == EPOCH


def test_customize_reuses_the_cached_initrd_when_its_inputs_are_unchanged(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_customize_tools(fake_tools)
    inputs = dataclasses.replace(customize_inputs(tmp_path), initramfs_cache=Cache(tmp_path / "cache", Incremental.yes))
    assert run_customize(tmp_path, inputs, "first").facts["initramfs"] == "built"
    # Now nothing in the chroot makes an initrd: the second build's can only come from the cache.
    fake_tools.add("chroot", creates="{argv[1]}/tmp/amberpi-grub/BOOTAA64.EFI")
    assert run_customize(tmp_path, inputs, "second").facts["initramfs"] == "reused"
    second = str((tmp_path / "second/rootfs").resolve())
    assert "update-initramfs" not in [argv[2] for argv in fake_tools.calls("chroot") if argv[1] == second]
    assert (tmp_path / "second/boot/initrd.img").read_bytes() == b"made in the chroot", "the first build's initrd"


def test_customize_refuses_a_hook_edited_during_the_build_and_releases_the_chroot(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_customize_tools(fake_tools)
    (hook,) = hook_inputs(tmp_path, {"10-a.hook.chroot": "#!/bin/sh\n"})
    hook.path.write_text("#!/bin/sh\nrm -rf /\n")
    with pytest.raises(StageError, match="hook 10-a.hook.chroot changed"):
        run_customize(tmp_path, customize_inputs(tmp_path, (hook,)))
    assert [argv[0] for argv in inside(fake_tools, tmp_path / "out/rootfs")] == ["chpasswd"], "the edited hook never ran"
    assert_every_mount_released(fake_tools, tmp_path / "out/rootfs")


def test_customize_a_hook_past_hook_timeout_seconds_is_killed_with_what_it_started(fake_tools: FakeTools, tmp_path: Path) -> None:
    """Before: hooks had no time limit; a hook waiting on something that never came hung the build for good."""
    fake_customize_tools(fake_tools)
    fake_tools.add("chroot", hang_on="/tmp/amberpi-hooks/")
    hooks = hook_inputs(tmp_path, {"10-wait.hook.chroot": "#!/bin/sh\nwhile :; do sleep 1; done\n"})
    with pytest.raises(StageError) as info:
        run_customize(tmp_path, customize_inputs(tmp_path, hooks, hook_timeout=1))
    assert info.value.what.startswith("hook 10-wait.hook.chroot ran longer than hook_timeout_seconds (1s) and was killed")
    assert info.value.where == str(hooks[0].path)
    assert info.value.hint is not None and "hook_timeout_seconds" in info.value.hint
    (pids,) = fake_tools.hung("chroot")
    assert all(process_gone(pid) for pid in pids), "the hook and the process it started are both gone"
    tree = tmp_path / "out/rootfs"
    assert [argv[0] for argv in inside(fake_tools, tree)] == ["chpasswd", "/tmp/amberpi-hooks/000-10-wait.hook.chroot"]
    assert_every_mount_released(fake_tools, tree)


def test_customize_points_the_images_apt_sources_at_image_mirror(fake_tools: FakeTools, tmp_path: Path) -> None:
    """Before: the device's apt sources were always the build's mirror (a LAN proxy, say)."""
    fake_customize_tools(fake_tools)
    run_customize(tmp_path, customize_inputs(tmp_path))
    sources = (tmp_path / "out/rootfs/etc/apt/sources.list.d/debian.sources").read_text()
    assert f"URIs: {IMAGE_MIRROR}\nSuites: trixie trixie-updates\n" in sources
    assert f"URIs: {SECURITY}\nSuites: trixie-security\n" in sources
    assert MIRROR not in sources


def test_customize_never_logs_the_password_hash(fake_tools: FakeTools, tmp_path: Path) -> None:
    from amberpi.log import LOG

    fake_customize_tools(fake_tools)
    LOG.open_log(tmp_path / "build.log")
    try:
        run_customize(tmp_path, customize_inputs(tmp_path, hook_inputs(tmp_path, {"10-a.hook.chroot": "#!/bin/sh\n"})))
    finally:
        LOG.close_log()
        LOG.log_path = None
    log = (tmp_path / "build.log").read_text()
    assert "chpasswd --encrypted" in log and PASSWORD_HASH not in log and "0123456789abcdef" not in log


def test_customize_preflight_reports_a_hook_without_a_shebang(tmp_path: Path) -> None:
    good, bad = hook_inputs(tmp_path, {"10-good.hook.chroot": "#!/bin/sh\ntrue\n", "20-bad.hook.chroot": "echo no interpreter\n"})
    problems = CustomizeStage().preflight(customize_inputs(tmp_path, (good, bad)))
    assert problems == [f"{bad.path}: a hook must start with a #! line (e.g. #!/bin/sh)"]


def test_customize_boots_the_newest_of_two_installed_kernels(tmp_path: Path) -> None:
    tree = folder(tmp_path, "tree", {"boot/vmlinuz-6.12.9-arm64": b"", "boot/vmlinuz-6.12.10-arm64": b""})
    assert kernel_version(tree) == "6.12.10-arm64"


# --- squash -----------------------------------------------------------------------------------


def test_squash_passes_compression_excludes_and_the_build_date(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("mksquashfs", creates=2, content=b"hsqs", record_env=True)
    customize = folder(tmp_path, "customize", {"rootfs/etc/hostname": "amberpi\n"})
    out = out_dir(tmp_path)
    artefact = SquashStage().run(SquashInputs("xz", EXCLUDE), {"customize": Artefact(customize), "epoch": epoch()}, out)
    (argv,) = fake_tools.calls("mksquashfs")
    assert argv[:7] == [
        "mksquashfs",
        str(customize / "rootfs"),
        str(out / "filesystem.squashfs"),
        "-noappend",
        "-no-progress",
        "-comp",
        "xz",
    ]
    excludes = argv[argv.index("-wildcards") + 1 :]
    assert excludes == ["-e", "proc/*", "-e", "sys/*", "-e", "dev/*", "-e", "run/*", "-e", "tmp/*"]
    assert fake_tools.env("mksquashfs")[0]["SOURCE_DATE_EPOCH"] == str(EPOCH)
    assert artefact.facts == {"squashfs_bytes": 4}


# --- bootfiles --------------------------------------------------------------------------------


def test_bootfiles_keeps_a_copy_of_customizes_boot_folder(tmp_path: Path) -> None:
    customize = folder(tmp_path, "customize", {"boot/vmlinuz": b"kernel", "boot/initrd.img": b"initrd", f"boot/dtbs/{DTB}": b"dtb"})
    (customize / "boot/dtbs/broadcom/latest.dtb").symlink_to("bcm2711-rpi-4-b.dtb")
    out = out_dir(tmp_path)
    BootfilesStage().run(BootfilesInputs(), {"customize": Artefact(customize)}, out)
    assert (out / "boot/vmlinuz").read_bytes() == b"kernel"
    assert (out / "boot/initrd.img").read_bytes() == b"initrd"
    assert (out / "boot/dtbs" / DTB).read_bytes() == b"dtb"
    assert os.readlink(out / "boot/dtbs/broadcom/latest.dtb") == "bcm2711-rpi-4-b.dtb", "links stay links"


# --- firmware ---------------------------------------------------------------------------------


def test_firmware_downloads_with_a_private_apt_state_and_unpacks(fake_tools: FakeTools, tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    debs = out / "apt" / "debs"
    fake_tools.add(
        "apt-get", creates=[str(debs / "u-boot-rpi_2025.01_arm64.deb"), str(debs / "raspi-firmware_1.2_arm64.deb")], record_env=True
    )
    fake_tools.add("dpkg-deb")
    artefact = FirmwareStage().run(FirmwareInputs("raspi", "trixie", MIRROR, ("raspi-firmware", "u-boot-rpi")), {}, out)
    update, download = fake_tools.calls("apt-get")
    assert update[-1] == "update"
    assert download[-3:] == ["download", "raspi-firmware", "u-boot-rpi"]
    settings = {key: value for key, value in (option.split("=", 1) for option in update[2:-1:2])}
    assert update[1:-1:2] == ["-o"] * len(settings) and download[:-3] == update[:-1]
    assert {key: value for key, value in settings.items() if key.startswith("APT::Arch")} == {
        "APT::Architecture": "arm64",
        "APT::Architectures::": "arm64",
    }
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State", "Dir::State::status", "Dir::Cache"):
        assert settings[key].startswith(str(out / "apt") + "/"), f"{key}: not the host's apt state"
    assert (
        (out / "apt/sources.list")
        .read_text()
        .endswith(f"deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} trixie main non-free-firmware\n")
    )
    # The host's apt.conf.d is not read: no unkeyed host setting changes what is fetched.
    assert all(env["APT_CONFIG"] == str(out / "apt/apt.conf") for env in fake_tools.env("apt-get"))
    assert 'Dir::Etc::Parts "' + str(out / "apt/apt.conf.d") + '";' in (out / "apt/apt.conf").read_text()
    assert fake_tools.calls("dpkg-deb") == [
        ["dpkg-deb", "-x", str(debs / "raspi-firmware_1.2_arm64.deb"), str(out / "files")],
        ["dpkg-deb", "-x", str(debs / "u-boot-rpi_2025.01_arm64.deb"), str(out / "files")],
    ]
    assert artefact.facts == {"packages": ["raspi-firmware_1.2_arm64.deb", "u-boot-rpi_2025.01_arm64.deb"]}


def test_firmware_for_a_uefi_board_fetches_nothing(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("apt-get", "dpkg-deb")
    out = out_dir(tmp_path)
    artefact = FirmwareStage().run(FirmwareInputs("none", "", "", ()), {}, out)
    assert fake_tools.all_calls() == []
    assert (out / "files").is_dir() and artefact.facts == {"packages": []}


# --- bootfs (mkfs.vfat and mtools, for real) --------------------------------------------------


def bootfs_inputs(*, tries: int = 2, raspi: bool = False) -> BootfsInputs:
    return BootfsInputs(
        identity=IDENTITY,
        board="rpi4" if raspi else "generic-efi",
        firmware="raspi" if raspi else "none",
        serial_console="ttyAMA0,115200",
        uboot="rpi_arm64/u-boot.bin" if raspi else "",
        device_trees=(DTB,) if raspi else (),
        config_txt=(ConfigTxtSection(filter="pi4", device_tree="bcm2711-rpi-4-b.dtb"),) if raspi else (),
        extra_cmdline="quiet",
        kernel_tries=tries,
        timeout=3,
        size_mib=40,
        modes=boot_modes(),
        firstboot=(),
        firstboot_reader=FIRSTBOOT_READER,
        firstboot_dir="",
    )


def bootfs_upstream(tmp_path: Path) -> dict[str, Artefact]:
    bootfiles = folder(
        tmp_path,
        "bootfiles",
        {"boot/BOOTAA64.EFI": b"MZ grub", "boot/vmlinuz": b"k" * 1000, "boot/initrd.img": b"i" * 1000, f"boot/dtbs/{DTB}": b"dtb"},
    )
    firmware = folder(
        tmp_path,
        "firmware",
        {
            "files/usr/lib/raspi-firmware/start.elf": b"start",
            "files/usr/lib/raspi-firmware/fixup.dat": b"fixup",
            "files/usr/lib/raspi-firmware/bootcode.bin": b"bootcode",
            "files/usr/lib/u-boot/rpi_arm64/u-boot.bin": b"u-boot",
        },
    )
    return {
        "bootfiles": Artefact(bootfiles),
        "firmware": Artefact(firmware),
        "customize": Artefact(None, {"kernel_version": KERNEL}),
        "squash": Artefact(None, {"squashfs_bytes": 250 << 20}),
        "epoch": epoch(),
    }


def test_bootfs_writes_grub_its_menu_and_an_environment_block_in_place(tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    artefact = BootfsStage().run(bootfs_inputs(tries=4), bootfs_upstream(tmp_path), out)
    image = out / "p1.img"
    assert {"/EFI/BOOT/BOOTAA64.EFI", "/grub/grub.cfg", "/grub/grubenv"} <= set(list_fat(image))
    assert "/config.txt" not in list_fat(image), "no Pi firmware for a UEFI board"
    assert read_fat_file(image, "/EFI/BOOT/BOOTAA64.EFI") == b"MZ grub"
    menu = read_fat_file(image, "/grub/grub.cfg").decode()
    for expected in (
        f"live-media=/dev/disk/by-label/{IDENTITY.system_label}",
        f"persistence-label={IDENTITY.persistence_label}",
        f"amberpi.id={IDENTITY.image_id}",
        f'!= "{IDENTITY.kernel_label}"',
        f'if [ "$1" = "{KERNEL}" ]',
        # toram copies 250 MiB of squashfs and 2 kB of kernel and initrd: 251 MiB, and the 256 MiB margin.
        "console=ttyAMA0,115200 panic=10 amberpi.toram_mib=507 quickusbmodules quiet",
        "did not confirm a good boot in 4 tries",
    ):
        assert expected in menu, expected
    assert [n for n in range(1, 6) if f'"${{amberpi_tries}}" = "{n}"' in menu] == [1, 2, 3], "tries 2, 3, 4 follow try 1"
    grubenv = read_fat_file(image, "/grub/grubenv")
    assert len(grubenv) == 1024
    identity = iso_identity(EPOCH)  # p3 is written with the same epoch: grubenv names the write it holds
    token = first_boot_token(IDENTITY, EPOCH)
    expected = (
        f"# GRUB Environment Block\namberpi_state=good\namberpi_version={KERNEL}\namberpi_krn_uuid={identity}\namberpi_token={token}\n#"
    )
    assert grubenv.startswith(expected.encode())
    # The device's tokens are 16 hex digits; another image (or build date) starts with another.
    assert len(token) == 16 and int(token, 16) >= 0
    assert token != first_boot_token(ImageIdentity("0badc0de"), EPOCH) != first_boot_token(IDENTITY, EPOCH + 1)
    # GRUB claims its own disk in the modes that write, after reading the claim back.
    assert 'save_env --file "${prefix}/grubenv" amberpi_claim' in menu
    assert 'set amberpi_disk_arg="amberpi.claim=${amberpi_claim}"' in menu
    assert 'if [ "${amberpi_mode}" = "readonly" ]; then set amberpi_claims=no; fi' in menu
    assert "persistence-storage=filesystem" in menu, "live-boot mounts no partition to look for persistence files"
    offset = artefact.facts["grubenv_offset"]
    assert offset % 512 == 0
    assert image.read_bytes()[offset : offset + 1024] == grubenv, "the device rewrites it at this offset"


def test_bootfs_for_a_raspi_board_adds_the_firmware_chain(tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    BootfsStage().run(bootfs_inputs(raspi=True), bootfs_upstream(tmp_path), out)
    image = out / "p1.img"
    assert {"/start.elf", "/fixup.dat", "/bootcode.bin", "/u-boot.bin", "/bcm2711-rpi-4-b.dtb", "/config.txt"} <= set(list_fat(image))
    assert read_fat_file(image, "/u-boot.bin") == b"u-boot"
    config = read_fat_file(image, "/config.txt").decode()
    assert "arm_64bit=1\n" in config and "kernel=u-boot.bin\n" in config
    assert "[pi4]\ndevice_tree=bcm2711-rpi-4-b.dtb\n" in config


def test_bootfs_names_a_missing_uboot_binary(tmp_path: Path) -> None:
    upstream = bootfs_upstream(tmp_path)
    (tmp_path / "firmware/files/usr/lib/u-boot/rpi_arm64/u-boot.bin").unlink()
    with pytest.raises(StageError, match="U-Boot binary rpi_arm64/u-boot.bin is missing"):
        BootfsStage().run(bootfs_inputs(raspi=True), upstream, out_dir(tmp_path))


def firstboot_inputs(tmp_path: Path, files: Mapping[str, str]) -> BootfsInputs:
    seeds = folder(tmp_path, "seeds", files)
    return dataclasses.replace(
        bootfs_inputs(), firstboot=bootfs_firstboot_files(str(seeds)), firstboot_dir=str(seeds), firstboot_reader=FIRSTBOOT_READER
    )


def test_bootfs_puts_the_first_boot_files_on_p1(tmp_path: Path) -> None:
    user_data = "#cloud-config\nhostname: seeded\n"
    inputs = firstboot_inputs(tmp_path, {"user-data": user_data, "meta-data": "instance-id: x\n"})
    assert BootfsStage().preflight(inputs) == []
    out = out_dir(tmp_path)
    BootfsStage().run(inputs, bootfs_upstream(tmp_path), out)
    assert read_fat_file(out / "p1.img", "/user-data").decode() == user_data
    assert "/network-config" not in list_fat(out / "p1.img")


def test_bootfs_preflight_refuses_first_boot_files_the_device_could_not_read(tmp_path: Path) -> None:
    inputs = firstboot_inputs(tmp_path, {"user-data": "#cloud-config\nusers:\n\t- name: x\n", "userdata.txt": "x"})
    problems = BootfsStage().preflight(inputs)
    assert problems[0].endswith("unexpected userdata.txt (only user-data, network-config, meta-data go on p1)"), problems
    assert f"{inputs.firstboot_dir}/user-data:3:" in problems[1] and "tab" in problems[1], problems
    empty = firstboot_inputs(tmp_path / "empty", {"notes": ""})
    assert any("none of user-data, network-config, meta-data is there" in p for p in BootfsStage().preflight(empty))


# --- iso (pycdlib, for real) ------------------------------------------------------------------


def iso_inputs(kernel_size_mib: int = 8) -> IsoInputs:
    return IsoInputs(IDENTITY, "rpi4", "trixie", (DTB,), kernel_size_mib, "0.test", device_profile(), ("/ union",))


def iso_upstream(tmp_path: Path, kernel: bytes = b"kernel") -> dict[str, Artefact]:
    squash = folder(tmp_path, "squash", {"filesystem.squashfs": b"hsqs" * 100})
    bootfiles = folder(tmp_path, "bootfiles", {"boot/vmlinuz": kernel, "boot/initrd.img": b"initrd", f"boot/dtbs/{DTB}": b"dtb"})
    return {
        "squash": Artefact(squash),
        "bootfiles": Artefact(bootfiles),
        "customize": Artefact(None, {"kernel_version": KERNEL}),
        "bootfs": Artefact(None, {"grubenv_offset": 1_234_944}),
        "epoch": epoch(),
    }


def test_iso_system_partition_holds_the_squashfs_and_the_images_identity(tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    IsoStage().run(iso_inputs(), iso_upstream(tmp_path), out)
    p2 = out / "p2.iso"
    assert volume_id(p2) == IDENTITY.system_label
    assert {"/live/filesystem.squashfs", "/live/vmlinuz", "/live/initrd.img", "/.disk/info", "/.disk/amberpi.conf"} <= set(list_iso(p2))
    assert read_iso_file(p2, "/live/filesystem.squashfs") == b"hsqs" * 100
    conf = read_iso_file(p2, "/.disk/amberpi.conf").decode().splitlines()
    for line in ("grubenv_offset=1234944", f"kernel_label={IDENTITY.kernel_label}", f"factory_version={KERNEL}", f"device_trees={DTB}"):
        assert line in conf, line


def test_iso_kernel_partition_has_checksums_that_verify(tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    IsoStage().run(iso_inputs(), iso_upstream(tmp_path), out)
    p3 = out / "p3.iso"
    assert volume_id(p3) == IDENTITY.kernel_label
    files = list_iso(p3)
    assert set(files) == {"/vmlinuz", "/initrd.img", f"/dtbs/{DTB}", "/version", "/SHA256SUMS"}
    assert read_iso_file(p3, "/version") == f"{KERNEL}\n".encode()
    lines = read_iso_file(p3, "/SHA256SUMS").decode().splitlines()
    sums = {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
    assert set(sums) == {"vmlinuz", "initrd.img", f"dtbs/{DTB}", "version"}
    for name, digest in sums.items():
        assert hashlib.sha256(read_iso_file(p3, f"/{name}")).hexdigest() == digest, name


def test_iso_too_small_a_kernel_partition_names_kernel_size_mib(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="kernel_size_mib") as info:
        IsoStage().run(iso_inputs(kernel_size_mib=1), iso_upstream(tmp_path, kernel=noise(2 << 20)), out_dir(tmp_path))
    assert "needs 3 MiB but kernel_size_mib is 1" in info.value.what, "2 MiB of kernel and the ISO's own records, rounded up"


def test_iso_too_small_message_rounds_the_needed_size_up(tmp_path: Path) -> None:
    with pytest.raises(StageError) as info:
        IsoStage().run(iso_inputs(kernel_size_mib=1), iso_upstream(tmp_path, kernel=noise(1 << 20)), out_dir(tmp_path))
    assert "needs 2 MiB" in info.value.what


def noise(size: int) -> bytes:
    """Bytes gzip cannot shrink (the kernel partition holds the kernel compressed)."""
    return random.Random(size).randbytes(size)


def test_iso_kernel_partition_holds_the_kernel_gzip_compressed_the_same_every_time(tmp_path: Path) -> None:
    kernel = b"ARM\x64 kernel Image " * 50_000
    runs = []
    for run in ("a", "b"):
        out = out_dir(tmp_path / run)
        IsoStage().run(iso_inputs(), iso_upstream(tmp_path / run, kernel=kernel), out)
        runs.append(read_iso_file(out / "p3.iso", "/vmlinuz"))
    assert gzip.decompress(runs[0]) == kernel and len(runs[0]) < len(kernel) / 10
    assert runs[0] == runs[1], "no name or date in the gzip header: reproducible"
    assert read_iso_file(out / "p2.iso", "/live/vmlinuz") == kernel, "p2's factory kernel stays as Debian ships it"


# --- persistence (mkfs.ext4 and debugfs, for real) --------------------------------------------


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True).stdout


def test_persistence_is_an_ext4_with_the_images_label_and_union_conf(tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    artefact = PersistenceStage().run(PersistenceInputs(IDENTITY, 8, ("/ union",)), {"epoch": epoch()}, out)
    image = out / "p4.img"
    assert image.stat().st_size == 8 << 20
    assert debugfs(image, "cat /persistence.conf") == "/ union\n"
    stats = debugfs(image, "stats")
    assert f"Filesystem volume name:   {IDENTITY.persistence_label}\n" in stats
    assert f"Filesystem UUID:          {IDENTITY.partition_uuid('persistence')}\n" in stats
    assert artefact.facts == {"uuid": IDENTITY.partition_uuid("persistence")}
    inode = debugfs(image, "stat /persistence.conf")
    assert f"ctime: {EPOCH:#x}" in inode and f"mtime: {EPOCH:#x}" in inode, "dated by the build, not by the day"
    # Before: a fresh p4 had no rw folder, and a readonly boot (live-boot stacks rw read-only) failed.
    assert {"rw", "work"} <= set(debugfs(image, "ls -l /").split())


def test_persistence_makes_the_layers_of_chosen_paths(tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    PersistenceStage().run(PersistenceInputs(IDENTITY, 8, ("/home union", "/var/lib/app union")), {"epoch": epoch()}, out)
    image = out / "p4.img"
    assert debugfs(image, "cat /persistence.conf") == "/home union\n/var/lib/app union\n"
    assert {"rw", "work"} <= set(debugfs(image, "ls -l /home").split())
    assert {"rw", "work"} <= set(debugfs(image, "ls -l /var/lib/app").split())


# --- disk (sfdisk on a plain file, for real) --------------------------------------------------


def test_disk_partitions_a_plain_file_and_copies_each_partition_in(tmp_path: Path) -> None:
    contents = {"bootfs/p1.img": b"P1" * 100, "iso/p2.iso": b"P2" * 100, "iso/p3.iso": b"P3" * 100, "persistence/p4.img": b"P4" * 100}
    folder(tmp_path, "parts", contents)
    upstream = {name: Artefact(tmp_path / "parts" / name) for name in ("bootfs", "iso", "persistence")}
    out = out_dir(tmp_path)
    artefact = DiskStage().run(DiskInputs(IDENTITY, kernel_size_mib=8), upstream, out)
    image = out / "disk.img"
    mib = 1 << 20
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True).stdout)[
        "partitiontable"
    ]
    assert table["label"] == "dos" and table["id"] == "0x1a2b3c4d"
    assert [(p["start"] * 512 // mib, p["size"] * 512 // mib, p["type"], p.get("bootable", False)) for p in table["partitions"]] == [
        (4, 4, "c", True),
        (8, 4, "83", False),
        (12, 8, "83", False),  # kernel_size_mib, not the (tiny) ISO's size: room for kernel updates
        (20, 4, "83", False),
    ]
    with image.open("rb") as handle:
        for start, rel in zip((4, 8, 12, 20), contents, strict=True):
            handle.seek(start * mib)
            assert handle.read(200) == contents[rel], rel
    assert image.stat().st_size == 24 * mib == artefact.facts["image_bytes"]
    assert [p["start"] for p in artefact.facts["layout"]] == [4 * mib, 8 * mib, 12 * mib, 20 * mib]


# --- release ----------------------------------------------------------------------------------


def release_inputs(compress: str, imager_devices: tuple[str, ...] = ()) -> ReleaseInputs:
    record = RunRecord(stages=[StageRecord("bootstrap", "cached", 1.0, "k1"), StageRecord("release", "pending")])
    return ReleaseInputs(
        name="amberpi-test",
        compress=compress,
        identity=IDENTITY,
        board="rpi4",
        board_description="Raspberry Pi 4",
        imager_devices=imager_devices,
        release_url="",
        backend="native",
        suite="trixie",
        mirror=MIRROR,
        config=(("compress", compress), ("root_password_hash", "<redacted>")),
        amberpi_version="0.test",
        run_record=record,
    )


def release_upstream(tmp_path: Path) -> dict[str, Artefact]:
    disk = folder(tmp_path, "disk", {"disk.img": b"disk image"})
    manifest = [
        {
            "name": "base-files",
            "version": "13.8",
            "architecture": "arm64",
            "source": "base-files",
            "source_version": "13.8",
            "licenses": None,
        },
        {
            "name": "systemd",
            "version": "257.4-1",
            "architecture": "arm64",
            "source": "systemd",
            "source_version": "257.4-1",
            "licenses": ["LGPL-2.1+"],
        },
    ]
    built = {
        "kernel_version": KERNEL,
        "package_count": 2,
        "packages": ["base-files 13.8", "systemd 257.4-1"],
        "package_manifest": manifest,
        "initramfs": "built",
    }
    return {
        "disk": Artefact(disk, {"image_bytes": 10, "layout": [{"number": 1}]}),
        "customize": Artefact(None, built),
        "squash": Artefact(None, {"squashfs_bytes": 4}),
        "epoch": epoch(),
    }


def test_release_compresses_with_xz_and_publishes_the_image_first(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("xz", creates="{last}.xz", content=b"xz!")
    fake_tools.add("bmaptool", creates="{argv[3]}", content="<bmap/>")
    out = out_dir(tmp_path)
    artefact = ReleaseStage().run(release_inputs("xz", ("pi4-64bit",)), release_upstream(tmp_path), out)
    image = out / "amberpi-test.img"
    assert fake_tools.calls("xz") == [["xz", "-6", "-T0", "-k", "-f", str(image)]]
    publish = artefact.facts["publish"]
    assert publish[0] == "amberpi-test.img", "the image first: no new checksum beside an old image"
    assert set(publish) == {
        "amberpi-test.img",
        "amberpi-test.img.sha256",
        "amberpi-test.img.bmap",
        "amberpi-test.packages",
        "amberpi-test.manifest.json",
        "amberpi-test.img.xz",
        "amberpi-test.img.xz.sha256",
        "amberpi-test.rpi-imager.json",
        "amberpi-test.report.json",
    }
    assert all((out / name).is_file() for name in publish)
    assert fake_tools.calls("bmaptool") == [["bmaptool", "create", "-o", str(out / "amberpi-test.img.bmap"), str(image)]]
    assert artefact.facts["withdraw"] == []
    assert image.read_bytes() == b"disk image" and not (tmp_path / "disk/disk.img").exists(), "moved, not copied"
    assert (out / "amberpi-test.img.sha256").read_text() == f"{hashlib.sha256(b'disk image').hexdigest()}  amberpi-test.img\n"
    assert (out / "amberpi-test.packages").read_text() == "base-files 13.8\nsystemd 257.4-1\n"
    report = json.loads((out / "amberpi-test.report.json").read_text())
    assert report["compressed"] == {"file": "amberpi-test.img.xz", "bytes": 3, "sha256": hashlib.sha256(b"xz!").hexdigest()}
    assert report["source_date_epoch"] == EPOCH and report["kernel_version"] == KERNEL and report["squashfs_bytes"] == 4
    assert [stage["name"] for stage in report["stages"]] == ["bootstrap"], "the report does not time itself"


def test_release_without_compression_calls_no_xz_and_withdraws_old_downloads(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("xz")
    fake_tools.add("bmaptool", creates="{argv[3]}", content="<bmap/>")
    out = out_dir(tmp_path)
    artefact = ReleaseStage().run(release_inputs("none"), release_upstream(tmp_path), out)
    assert fake_tools.calls("xz") == []
    assert artefact.facts["publish"] == [
        "amberpi-test.img",
        "amberpi-test.img.sha256",
        "amberpi-test.img.bmap",
        "amberpi-test.packages",
        "amberpi-test.manifest.json",
        "amberpi-test.report.json",
    ]
    assert artefact.facts["withdraw"] == ["amberpi-test.img.xz", "amberpi-test.img.xz.sha256", "amberpi-test.rpi-imager.json"]


def test_customize_writes_what_a_kernel_on_trial_must_show(tmp_path: Path) -> None:
    """The confirm unit waits for the named units (systemd drop-in); amberpi-kernel reads the same list."""
    tree = tmp_path / "tree"
    CustomizeStage().write_system_files(customize_inputs(tmp_path, ()), tree)
    drop_in = (tree / "etc/systemd/system/amberpi-boot-confirm.service.d/amberpi.conf").read_text()
    for unit in ("network-online.target", "ssh.service"):
        assert f"Wants={unit}\nAfter={unit}\n" in drop_in
    assert "TimeoutStartSec=420\n" in drop_in
    # The profile: the initramfs's copy of the system partition's .disk/ (in toram the medium in RAM has none).
    for name in ("resilience.conf", "persistence.conf"):
        assert os.readlink(tree / "etc/amberpi" / name) == f"/run/amberpi/disk/{name}"
    conf = (tree / "etc/amberpi/kernel-confirm.conf").read_text()
    assert 'units="network-online.target ssh.service"\nseconds=300\ndegraded_ok=no\n' in conf
