"""packages: install package-lists/ and the configured packages into the bootstrap tree."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.archive import Suite, archive_state
from amberpi.chroot import ChrootSession
from amberpi.config import PACKAGE
from amberpi.context import ARCH, BuildContext
from amberpi.digests import digest_paths
from amberpi.render import TEMPLATES_DIR, write_rendered
from amberpi.stages.base import Artefact, Stage, resource
from amberpi.tools import EMULATION_TOOLS
from amberpi.trees import copy_tree, resolve_inside

UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
APT_OPTIONS = ["-o", "Dpkg::Use-Pty=0", "-o", "APT::Install-Recommends=false", "-o", "Acquire::Retries=3"]
LIST_SUFFIX = ".list.chroot"
TEMPLATES = ("debian.sources.j2", "update-initramfs.j2")
# The components debian.sources.j2 names.
COMPONENTS = ("main", "non-free-firmware")


def package_list_entries(path: Path) -> list[tuple[int, str]]:
    """(line number, name) of each package in a live-build style list: one or more per line, # comments."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entries += [(number, name) for name in line.split("#", 1)[0].split()]
    return entries


def apt_suites(suite: str, mirror: str, security_mirror: str) -> tuple[Suite, ...]:
    """The suites debian.sources.j2 names, which apt installs from."""
    if suite == "sid":
        return (Suite(mirror, suite, COMPONENTS),)
    suites = (Suite(mirror, suite, COMPONENTS), Suite(mirror, f"{suite}-updates", COMPONENTS))
    return (*suites, Suite(security_mirror, f"{suite}-security", COMPONENTS)) if security_mirror else suites


def package_lists(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{LIST_SUFFIX}"))


@dataclass(frozen=True)
class PackagesInputs:
    packages: tuple[str, ...]
    suite: str
    mirror: str
    security_mirror: str
    templates: str
    # The suites' Packages indexes as the mirrors serve them now (amberpi/archive.py): an update rebuilds.
    archive: tuple[str, ...]
    apt_cache: Path = resource()
    # Only to point at the offending line; their names are keyed in `packages`.
    lists: tuple[Path, ...] = resource()


class PackagesStage(Stage[PackagesInputs]):
    name = "packages"
    cached = True
    needs = ("bootstrap",)
    tools = ("chroot", *EMULATION_TOOLS)

    def inputs(self, build: BuildContext) -> PackagesInputs:
        lists = tuple(package_lists(build.layout.package_lists))
        names = {name for path in lists for _, name in package_list_entries(path)} | set(build.config.packages)
        c = build.config
        return PackagesInputs(
            tuple(sorted(names)),
            c.suite,
            c.mirror,
            c.security_mirror,
            digest_paths([TEMPLATES_DIR / name for name in TEMPLATES]),
            archive_state(build.cache, self.name, apt_suites(c.suite, c.mirror, c.security_mirror), ARCH),
            build.apt_cache,
            lists,
        )

    def title(self, inputs: PackagesInputs) -> str:
        return f"Installing {len(inputs.packages)} packages (initramfs deferred)"

    def preflight(self, inputs: PackagesInputs) -> list[str]:
        """Every entry must be a package name: apt would take `--allow-unauthenticated` for an option."""
        return [
            f"{path}:{number}: {name!r} is not a Debian package name"
            for path in inputs.lists
            for number, name in package_list_entries(path)
            if not re.fullmatch(PACKAGE.regex, name)
        ]

    def run(self, inputs: PackagesInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "tree"
        copy_tree(upstream["bootstrap"].folder / "tree", tree)
        self.write_apt_sources(inputs, tree)
        unsafe_io = tree / "etc/dpkg/dpkg.cfg.d/amberpi-unsafe-io"
        with ChrootSession(tree, apt_cache=inputs.apt_cache) as session:
            session.run(["dpkg-divert", "--local", "--rename", "--add", UPDATE_INITRAMFS])
            write_rendered(resolve_inside(tree, UPDATE_INITRAMFS), "update-initramfs.j2", mode=0o755)
            # The tree is thrown away if this stage fails: no fsync per file under emulation.
            unsafe_io.write_text("force-unsafe-io\n")
            session.run(["apt-get", *APT_OPTIONS, "update"], label="apt")
            session.run(
                ["eatmydata", "apt-get", *APT_OPTIONS, "-y", "install", "--", *inputs.packages],
                label="apt",
                where="stage packages",
                hint="check the names in package-lists/ and `packages:`; `apt-cache policy NAME` on a Debian host tells whether it exists",
            )
            session.run(["apt-get", "clean"], label="apt")
        unsafe_io.unlink()
        return Artefact(out, {"packages": list(inputs.packages)})

    def write_apt_sources(self, inputs: PackagesInputs, tree: Path) -> None:
        legacy = resolve_inside(tree, "etc/apt/sources.list")
        if legacy.exists():
            legacy.unlink()
        write_rendered(
            resolve_inside(tree, "etc/apt/sources.list.d/debian.sources"),
            "debian.sources.j2",
            suite=inputs.suite,
            mirror=inputs.mirror,
            security_mirror=inputs.security_mirror,
        )
