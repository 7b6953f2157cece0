"""The `release` verb: each named board built for download, then one Raspberry Pi Imager list.

A release build is an ordinary build (the same backend, pipeline and cache) with
`compress: xz`; the release stage writes every artefact (amberpi/stages/release.py). This
module only loops over the boards and combines their Imager lists into one
(amberpi/imager.py COMBINED). `--collect` builds nothing and combines the lists already in
the output folder: the release workflow builds each board on its own runner, then
collects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from amberpi import imager
from amberpi.cache import locked
from amberpi.config import Config, list_boards, load_config
from amberpi.errors import UsageError
from amberpi.log import LOG
from amberpi.pipeline import OUTPUT_LOCK, check_output_dir
from amberpi.stages.release import ReleaseNames

# What a release build sets, whatever the config says.
RELEASE_SETTINGS = {"compress": "xz"}


def release_configs(config_file: str | None, overrides: dict[str, Any], boards: Sequence[str]) -> list[Config]:
    """One resolved config per board (default: every board), each built for download."""
    chosen = list(boards) or list(list_boards())
    repeated = sorted({board for board in chosen if chosen.count(board) > 1})
    if repeated:
        raise UsageError(f"--board {', '.join(repeated)} given twice")
    configs = [load_config(config_file, {**overrides, "board": board, **RELEASE_SETTINGS}) for board in chosen]
    names = [config.name for config in configs]
    if len(set(names)) < len(names):
        raise UsageError(
            f"every board's image would be called {names[0]}: image_name names one image",
            hint="leave image_name empty to release several boards (each is then amberpi-<board>)",
        )
    clash = [name for name in names if ReleaseNames(name).imager == imager.COMBINED]
    if clash:
        raise UsageError(
            f"an image called {clash[0]} would overwrite the combined Imager list {imager.COMBINED}", hint="choose another image_name"
        )
    outputs = {Path(config.output).resolve() for config in configs}
    if len(outputs) > 1:
        raise UsageError("the boards would be released into different folders", hint="give one --output")
    return configs


def combine_lists(output: Path, names: Sequence[str] | None = None) -> Path | None:
    """The combined Imager list of the boards `names` (None: every board's list in `output`);
    None when no board has one (no Raspberry Pi board among them)."""
    check_output_dir(output)
    with locked(output / OUTPUT_LOCK, f"the output folder {output}"):
        if names is None:
            sources = imager.board_lists(output)
        else:
            sources = [output / ReleaseNames(name).imager for name in names if (output / ReleaseNames(name).imager).is_file()]
        if not sources:
            (output / imager.COMBINED).unlink(missing_ok=True)
            return None
        return imager.combine(output, sources)


def release(configs: Sequence[Config], build: Callable[[Config], int]) -> int:
    """Build each board with `build` (the backend's), stop at the first failure, then combine."""
    for config in configs:
        LOG.note(f"release: {config.board} ({len(configs)} board{'s' if len(configs) != 1 else ''}: {', '.join(c.board for c in configs)})")
        code = build(config)
        if code != 0:
            return code
    output = Path(configs[0].output).resolve()
    combined = combine_lists(output, [config.name for config in configs])
    if combined is None:
        LOG.note("release: no board with Raspberry Pi Imager device tags, so no Imager list")
    else:
        LOG.note(f"release: Imager list {combined}")
    return 0


def collect(output: Path) -> int:
    """Combine the boards' Imager lists already in `output` (the release workflow's last job)."""
    combined = combine_lists(output.resolve())
    if combined is None:
        raise UsageError(f"no board's Imager list (*{imager.SUFFIX}) in {output}", hint="release a Raspberry Pi board into it first")
    LOG.note(f"release: Imager list {combined} ({len(imager.read_entries(combined))} images)")
    return 0
