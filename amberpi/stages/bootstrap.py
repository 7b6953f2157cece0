"""bootstrap: a minimal arm64 Debian tree from the archive, via debootstrap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.archive import Suite, archive_state
from amberpi.context import ARCH, BuildContext
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage, resource
from amberpi.tools import EMULATION_TOOLS
from amberpi.trees import forget_build_host

# Packages debootstrap adds to minbase: apt must be able to verify and fetch.
BOOTSTRAP_INCLUDE = ("ca-certificates", "eatmydata")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# debootstrap installs from these components only.
BOOTSTRAP_COMPONENTS = ("main",)


def debootstrap_version() -> str:
    try:
        return run(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"], capture=True, label="dpkg-query").strip()
    except Exception:  # noqa: BLE001 - an unknown version only weakens the cache key
        return "unknown"


@dataclass(frozen=True)
class BootstrapInputs:
    suite: str
    mirror: str
    arch: str
    include: tuple[str, ...]
    debootstrap: str
    # The suite's Packages index as the mirror serves it now (amberpi/archive.py): a point release rebuilds.
    archive: tuple[str, ...]
    apt_cache: Path = resource()


class BootstrapStage(Stage[BootstrapInputs]):
    name = "bootstrap"
    # 2: the build host's /etc/hostname and /etc/resolv.conf no longer stay in the tree.
    version = 2
    cached = True
    tools = ("debootstrap", "chroot", KEYRING, *EMULATION_TOOLS)

    def inputs(self, build: BuildContext) -> BootstrapInputs:
        c = build.config
        archive = archive_state(build.cache, self.name, (Suite(c.mirror, c.suite, BOOTSTRAP_COMPONENTS),), ARCH)
        return BootstrapInputs(c.suite, c.mirror, ARCH, BOOTSTRAP_INCLUDE, debootstrap_version(), archive, build.apt_cache)

    def title(self, inputs: BootstrapInputs) -> str:
        return f"Debootstrapping {inputs.suite} {inputs.arch} (minbase)"

    def run(self, inputs: BootstrapInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "tree"
        inputs.apt_cache.mkdir(parents=True, exist_ok=True)
        argv = [
            "debootstrap",
            f"--arch={inputs.arch}",
            "--variant=minbase",
            f"--include={','.join(inputs.include)}",
            f"--cache-dir={inputs.apt_cache}",
            inputs.suite,
            str(tree),
            inputs.mirror,
        ]
        run(
            argv,
            label="debootstrap",
            where=f"stage bootstrap, mirror {inputs.mirror}",
            hint="check that the mirror is reachable and serves this suite for arm64 (--mirror URL)",
            tool_log=tree / "debootstrap" / "debootstrap.log",
        )
        # debootstrap copies them from this host: they must not travel into the cache and every image.
        forget_build_host(tree)
        return Artefact(out)
