"""customize: includes, device scripts, users, hooks, then the one initramfs and GRUB's EFI image.

Chroot hooks (hooks/*.hook.chroot, then each of hooks_dirs) run in name order with
exactly this environment, every value of it part of this stage's cache key:

  SOURCE_DATE_EPOCH   the build's timestamp (stage epoch)
  AMBERPI_SUITE       the Debian suite, e.g. trixie
  AMBERPI_HOSTNAME    the device's hostname
  PATH LANG LC_ALL HOME TERM DEBIAN_FRONTEND DEBCONF_NONINTERACTIVE_SEEN
                      fixed values (amberpi/run.py base_env, amberpi/chroot.py)

plus, passed through unkeyed because they change how files are fetched or how fast
emulation runs, never what is built: QEMU_CPU, http_proxy, https_proxy, no_proxy.
The rootfs is shared by every board and every image id: hooks see neither.
A hook gets hook_timeout_seconds to finish; past it, it is killed with its process
group, and whatever it left running in the chroot is stopped when the session ends.
The hooks fetch through the build's apt sources (`mirror`); the image's, naming
`image_mirror`, are written after them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amberpi.cache import Cache, stage_key
from amberpi.chroot import ChrootSession
from amberpi.context import BuildContext
from amberpi.digests import digest_paths
from amberpi.errors import StageError, ToolError, ToolTimeout
from amberpi.log import LOG
from amberpi.manifest import package_lines, query_packages
from amberpi.nativecopy import native_module_copies
from amberpi.render import TEMPLATES_DIR, write_rendered
from amberpi.stages.base import Artefact, FileInput, Stage, resource, secret, unkeyed
from amberpi.stages.packages import UPDATE_INITRAMFS
from amberpi.tools import EMULATION_TOOLS
from amberpi.trees import copy_over, copy_tree, resolve_inside

HOOK_SUFFIX = ".hook.chroot"
# The templates this stage renders: part of its cache key.
CUSTOMIZE_TEMPLATES = (
    "hostname.j2",
    "hosts.j2",
    "fstab.j2",
    "authorized_keys.j2",
    "zram-generator.conf.j2",
    "journald.conf.j2",
    "watchdog.conf.j2",
    "boot-confirm.conf.j2",
    "kernel-confirm.conf.j2",
    "debian.sources.j2",
)
# The image's apt sources (the packages stage wrote the build's there; hooks fetch through them).
APT_SOURCES = "etc/apt/sources.list.d/debian.sources"
# Folders of ram_paths that everybody may write to.
STICKY_PATHS = ("/tmp", "/var/tmp")
# The device tools read the resilience profile here; the build writes it on the
# system partition (it names the board's GPIO lines, and the rootfs is every board's),
# and the initramfs copies it to /run/amberpi/disk (in toram the medium in RAM has no .disk/).
PROFILE_LINKS = (
    ("etc/amberpi/resilience.conf", "/run/amberpi/disk/resilience.conf"),
    ("etc/amberpi/persistence.conf", "/run/amberpi/disk/persistence.conf"),
)
HOOKS_IN_CHROOT = "tmp/amberpi-hooks"
GRUB_OUT_IN_CHROOT = "tmp/amberpi-grub"
# Built into the EFI image so p1 needs no module folder: disk and file systems,
# the menu, kernel loading, checksums (hashsum) and the environment block.
GRUB_MODULES = tuple(
    (
        "part_msdos part_gpt fat iso9660 ext2 normal configfile linux echo test regexp probe "
        "search search_label search_fs_uuid loadenv hashsum gcry_sha256 sleep reboot halt "
        "efi_gop all_video gzio zstd xzio lsefi cat ls true minicmd"
    ).split()
)


# What mkinitramfs builds the initrd from, beside the kernel's modules: the installed
# packages (dpkg's status names each version) and the configuration they read. When
# none of it changed (say, a hook that writes /etc/motd was edited), the cached
# initrd is the one update-initramfs would make, minutes sooner under emulation.
INITRAMFS_INPUTS = (
    "var/lib/dpkg/status",
    "etc/initramfs-tools",
    "usr/share/initramfs-tools",
    "etc/modprobe.d",
    "usr/lib/modprobe.d",
    "etc/udev",
    "etc/live",
    "etc/default",
    "etc/crypttab",
    "etc/fstab",
)
# Older initramfs-tools refresh (-u) only kernels they have a record of here; trixie's keeps none.
INITRAMFS_STATE = "var/lib/initramfs-tools"


def initramfs_key(tree: Path, version: str, epoch: int) -> tuple[str, dict[str, Any]]:
    inputs = {
        "kernel": version,
        "epoch": epoch,
        "files": digest_paths([resolve_inside(tree, path) for path in INITRAMFS_INPUTS]),
        "modules": digest_paths([resolve_inside(tree, f"usr/lib/modules/{version}")]),
    }
    return stage_key("initramfs", 1, inputs, {})


def kernel_version(tree: Path) -> str:
    """The newest installed kernel, by Debian's version order (6.12.10 is newer than 6.12.9)."""
    kernels = [p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*")]
    if not kernels:
        raise StageError(
            "no kernel was installed in the rootfs",
            where="stage customize, /boot/vmlinuz-*",
            hint="keep linux-image-arm64 in package-lists/",
        )
    return max(kernels, key=debian_version_key)


def debian_version_key(version: str) -> list[tuple[int, str]]:
    """A sort key for the upstream part of kernel versions: digit runs compare as numbers."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.findall(r"\d+|[^\d.+~-]+", version)]


# Folders emptied at the end of every build. Whether a tool used them on the way
# (mkinitramfs works in /var/tmp, but not when its initrd is reused from the
# cache) must not show in the image, so their dates are set, not inherited.
SETTLED_FOLDERS = ("tmp", "var/tmp")


def settle_dates(tree: Path, epoch: int) -> None:
    """Make the dates a build leaves behind depend on `epoch`, not on the day or on the cache.

    Accounts made during the build record the day of their last password change
    in /etc/shadow; that day is clamped to the epoch's, as shadow does itself
    when SOURCE_DATE_EPOCH is set.
    """
    for folder in SETTLED_FOLDERS:
        path = tree / folder
        if path.is_dir() and not path.is_symlink():
            os.utime(path, (epoch, epoch), follow_symlinks=False)
    epoch_day = epoch // 86400
    for name in ("etc/shadow", "etc/shadow-"):
        shadow = tree / name
        if not shadow.is_file() or shadow.is_symlink():
            continue
        lines = []
        for line in shadow.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) > epoch_day:
                fields[2] = str(epoch_day)
            lines.append(":".join(fields))
        shadow.write_text("".join(line + "\n" for line in lines))


def hook_files(folders: list[Path]) -> list[Path]:
    hooks: list[Path] = []
    for folder in folders:
        hooks += sorted(p for p in folder.glob(f"*{HOOK_SUFFIX}") if p.is_file())
    return hooks


@dataclass(frozen=True)
class FolderInput:
    """A folder copied over the rootfs: keyed by its whole content."""

    digest: str
    path: Path = resource()

    @classmethod
    def of(cls, path: Path) -> FolderInput:
        return cls(digest_paths([path]), path)


@dataclass(frozen=True)
class SystemProfile:
    """The part of the resilience profile the rootfs carries: the same on every board."""

    # Folders kept on p4 (live-boot unions): they must exist in the image, as live-boot
    # stacks the image's folder under each one and fails the whole boot without it.
    persistent_paths: tuple[str, ...]
    ram_paths: tuple[str, ...]
    journal_max_mib: int
    zram_percent: int
    zram_algorithm: str
    watchdog_seconds: int


@dataclass(frozen=True)
class KernelConfirm:
    """What a kernel on trial must show before amberpi-boot-confirm keeps it."""

    units: tuple[str, ...]
    seconds: int
    degraded_ok: bool


@dataclass(frozen=True)
class CustomizeInputs:
    system: SystemProfile
    kernel_confirm: KernelConfirm
    suite: str
    hostname: str
    ssh_authorized_keys: tuple[str, ...]
    hooks: tuple[FileInput, ...]
    includes: tuple[FolderInput, ...]
    templates: str
    grub_modules: tuple[str, ...]
    # What the device's apt sources name (debian.sources): written after the hooks, which fetch from the build's mirror.
    image_mirror: str
    security_mirror: str
    root_password_hash: str = secret()
    apt_cache: Path = resource()
    initramfs_cache: Cache | None = resource()
    hook_timeout_seconds: int = unkeyed(
        "a hook that finishes in time makes the same tree whatever the limit, and one that does not fails the stage: nothing is cached"
    )


class CustomizeStage(Stage[CustomizeInputs]):
    name = "customize"
    version = 5
    needs = ("packages",)
    uses_facts = ("epoch",)
    tools = ("chroot", "dpkg-query", *EMULATION_TOOLS)

    def inputs(self, build: BuildContext) -> CustomizeInputs:
        c = build.config
        hook_folders = [build.layout.hooks, *(Path(d) for d in c.hooks_dirs)]
        include_folders = [build.layout.device / "rootfs", build.layout.includes, *(Path(d) for d in c.includes_dirs)]
        r = c.resilience
        return CustomizeInputs(
            system=SystemProfile(
                tuple(r.persistent_paths), tuple(r.ram_paths), r.journal_max_mib, r.zram_percent, r.zram_algorithm, r.watchdog_seconds
            ),
            kernel_confirm=KernelConfirm(tuple(c.kernel_confirm_units), c.kernel_confirm_seconds, c.kernel_confirm_degraded),
            suite=c.suite,
            hostname=c.hostname,
            ssh_authorized_keys=tuple(c.ssh_authorized_keys),
            hooks=tuple(FileInput.of(path) for path in hook_files(hook_folders)),
            includes=tuple(FolderInput.of(path) for path in include_folders if path.is_dir()),
            templates=digest_paths([TEMPLATES_DIR / name for name in CUSTOMIZE_TEMPLATES]),
            grub_modules=GRUB_MODULES,
            image_mirror=c.image_mirror or c.mirror,
            security_mirror=c.security_mirror,
            root_password_hash=c.root_password_hash,
            apt_cache=build.apt_cache,
            initramfs_cache=build.cache,
            hook_timeout_seconds=c.hook_timeout_seconds,
        )

    def title(self, inputs: CustomizeInputs) -> str:
        return f"Applying includes, users and {len(inputs.hooks)} hooks; one initramfs"

    def preflight(self, inputs: CustomizeInputs) -> list[str]:
        """A hook without #! fails in the chroot with a bare "Exec format error": say so now."""
        problems = []
        for hook in inputs.hooks:
            with hook.path.open("rb") as handle:
                if handle.read(2) != b"#!":
                    problems.append(f"{hook.path}: a hook must start with a #! line (e.g. #!/bin/sh)")
        return problems

    def hook_env(self, inputs: CustomizeInputs, epoch: int) -> dict[str, str]:
        return {"SOURCE_DATE_EPOCH": str(epoch), "AMBERPI_SUITE": inputs.suite, "AMBERPI_HOSTNAME": inputs.hostname}

    def run(self, inputs: CustomizeInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "rootfs"
        boot = out / "boot"
        boot.mkdir(parents=True, exist_ok=True)
        epoch = int(upstream["epoch"].facts["source_date_epoch"])
        copy_tree(upstream["packages"].folder / "tree", tree)
        self.write_system_files(inputs, tree)
        for folder in inputs.includes:
            copy_over(folder.path, tree)
        with ChrootSession(tree, apt_cache=inputs.apt_cache) as session:
            self.set_up_root(inputs, session, tree)
            self.run_hooks(inputs, session, tree, self.hook_env(inputs, epoch))
            version = kernel_version(tree)
            initramfs = self.make_initramfs(inputs, session, tree, version, epoch)
            self.make_grub_image(inputs, session, tree, boot)
        write_rendered(
            resolve_inside(tree, APT_SOURCES),
            "debian.sources.j2",
            suite=inputs.suite,
            mirror=inputs.image_mirror,
            security_mirror=inputs.security_mirror,
        )
        self.collect_boot_files(tree, version, boot)
        manifest = self.clean_tree(tree)
        settle_dates(tree, epoch)
        facts = {
            "kernel_version": version,
            "package_count": len(manifest),
            "packages": package_lines(manifest),
            "package_manifest": manifest,
            "initramfs": initramfs,
        }
        return Artefact(out, facts)

    def write_system_files(self, inputs: CustomizeInputs, tree: Path) -> None:
        write_rendered(resolve_inside(tree, "etc/hostname"), "hostname.j2", hostname=inputs.hostname)
        write_rendered(resolve_inside(tree, "etc/hosts"), "hosts.j2", hostname=inputs.hostname)
        system = inputs.system
        for kept in system.persistent_paths:
            resolve_inside(tree, kept).mkdir(mode=0o755, parents=True, exist_ok=True)
        write_rendered(resolve_inside(tree, "etc/fstab"), "fstab.j2", ram_paths=system.ram_paths, sticky=STICKY_PATHS)
        write_rendered(
            resolve_inside(tree, "etc/systemd/zram-generator.conf"),
            "zram-generator.conf.j2",
            percent=system.zram_percent,
            algorithm=system.zram_algorithm,
        )
        write_rendered(resolve_inside(tree, "etc/systemd/journald.conf.d/amberpi.conf"), "journald.conf.j2", max_mib=system.journal_max_mib)
        write_rendered(
            resolve_inside(tree, "etc/systemd/system.conf.d/amberpi-watchdog.conf"), "watchdog.conf.j2", seconds=system.watchdog_seconds
        )
        confirm = inputs.kernel_confirm
        write_rendered(
            resolve_inside(tree, "etc/systemd/system/amberpi-boot-confirm.service.d/amberpi.conf"),
            "boot-confirm.conf.j2",
            units=confirm.units,
            seconds=confirm.seconds,
        )
        write_rendered(
            resolve_inside(tree, "etc/amberpi/kernel-confirm.conf"),
            "kernel-confirm.conf.j2",
            units=confirm.units,
            seconds=confirm.seconds,
            degraded_ok=confirm.degraded_ok,
        )
        for link, target in PROFILE_LINKS:
            path = resolve_inside(tree, link)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                path.unlink()
            path.symlink_to(target)

    def set_up_root(self, inputs: CustomizeInputs, session: ChrootSession, tree: Path) -> None:
        if inputs.root_password_hash:
            # chpasswd reads the hash on stdin: it never shows in the log or in `ps`.
            session.run(["chpasswd", "--encrypted"], label="chpasswd", input=f"root:{inputs.root_password_hash}\n".encode())
        else:
            session.run(["passwd", "--lock", "root"], label="passwd")
        if inputs.ssh_authorized_keys:
            keys = resolve_inside(tree, "root/.ssh/authorized_keys")
            write_rendered(keys, "authorized_keys.j2", mode=0o600, keys=inputs.ssh_authorized_keys)
            keys.parent.chmod(0o700)

    def run_hooks(self, inputs: CustomizeInputs, session: ChrootSession, tree: Path, env: dict[str, str]) -> None:
        staged = resolve_inside(tree, HOOKS_IN_CHROOT)
        staged.mkdir(parents=True, exist_ok=True)
        try:
            for index, hook in enumerate(inputs.hooks):
                if FileInput.of(hook.path) != hook:
                    raise StageError(
                        f"hook {hook.name} changed while the build was running",
                        where=str(hook.path),
                        hint="build again: the cache key must describe the hook that ran",
                    )
                copy = staged / f"{index:03d}-{hook.name}"
                shutil.copy2(hook.path, copy)
                copy.chmod(0o755)
                with LOG.step(f"Running hook {hook.name}"):
                    try:
                        session.run([f"/{HOOKS_IN_CHROOT}/{copy.name}"], label=hook.name, env=env, timeout=inputs.hook_timeout_seconds)
                    except ToolTimeout as exc:
                        raise StageError(
                            f"hook {hook.name} ran longer than hook_timeout_seconds ({inputs.hook_timeout_seconds}s) "
                            "and was killed, with every process it started",
                            where=str(hook.path),
                            hint="make the hook finish (a daemon it starts must not be waited for), "
                            "or raise hook_timeout_seconds in the config; its last lines are in the build log",
                        ) from exc
                    except ToolError as exc:
                        raise StageError(
                            f"hook {hook.name} failed (exit status {exc.code})",
                            where=str(hook.path),
                            hint="fix the hook; the last lines it printed are in the build log",
                        ) from exc
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def make_initramfs(self, inputs: CustomizeInputs, session: ChrootSession, tree: Path, version: str, epoch: int) -> str:
        """The initrd of `version`: made by update-initramfs, or reused when its inputs are unchanged."""
        stub = resolve_inside(tree, UPDATE_INITRAMFS)
        if stub.exists():
            stub.unlink()
        session.run(["dpkg-divert", "--local", "--rename", "--remove", UPDATE_INITRAMFS])
        initrd = resolve_inside(tree, f"boot/initrd.img-{version}")
        state = resolve_inside(tree, f"{INITRAMFS_STATE}/{version}")
        key, manifest = initramfs_key(tree, version, epoch)
        store = inputs.initramfs_cache
        cached = store.lookup("initramfs", key) if store else None
        if cached is not None:
            LOG.detail(f"initramfs: its inputs are unchanged, reusing {cached}")
            shutil.copy2(cached / "initrd.img", initrd)
            if (cached / "state").exists():
                state.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(cached / "state", state)
            return "reused"
        # mkinitramfs clamps the archive's times to SOURCE_DATE_EPOCH: the same inputs, the same initrd.
        # -v: a line per hook and file copied, so the build log shows where its minutes go.
        with native_module_copies(tree) as copies:
            LOG.detail(f"initramfs: {copies}")
            session.run(["update-initramfs", "-v", "-c", "-k", version], label="initramfs", env={"SOURCE_DATE_EPOCH": str(epoch)})
        if store:
            with store.staging("initramfs", key, manifest) as entry:
                shutil.copy2(initrd, entry / "initrd.img")
                if state.exists():
                    shutil.copy2(state, entry / "state")
        return "built"

    def make_grub_image(self, inputs: CustomizeInputs, session: ChrootSession, tree: Path, boot: Path) -> None:
        staged = resolve_inside(tree, GRUB_OUT_IN_CHROOT)
        staged.mkdir(parents=True, exist_ok=True)
        try:
            session.run(
                ["grub-mkimage", "-O", "arm64-efi", "-p", "/grub", "-o", f"/{GRUB_OUT_IN_CHROOT}/BOOTAA64.EFI", *inputs.grub_modules],
                label="grub-mkimage",
            )
            shutil.copy2(staged / "BOOTAA64.EFI", boot / "BOOTAA64.EFI")
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def collect_boot_files(self, tree: Path, version: str, boot: Path) -> None:
        shutil.copy2(tree / "boot" / f"vmlinuz-{version}", boot / "vmlinuz")
        shutil.copy2(tree / "boot" / f"initrd.img-{version}", boot / "initrd.img")
        dtbs = tree / "usr" / "lib" / f"linux-image-{version}"
        if dtbs.is_dir():
            shutil.copytree(dtbs, boot / "dtbs", symlinks=True)
        (boot / "version").write_text(version + "\n")

    def clean_tree(self, tree: Path) -> list[dict[str, Any]]:
        """Drop what must not be baked into every device; return the package manifest (amberpi/manifest.py)."""
        manifest = query_packages(tree)
        for pattern in (
            "etc/ssh/ssh_host_*",
            "var/lib/apt/lists/*",
            "var/cache/apt/*.bin",
            "var/cache/debconf/*-old",
            "var/cache/ldconfig/aux-cache",
            "tmp/*",
            "var/tmp/*",
        ):
            for path in tree.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for log in (tree / "var/log").rglob("*"):
            if log.is_file():
                log.unlink()
        (tree / "etc/machine-id").write_text("")
        dbus_id = tree / "var/lib/dbus/machine-id"
        if dbus_id.exists() or dbus_id.is_symlink():
            dbus_id.unlink()
        resolv = tree / "etc/resolv.conf"
        if resolv.exists() or resolv.is_symlink():
            resolv.unlink()
        if (tree / "usr/lib/systemd/systemd-resolved").exists():
            resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
        else:
            resolv.write_text("")
        return manifest
