"""packages: install package-lists/ and the configured packages into the bootstrap tree."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.cache import copy_tree
from amberpi.context import BuildContext
from amberpi.mounts import ChrootSession, resolve_inside
from amberpi.render import render, write_rendered
from amberpi.stages.base import Artefact, Stage

UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
APT_OPTIONS = ["-o", "Dpkg::Use-Pty=0", "-o", "APT::Install-Recommends=false", "-o", "Acquire::Retries=3"]


def read_package_lists(folder: Path) -> list[str]:
    """Package names from every *.list.chroot file (live-build format: one per line, # comments)."""
    names: list[str] = []
    for path in sorted(folder.glob("*.list.chroot")):
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            names += line.split()
    return names


def wanted_packages(ctx: BuildContext) -> list[str]:
    return sorted(set(read_package_lists(ctx.layout.package_lists)) | set(ctx.config.packages))


def write_apt_sources(ctx: BuildContext, tree: Path) -> None:
    legacy = resolve_inside(tree, "etc/apt/sources.list")
    if legacy.exists():
        legacy.unlink()
    write_rendered(
        resolve_inside(tree, "etc/apt/sources.list.d/debian.sources"),
        "debian.sources.j2",
        suite=ctx.config.suite,
        mirror=ctx.config.mirror,
        security_mirror=ctx.config.security_mirror,
    )


class PackagesStage(Stage):
    name = "packages"
    title = "Installing {count} packages (initramfs deferred)"
    version = 1
    cached = True
    needs = ("bootstrap",)

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {
            "packages": wanted_packages(ctx),
            "security_mirror": ctx.config.security_mirror,
            "templates": render("debian.sources.j2", suite="S", mirror="M", security_mirror="X"),
        }

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "tree"
        copy_tree(upstream["bootstrap"].path / "tree", tree)
        write_apt_sources(ctx, tree)
        with ChrootSession(tree, apt_cache=ctx.apt_cache) as session:
            session.run(["dpkg-divert", "--local", "--rename", "--add", UPDATE_INITRAMFS])
            write_rendered(resolve_inside(tree, UPDATE_INITRAMFS), "update-initramfs.j2", mode=0o755)
            (tree / "etc/dpkg/dpkg.cfg.d/amberpi-unsafe-io").write_text("force-unsafe-io\n")
            session.run(["apt-get", *APT_OPTIONS, "update"], label="apt")
            session.run(
                ["eatmydata", "apt-get", *APT_OPTIONS, "-y", "install", *wanted_packages(ctx)],
                label="apt",
                where="stage packages",
                hint="check the names in package-lists/ and `packages:`; `apt-cache policy NAME` on a Debian host tells whether it exists",
            )
            session.run(["apt-get", "clean"], label="apt")
        (tree / "etc/dpkg/dpkg.cfg.d/amberpi-unsafe-io").unlink()
        return Artefact(out, {"packages": wanted_packages(ctx)})
