"""bootstrap: a minimal arm64 Debian tree from the archive, via debootstrap."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi.context import ARCH, BuildContext
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage

# Packages debootstrap adds to minbase: apt must be able to verify and fetch.
BOOTSTRAP_INCLUDE = ("ca-certificates", "eatmydata")


def debootstrap_version() -> str:
    try:
        return run(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"], capture=True, label="dpkg-query").strip()
    except Exception:  # noqa: BLE001 - an unknown version only weakens the cache key
        return "unknown"


class BootstrapStage(Stage):
    name = "bootstrap"
    title = "Debootstrapping {suite} arm64 (minbase)"
    version = 1
    cached = True

    def tools(self, ctx: BuildContext) -> list[str]:
        return ["debootstrap", "chroot"]

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {
            "suite": ctx.config.suite,
            "mirror": ctx.config.mirror,
            "arch": ARCH,
            "include": list(BOOTSTRAP_INCLUDE),
            "debootstrap": debootstrap_version(),
        }

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        tree = out / "tree"
        ctx.apt_cache.mkdir(parents=True, exist_ok=True)
        argv = [
            "debootstrap",
            f"--arch={ARCH}",
            "--variant=minbase",
            f"--include={','.join(BOOTSTRAP_INCLUDE)}",
            f"--cache-dir={ctx.apt_cache}",
            ctx.config.suite,
            str(tree),
            ctx.config.mirror,
        ]
        run(
            argv,
            label="debootstrap",
            where=f"stage bootstrap, mirror {ctx.config.mirror}",
            hint="check that the mirror is reachable and serves this suite for arm64 (--mirror URL)",
            tool_log=tree / "debootstrap" / "debootstrap.log",
        )
        return Artefact(out, {"created": int(time.time())})
