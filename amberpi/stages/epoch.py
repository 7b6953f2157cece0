"""epoch: the build's one timestamp, for every file system and tool that dates what it writes.

Configured (source_date_epoch, SOURCE_DATE_EPOCH), or else the date of the newest
installed package: the same package versions give the same timestamp, and so the
same image. A stage of its own so that every stage that dates its output reads it
here, and not from another stage's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.context import BuildContext
from amberpi.errors import StageError
from amberpi.stages.base import Artefact, Stage


def newest_package_date(tree: Path) -> int:
    """The date of the newest installed package.

    dpkg keeps each packaged file's mtime, which Debian clamps to the package's
    changelog date, so the same package versions give the same timestamp.
    """
    dates = [int(p.lstat().st_mtime) for p in (tree / "usr/share/doc").glob("*/changelog.Debian.gz")]
    if not dates:
        raise StageError(
            "no package changelog to date the build by",
            where=f"stage epoch, {tree}/usr/share/doc",
            hint="set source_date_epoch in the config, or SOURCE_DATE_EPOCH",
        )
    return max(dates)


@dataclass(frozen=True)
class EpochInputs:
    configured: int  # 0: the newest installed package's date


class EpochStage(Stage[EpochInputs]):
    name = "epoch"
    cached = True
    needs = ("packages",)

    def inputs(self, build: BuildContext) -> EpochInputs:
        return EpochInputs(build.config.source_date_epoch)

    def title(self, inputs: EpochInputs) -> str:
        return f"Dating the build ({'source_date_epoch' if inputs.configured else 'newest installed package'})"

    def run(self, inputs: EpochInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        epoch = inputs.configured or newest_package_date(upstream["packages"].folder / "tree")
        return Artefact(out, {"source_date_epoch": epoch})
