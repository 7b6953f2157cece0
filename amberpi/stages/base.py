"""The stage contract shared by every stage module."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from amberpi.context import BuildContext


@dataclass
class Artefact:
    """A stage's output: a folder and a little metadata (saved as artefact.json)."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        (self.path / "artefact.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> Artefact:
        meta_file = path / "artefact.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        return cls(path, meta)


class Stage:
    name: ClassVar[str]
    title: ClassVar[str]
    version: ClassVar[int] = 1
    cached: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()

    def preflight(self, ctx: BuildContext) -> list[str]:
        """Problems that would stop this stage, found before any stage works."""
        return []

    def tools(self, ctx: BuildContext) -> list[str]:
        """Host tools this stage calls."""
        return []

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {}

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        raise NotImplementedError
