"""BuildContext: what the pipeline knows about one build. Data only.

Only a stage's `inputs()` reads it: each stage turns it into the frozen inputs
object its `run()` gets, so what a stage reads is exactly what its cache key holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from amberpi.cache import Cache
from amberpi.config import REPO_ROOT, Board, Config
from amberpi.identity import ImageIdentity

ARCH = "arm64"


@dataclass(frozen=True)
class Layout:
    """Where the project's own inputs live."""

    repo: Path = REPO_ROOT

    @property
    def hooks(self) -> Path:
        return self.repo / "hooks"

    @property
    def includes(self) -> Path:
        return self.repo / "includes"

    @property
    def package_lists(self) -> Path:
        return self.repo / "package-lists"

    @property
    def device(self) -> Path:
        return self.repo / "amberpi" / "device"


@dataclass
class StageRecord:
    """How one stage's artefact was obtained in this build."""

    name: str
    status: str = "pending"  # built | cached | skipped (not needed: a later stage was cached)
    seconds: float = 0.0
    key: str = ""


@dataclass
class RunRecord:
    """The build as it happens: filled in by the pipeline, read by the release stage's report."""

    stages: list[StageRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class BuildContext:
    config: Config
    board: Board
    workspace: Path
    cache: Cache
    output_dir: Path
    backend: str = "native"
    layout: Layout = Layout()
    run_record: RunRecord = field(default_factory=RunRecord)

    @property
    def apt_cache(self) -> Path:
        """Host-side .deb cache shared by every build of this suite."""
        return self.cache.root / "debs" / f"{self.config.suite}-{ARCH}"

    @property
    def identity(self) -> ImageIdentity:
        return ImageIdentity(self.config.image_id)
