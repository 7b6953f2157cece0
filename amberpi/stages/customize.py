"""customize: includes, device scripts, users, hooks, then the one initramfs and GRUB image."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.cache import copy_tree, digest_paths, stage_key
from amberpi.context import BuildContext
from amberpi.errors import StageError, ToolError
from amberpi.log import LOG
from amberpi.mounts import ChrootSession, resolve_inside
from amberpi.render import TEMPLATES_DIR, write_rendered
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage
from amberpi.stages.packages import UPDATE_INITRAMFS

HOOK_SUFFIX = ".hook.chroot"
# The templates this stage renders: part of its cache key.
CUSTOMIZE_TEMPLATES = ("hostname.j2", "hosts.j2", "fstab.j2", "authorized_keys.j2")
HOOKS_IN_CHROOT = "tmp/amberpi-hooks"
GRUB_OUT_IN_CHROOT = "tmp/amberpi-grub"
# Built into the EFI image so p1 needs no module folder: disk and file systems,
# the menu, kernel loading, checksums (hashsum) and the environment block.
GRUB_MODULES = (
    "part_msdos part_gpt fat iso9660 ext2 normal configfile linux echo test regexp probe "
    "search search_label search_fs_uuid loadenv hashsum gcry_sha256 sleep reboot halt "
    "efi_gop all_video gzio zstd xzio lsefi cat ls true minicmd"
).split()


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


def hook_files(ctx: BuildContext) -> list[Path]:
    folders = [ctx.layout.hooks, *(Path(d) for d in ctx.config.hooks_dirs)]
    hooks: list[Path] = []
    for folder in folders:
        hooks += sorted(p for p in folder.glob(f"*{HOOK_SUFFIX}") if p.is_file())
    return hooks


def include_folders(ctx: BuildContext) -> list[Path]:
    return [ctx.layout.device / "rootfs", ctx.layout.includes, *(Path(d) for d in ctx.config.includes_dirs)]


def copy_over(source: Path, tree: Path) -> None:
    """Copy a folder's contents over the rootfs, following no symlink out of it."""
    for item in sorted(source.rglob("*")):
        rel = item.relative_to(source)
        if (rel.parts and rel.parts[0] == ".gitkeep") or item.name == ".gitkeep":
            continue
        target = resolve_inside(tree, str(rel))
        if item.is_dir() and not item.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        if item.is_symlink():
            os.symlink(os.readlink(item), target)
        else:
            shutil.copy2(item, target)
            os.chown(target, 0, 0)


def kernel_version(tree: Path) -> str:
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise StageError(
            "no kernel was installed in the rootfs",
            where="stage customize, /boot/vmlinuz-*",
            hint="keep linux-image-arm64 in package-lists/",
        )
    return kernels[-1]


def newest_package_date(tree: Path) -> int:
    """The build's default timestamp: the date of the newest installed package.

    dpkg keeps each packaged file's mtime, which Debian clamps to the package's
    changelog date, so the same package versions give the same timestamp.
    """
    dates = [int(p.lstat().st_mtime) for p in (tree / "usr/share/doc").glob("*/changelog.Debian.gz")]
    if not dates:
        raise StageError(
            "no package changelog to date the build by",
            where=f"stage customize, {tree}/usr/share/doc",
            hint="set source_date_epoch in the config, or SOURCE_DATE_EPOCH",
        )
    return max(dates)


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


class CustomizeStage(Stage):
    name = "customize"
    title = "Applying includes, users and {count} hooks; one initramfs"
    version = 2
    needs = ("packages",)

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        c = ctx.config
        return {
            "hostname": c.hostname,
            "source_date_epoch": c.source_date_epoch,
            "root_password_hash": c.root_password_hash,
            "ssh_authorized_keys": c.ssh_authorized_keys,
            "hooks": digest_paths(hook_files(ctx)),
            "hook_names": [p.name for p in hook_files(ctx)],
            "includes": digest_paths(include_folders(ctx)),
            "templates": digest_paths([TEMPLATES_DIR / name for name in CUSTOMIZE_TEMPLATES]),
            "grub_modules": list(GRUB_MODULES),
        }

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "rootfs"
        boot = out / "boot"
        boot.mkdir(parents=True, exist_ok=True)
        copy_tree(upstream["packages"].path / "tree", tree)
        self.write_system_files(ctx, tree)
        for folder in include_folders(ctx):
            if folder.is_dir():
                copy_over(folder, tree)
        epoch = ctx.config.source_date_epoch or newest_package_date(tree)
        with ChrootSession(tree, apt_cache=ctx.apt_cache) as session:
            self.set_up_root(ctx, session, tree)
            self.run_hooks(ctx, session, tree)
            version = kernel_version(tree)
            initramfs = self.make_initramfs(ctx, session, tree, version, epoch)
            self.make_grub_image(session, tree, boot)
        self.collect_boot_files(tree, version, boot)
        manifest = self.clean_tree(tree)
        settle_dates(tree, epoch)
        meta = {"kernel_version": version, "package_count": len(manifest), "packages": manifest, "initramfs": initramfs}
        meta["source_date_epoch"] = epoch
        return Artefact(out, meta)

    def write_system_files(self, ctx: BuildContext, tree: Path) -> None:
        write_rendered(resolve_inside(tree, "etc/hostname"), "hostname.j2", hostname=ctx.config.hostname)
        write_rendered(resolve_inside(tree, "etc/hosts"), "hosts.j2", hostname=ctx.config.hostname)
        write_rendered(resolve_inside(tree, "etc/fstab"), "fstab.j2")

    def set_up_root(self, ctx: BuildContext, session: ChrootSession, tree: Path) -> None:
        if ctx.config.root_password_hash:
            session.run(["usermod", "--password", ctx.config.root_password_hash, "root"], label="usermod")
        else:
            session.run(["passwd", "--lock", "root"], label="passwd")
        if ctx.config.ssh_authorized_keys:
            keys = resolve_inside(tree, "root/.ssh/authorized_keys")
            write_rendered(keys, "authorized_keys.j2", mode=0o600, keys=ctx.config.ssh_authorized_keys)
            keys.parent.chmod(0o700)

    def run_hooks(self, ctx: BuildContext, session: ChrootSession, tree: Path) -> None:
        hooks = hook_files(ctx)
        staged = resolve_inside(tree, HOOKS_IN_CHROOT)
        staged.mkdir(parents=True, exist_ok=True)
        try:
            for index, hook in enumerate(hooks):
                copy = staged / f"{index:03d}-{hook.name}"
                shutil.copy2(hook, copy)
                copy.chmod(0o755)
                with LOG.step(f"Running hook {hook.name}"):
                    try:
                        session.run([f"/{HOOKS_IN_CHROOT}/{copy.name}"], label=hook.name, env={"AMBERPI_IMAGE_ID": ctx.image_id})
                    except ToolError as exc:
                        raise StageError(
                            f"hook {hook.name} failed (exit status {exc.code})",
                            where=str(hook),
                            hint="fix the hook; the last lines it printed are in the build log",
                        ) from exc
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def make_initramfs(self, ctx: BuildContext, session: ChrootSession, tree: Path, version: str, epoch: int) -> str:
        """The initrd of `version`: made by update-initramfs, or reused when its inputs are unchanged."""
        stub = resolve_inside(tree, UPDATE_INITRAMFS)
        if stub.exists():
            stub.unlink()
        session.run(["dpkg-divert", "--local", "--rename", "--remove", UPDATE_INITRAMFS])
        initrd = resolve_inside(tree, f"boot/initrd.img-{version}")
        state = resolve_inside(tree, f"{INITRAMFS_STATE}/{version}")
        key, manifest = initramfs_key(tree, version, epoch)
        cached = ctx.cache.lookup("initramfs", key)
        if cached is not None:
            LOG.detail(f"initramfs: its inputs are unchanged, reusing {cached}")
            shutil.copy2(cached / "initrd.img", initrd)
            if (cached / "state").exists():
                state.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(cached / "state", state)
            return "reused"
        # mkinitramfs clamps the archive's times to SOURCE_DATE_EPOCH: the same inputs, the same initrd.
        session.run(["update-initramfs", "-c", "-k", version], label="initramfs", env={"SOURCE_DATE_EPOCH": str(epoch)})
        with ctx.cache.staging("initramfs", key, manifest) as entry:
            shutil.copy2(initrd, entry / "initrd.img")
            if state.exists():
                shutil.copy2(state, entry / "state")
        return "built"

    def make_grub_image(self, session: ChrootSession, tree: Path, boot: Path) -> None:
        staged = resolve_inside(tree, GRUB_OUT_IN_CHROOT)
        staged.mkdir(parents=True, exist_ok=True)
        try:
            session.run(
                ["grub-mkimage", "-O", "arm64-efi", "-p", "/grub", "-o", f"/{GRUB_OUT_IN_CHROOT}/BOOTAA64.EFI", *GRUB_MODULES],
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

    def clean_tree(self, tree: Path) -> list[str]:
        """Drop what must not be baked into every device; return the package manifest."""
        manifest = run(
            ["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\\n"],
            capture=True,
            label="dpkg-query",
        ).splitlines()
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
        return sorted(manifest)
