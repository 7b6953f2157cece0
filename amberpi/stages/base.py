"""The stage contract shared by every stage module.

A stage turns the build context into a frozen inputs object (`inputs()`, the only
place that sees the context), and `run(inputs, upstream, out)` builds from that
object and its upstream artefacts alone. The cache key is the hash of the inputs
object chained to the upstream keys, so what is keyed is, by construction, what
is read. Fields marked `resource()` say where to work (a shared .deb cache, the
cache store itself), never what to build: they are left out of the key.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from amberpi.digests import digest_paths

if TYPE_CHECKING:
    from amberpi.context import BuildContext

FACTS_FILE = "facts.json"


def resource() -> Any:
    """An input field that says where to work, not what to build: not part of the cache key."""
    return field(metadata={"resource": True}, compare=False)


def unkeyed(why: str) -> Any:
    """An input field that cannot change what a successful run makes (a time limit, say): left
    out of the key like a resource(); `why` says why, where the field is declared."""
    return field(metadata={"resource": True, "unkeyed": why}, compare=False)


def secret() -> Any:
    """An input field keyed by its digest: a cache manifest must never hold it in clear."""
    return field(metadata={"secret": True}, repr=False)


@dataclass(frozen=True)
class FileInput:
    """A file a stage reads: keyed by name and content, read from `path`."""

    name: str
    digest: str
    path: Path = resource()

    @classmethod
    def of(cls, path: Path) -> FileInput:
        return cls(path.name, digest_paths([path]), path)


def key_value(value: Any) -> Any:
    """The JSON a cache key is made of; a bare Path is refused (key a digest, or mark it a resource)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for spec in dataclasses.fields(value):
            if spec.metadata.get("resource"):
                continue
            item = getattr(value, spec.name)
            if spec.metadata.get("secret"):
                out[spec.name] = hashlib.sha256(json.dumps(key_value(item)).encode()).hexdigest()
            else:
                out[spec.name] = key_value(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [key_value(item) for item in value]
    if isinstance(value, dict):
        return {str(k): key_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{type(value).__name__} cannot be part of a cache key: key its content, or declare the field a resource()")


@dataclass(frozen=True)
class Artefact:
    """A stage's output: its folder, and facts about it (saved beside it as facts.json).

    `path` is None when only the facts are at hand: a later stage was cached, so this
    stage's output was not needed, and its facts come from the build that made them.
    """

    path: Path | None
    facts: Mapping[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        assert self.path is not None
        (self.path / FACTS_FILE).write_text(json.dumps(dict(self.facts), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> Artefact:
        facts_file = path / FACTS_FILE
        return cls(path, json.loads(facts_file.read_text()) if facts_file.exists() else {})

    @property
    def folder(self) -> Path:
        """The output folder; asking for it where only facts were needed is a pipeline bug."""
        if self.path is None:
            raise RuntimeError("this stage's output was not resolved: declare it in `needs`, not `uses_facts`")
        return self.path


InputsT = TypeVar("InputsT")


class Stage(Generic[InputsT]):
    name: ClassVar[str]
    # Bump when the code changes the output for the same inputs.
    version: ClassVar[int] = 1
    # Keep the output in the cache (large or slow to make); otherwise built each time.
    cached: ClassVar[bool] = False
    # Stages whose output folders run() reads.
    needs: ClassVar[tuple[str, ...]] = ()
    # Stages whose facts (not outputs) run() reads.
    uses_facts: ClassVar[tuple[str, ...]] = ()
    # Host tools run() calls (each in amberpi/tools.py's table).
    tools: ClassVar[tuple[str, ...]] = ()

    def inputs(self, build: BuildContext) -> InputsT:
        """Everything run() may read from the build, as a frozen dataclass."""
        raise NotImplementedError

    def title(self, inputs: InputsT) -> str:
        """The progress line: -ing verb, object, detail."""
        raise NotImplementedError

    def preflight(self, inputs: InputsT) -> list[str]:
        """Problems that would stop this stage, found before any stage works."""
        return []

    def run(self, inputs: InputsT, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        raise NotImplementedError


def stage_inputs_key(stage: Stage[Any], inputs: Any) -> dict[str, Any]:
    """The key fields of a stage's inputs object."""
    if not dataclasses.is_dataclass(inputs):
        raise TypeError(f"stage {stage.name}: inputs() must return a dataclass instance")
    data: dict[str, Any] = key_value(inputs)
    return data
