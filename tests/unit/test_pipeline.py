"""The pipeline with fake stages: built, cached, skipped, facts of skipped stages, strict mode, preflight, failure."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from amberpi import pipeline as pipeline_module
from amberpi.cache import Incremental
from amberpi.config import Config
from amberpi.context import BuildContext
from amberpi.errors import CacheError, OutOfRoomError, StageError, ToolError, UsageError
from amberpi.pipeline import Pipeline
from amberpi.stages.base import Artefact, Stage

pytestmark = pytest.mark.usefixtures("quiet_log")

# What the fake stages read from "the build": tests change it between builds.
KNOBS: dict[str, Any] = {}
RUNS: list[str] = []


@dataclass(frozen=True)
class Knob:
    value: str


class Base(Stage[Knob]):
    def inputs(self, build: BuildContext) -> Knob:
        return Knob(str(KNOBS.get(self.name, "1")))

    def title(self, inputs: Knob) -> str:
        return f"Making {self.name} ({inputs.value})"

    def preflight(self, inputs: Knob) -> list[str]:
        return [f"{self.name} refuses {inputs.value}"] if inputs.value == "bad" else []


class Tree(Base):
    """Slow to make, so cached: a folder with one file."""

    name = "tree"
    cached = True

    def run(self, inputs: Knob, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        RUNS.append(self.name)
        (out / "tree.txt").write_text(f"tree {inputs.value}\n")
        if inputs.value == "tool-fills-disk":  # as mksquashfs does: says so, exits 1, removes its output
            raise ToolError(["mksquashfs", "rootfs", "fs.squashfs"], 1, ["Write failed because No space left on device"], None)
        if inputs.value == "python-fills-disk":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "tree.txt"))
        return Artefact(out, {"made_from": inputs.value})


class Custom(Base):
    """Not cached: reads Tree's output, states a fact."""

    name = "custom"
    needs = ("tree",)

    def run(self, inputs: Knob, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        RUNS.append(self.name)
        if inputs.value == "explode":
            raise StageError("custom exploded")
        text = (upstream["tree"].folder / "tree.txt").read_text() + f"custom {inputs.value}\n"
        (out / "custom.txt").write_text(text)
        return Artefact(out, {"version": f"v{inputs.value}"})


class Seal(Base):
    """Cached: makes Custom unnecessary once it is in the cache."""

    name = "seal"
    cached = True
    needs = ("custom",)

    def run(self, inputs: Knob, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        RUNS.append(self.name)
        (out / "sealed.txt").write_text((upstream["custom"].folder / "custom.txt").read_text())
        return Artefact(out)


class Publish(Base):
    """The last stage: reads Seal's output and Custom's facts (only), names the files to publish."""

    name = "publish"
    needs = ("seal",)
    uses_facts = ("custom",)

    def run(self, inputs: Knob, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        RUNS.append(self.name)
        image = out / "fake.img"
        image.write_text((upstream["seal"].folder / "sealed.txt").read_text() + upstream["custom"].facts["version"] + "\n")
        (out / "fake.img.sha256").write_text("sum\n")
        return Artefact(out, {"publish": ["fake.img", "fake.img.sha256"], "summary": "fake"})


def fake_stages() -> list[Stage[Any]]:
    return [Tree(), Custom(), Seal(), Publish()]


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """build(incremental=...) runs the fake pipeline; returns (statuses, published image text)."""
    KNOBS.clear()
    RUNS.clear()
    monkeypatch.setattr(pipeline_module, "WORKSPACE_ROOT", tmp_path / "work")
    config = Config(board="qemu", output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), image_id="1a2b3c4d")

    def run(incremental: Incremental = Incremental.yes) -> tuple[dict[str, str], str]:
        RUNS.clear()
        result = Pipeline(config, incremental=incremental, stages=fake_stages()).build()
        return {r.name: r.status for r in result.records}, result.image.read_text()

    return run


def test_first_build_builds_everything_and_publishes(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    statuses, image = build()
    assert statuses == {"tree": "built", "custom": "built", "seal": "built", "publish": "built"}
    assert RUNS == ["tree", "custom", "seal", "publish"], "stages run top to bottom"
    assert image == "tree 1\ncustom 1\nv1\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".amberpi.lock",
        "amberpi-qemu.build.log",
        "fake.img",
        "fake.img.sha256",
    ]
    assert list((tmp_path / "work").iterdir()) == [], "the workspace is removed"


def test_a_cached_stage_makes_its_upstream_unnecessary_and_facts_come_from_the_cache(build) -> None:  # type: ignore[no-untyped-def]
    build()
    statuses, image = build()
    assert statuses == {"tree": "skipped", "custom": "skipped", "seal": "cached", "publish": "built"}
    assert RUNS == ["publish"]
    assert image.endswith("v1\n"), "custom's fact, recorded by the build that made it"


def test_the_progress_line_of_a_cached_stage_says_how_old_it_is(build, tmp_path: Path, quiet_log) -> None:  # type: ignore[no-untyped-def]
    """Before: `cached (key)` only: nothing told a warm cache's trees were weeks old."""
    import os
    import time

    build()
    (entry,) = (tmp_path / "cache" / "seal").glob("*/key.json")
    made = time.time() - 3 * 86400 - 600
    os.utime(entry, (made, made))
    quiet_log.truncate(0)
    build()
    assert "seal        cached, 3 days old (" in quiet_log.getvalue()


def test_an_input_change_rebuilds_that_stage_and_everything_after_it(build) -> None:  # type: ignore[no-untyped-def]
    build()
    KNOBS["custom"] = "2"
    statuses, image = build()
    assert statuses == {"tree": "cached", "custom": "built", "seal": "built", "publish": "built"}
    assert image == "tree 1\ncustom 2\nv2\n"
    KNOBS["tree"] = "3"
    statuses, _ = build()
    assert set(statuses.values()) == {"built"}


def test_missing_facts_of_a_skipped_stage_are_made_again(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build()
    for facts in (tmp_path / "cache" / "facts" / "custom").iterdir():
        facts.unlink()
    statuses, image = build()
    assert statuses["seal"] == "cached" and statuses["custom"] == "built" and statuses["tree"] == "cached"
    assert image.endswith("v1\n")


def test_strict_mode_refuses_to_build_a_cached_stage(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CacheError) as error:
        build(Incremental.strict)
    assert "stage seal is not cached" in error.value.what, "the schedule is decided from the last stage back"
    assert RUNS == [], "nothing ran: the schedule is decided first"
    build()
    statuses, _ = build(Incremental.strict)
    assert statuses["seal"] == "cached"
    KNOBS["seal"] = "changed"
    with pytest.raises(CacheError) as error:
        build(Incremental.strict)
    assert "stage seal is not cached" in error.value.what and "inputs.value" in str(error.value.where)


def test_incremental_no_builds_everything_again(build) -> None:  # type: ignore[no-untyped-def]
    build()
    statuses, _ = build(Incremental.no)
    assert set(statuses.values()) == {"built"}


def test_preflight_problems_come_before_any_work(build) -> None:  # type: ignore[no-untyped-def]
    KNOBS["seal"] = "bad"
    KNOBS["publish"] = "bad"
    with pytest.raises(UsageError) as error:
        build()
    assert "seal refuses bad" in error.value.what and "publish refuses bad" in error.value.what
    assert RUNS == []


def test_missing_host_tool_names_its_package(build, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(Seal, "tools", ("mksquashfs",))
    monkeypatch.setattr(pipeline_module, "missing_tools", lambda tools: list(tools))
    with pytest.raises(UsageError) as error:
        build()
    assert "stage seal: host tool `mksquashfs` is missing (install the Debian package `squashfs-tools`)" in error.value.what


def test_a_failing_stage_publishes_nothing_and_leaves_no_partial_cache_entry(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build()
    KNOBS["custom"] = "explode"
    with pytest.raises(StageError):
        build()
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "fake.img" in out and not [name for name in out if name.endswith(".partial")]
    assert (tmp_path / "out" / "fake.img").read_text().endswith("v1\n"), "the earlier image is untouched"
    seal_entries = [p for p in (tmp_path / "cache" / "seal").iterdir()]
    assert all((entry / "key.json").exists() for entry in seal_entries), "no partial entry"
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("how", ["tool-fills-disk", "python-fills-disk"])
def test_a_stage_that_fills_a_disk_says_which_and_keeps_the_cache(build, tmp_path: Path, how: str) -> None:  # type: ignore[no-untyped-def]
    build()
    KNOBS["tree"] = how
    with pytest.raises(OutOfRoomError) as raised:
        build()
    text = raised.value.render()
    assert "error: stage tree ran out of room: No space left on device" in text
    assert f"where: the cache folder {tmp_path / 'cache'} (" in text and "MiB free now)" in text
    assert f"the workspace folder {tmp_path / 'work'}" in text
    assert "--cache-dir" in text and "clean -f" in text
    if how == "tool-fills-disk":
        assert "the stage's own error: `mksquashfs rootfs fs.squashfs` failed (exit status 1): Write failed because No space" in text
    tree_entries = list((tmp_path / "cache" / "tree").iterdir())
    assert tree_entries and all((entry / "key.json").exists() for entry in tree_entries), "the earlier entry kept, no half-made one"
    del KNOBS["tree"]
    assert build()[0]["seal"] == "cached", "the cache serves the next build"


def test_keys_chain_and_cache_manifests_hold_no_secret(tmp_path: Path) -> None:
    """The key of a stage is its inputs object's key fields, chained to its upstream keys."""
    config = Config(board="qemu", output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), image_id="1a2b3c4d")
    first = Pipeline(config, stages=fake_stages())
    from amberpi.cache import Cache

    first.make_plan(first.context(tmp_path, Cache(tmp_path / "cache", Incremental.yes)))
    KNOBS["tree"] = "other"
    second = Pipeline(config, stages=fake_stages())
    second.make_plan(second.context(tmp_path, Cache(tmp_path / "cache", Incremental.yes)))
    KNOBS.clear()
    assert all(first.plan[name].key != second.plan[name].key for name in ("tree", "custom", "seal", "publish"))
    assert first.plan["seal"].manifest["upstream"] == {"custom": first.plan["custom"].key}
    assert json.loads(json.dumps(first.plan["publish"].manifest))["upstream"] == {
        "seal": first.plan["seal"].key,
        "custom": first.plan["custom"].key,
    }


def test_a_killed_builds_workspace_is_reaped_a_live_one_kept(tmp_path: Path) -> None:
    """Before: a SIGKILLed build left its workspace (and the chroot's mounts in it) for good."""
    import fcntl

    from amberpi.pipeline import OWNER_FILE, reap_dead_workspaces

    dead, alive, other = tmp_path / "amberpi-dead", tmp_path / "amberpi-alive", tmp_path / "amberpi-base-x"
    for folder in (dead, alive, other):
        (folder / "customize" / "rootfs").mkdir(parents=True)
    (dead / OWNER_FILE).write_text("")
    with (alive / OWNER_FILE).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert reap_dead_workspaces(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
