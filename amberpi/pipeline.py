"""The build, top to bottom: plan every stage, check them all, then reuse or run each in order.

The pipeline knows stages only through the contract (amberpi/stages/base.py): it
asks each for its inputs, keys them, reports every preflight problem before any
work, resolves the last stage's artefact (building or reusing what it needs), and
publishes the files that stage names into the output folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amberpi.cache import Cache, Incremental, locked, stage_key
from amberpi.config import Config, load_board
from amberpi.context import BuildContext, RunRecord, StageRecord
from amberpi.errors import CacheError, OutOfRoomError, OutputError, ToolError, UsageError, cleanup_after, describe, ran_out_of_room
from amberpi.log import LOG, format_age, format_duration
from amberpi.stages import STAGES
from amberpi.stages.base import Artefact, Stage, stage_inputs_key
from amberpi.tools import missing_tools, package_of
from amberpi.trees import move_file, remove_tree

WORKSPACE_ROOT = Path("/var/tmp")
OUTPUT_LOCK = ".amberpi.lock"
ROOM_HINT = (
    "free space in the full one (`python3 build.py clean -f` deletes the whole cache), or choose another cache folder "
    "with --cache-dir; what the cache held before is kept, the stage's half-made files were removed"
)
OUTPUT_ROOM_HINT = "free space there or choose another folder with --output; the files there are as they were"


@dataclass
class PlannedStage:
    stage: Stage[Any]
    inputs: Any
    key: str
    manifest: dict[str, Any]
    record: StageRecord


@dataclass
class BuildResult:
    image: Path
    report: Path
    records: list[StageRecord]


def check_room(output: Path, files: list[Path]) -> None:
    """Fail before writing anything when the files (their allocated blocks) do not fit in output."""
    if not files or files[0].stat().st_dev == output.stat().st_dev:
        return  # renamed in place: no room needed
    needed = sum(path.stat().st_blocks * 512 for path in files)
    stat = os.statvfs(output)
    free = stat.f_bavail * stat.f_frsize
    if needed > free:
        raise OutputError(
            f"the output folder has {free / 2**20:.0f} MiB free; the image and its files need {needed / 2**20:.0f} MiB",
            where=str(output),
            hint=OUTPUT_ROOM_HINT,
        )


def check_output_dir(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {output}: {exc.strerror}", hint="choose another with --output") from None
    probe = output / f".amberpi-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"the output folder {output} is not writable: {exc.strerror}", hint="choose another with --output") from None


OWNER_FILE = ".owner"


def reap_dead_workspaces(root: Path) -> list[Path]:
    """Workspaces of builds killed without a chance to clean up (SIGKILL, the OOM killer, a
    cancelled CI job): their chroot mounts are released and the folders removed. A live build
    holds its workspace's owner lock, so its workspace is never touched."""
    reaped = []
    for path in sorted(root.glob("amberpi-*")):
        owner = path / OWNER_FILE
        if not owner.is_file():
            continue
        with owner.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            remove_tree(path)
        reaped.append(path)
    return reaped


def host_tools(stages: list[Stage[Any]] = STAGES) -> list[str]:
    """Every host tool the stages declare: what the host must have to build."""
    return sorted({tool for stage in stages for tool in stage.tools})


class Pipeline:
    def __init__(
        self,
        config: Config,
        *,
        incremental: Incremental = Incremental.yes,
        keep_workspace: bool = False,
        backend: str = "native",
        stages: list[Stage[Any]] = STAGES,
    ) -> None:
        self.config = config
        self.board = load_board(config.board)
        self.incremental = incremental
        self.keep_workspace = keep_workspace
        self.backend = backend
        self.stages = {stage.name: stage for stage in stages}
        self.output_dir = Path(config.output).resolve()
        self.run_record = RunRecord()
        self.plan: dict[str, PlannedStage] = {}
        self.artefacts: dict[str, Artefact] = {}
        self.timings: dict[str, float] = {}
        self.actions: dict[str, str] = {}

    # --- planning ------------------------------------------------------------------------

    def context(self, workspace: Path, cache: Cache) -> BuildContext:
        return BuildContext(
            config=self.config,
            board=self.board,
            workspace=workspace,
            cache=cache,
            output_dir=self.output_dir,
            backend=self.backend,
            run_record=self.run_record,
        )

    def make_plan(self, build: BuildContext) -> None:
        """Each stage's inputs and key, in order: a key chains the keys of what the stage reads."""
        for name, stage in self.stages.items():
            inputs = stage.inputs(build)
            upstream = {need: self.plan[need].key for need in (*stage.needs, *stage.uses_facts)}
            key, manifest = stage_key(name, stage.version, stage_inputs_key(stage, inputs), upstream)
            record = StageRecord(name, key=key)
            self.plan[name] = PlannedStage(stage, inputs, key, manifest, record)
        self.run_record.stages = [planned.record for planned in self.plan.values()]

    def preflight(self) -> None:
        """Every stage's problems, missing host tools included, all at once, before any work."""
        problems = []
        for name, planned in self.plan.items():
            for tool in missing_tools(planned.stage.tools):
                problems.append(f"stage {name}: host tool `{tool}` is missing (install the Debian package `{package_of(tool)}`)")
            problems += [f"stage {name}: {problem}" for problem in planned.stage.preflight(planned.inputs)]
        if problems:
            raise UsageError("preflight found problems:\n  - " + "\n  - ".join(problems), hint="fix them, then build again")

    def validate(self) -> None:
        """Config, host and inputs checks only: nothing is built or written."""
        check_output_dir(self.output_dir)
        self.make_plan(self.context(WORKSPACE_ROOT, Cache(Path(self.config.cache_dir), self.incremental)))
        self.preflight()

    # --- building ------------------------------------------------------------------------

    def build(self) -> BuildResult:
        check_output_dir(self.output_dir)
        cache = Cache(Path(self.config.cache_dir), self.incremental)
        with locked(self.output_dir / OUTPUT_LOCK, f"the output folder {self.output_dir}"), self.workspace() as workspace:
            LOG.open_log(workspace / "build.log")
            self.make_plan(self.context(workspace, cache))
            self.preflight()
            self.timings = cache.load_timings()
            self.run_record.started = time.monotonic()
            with locked(cache.lock_file, f"the cache {cache.root}"):
                for dead in cache.reap_partial():
                    LOG.note(f"removed a cache entry a killed build left half made: {dead}")
                self.actions = self.schedule(cache)
                final = self.execute(self.actions, cache, workspace)
            cache.save_timings({r.name: r.seconds for r in self.run_record.stages if r.status == "built"})
            published = self.publish(final)
            LOG.note(f"Image: {published[0]} ({final.facts.get('summary', '')})")
            LOG.note(
                f"Done in {format_duration(self.run_record.elapsed())}: "
                + ", ".join(f"{r.name} {r.status}" for r in self.run_record.stages)
            )
            self.keep_log()
            report = next((path for path in published if path.name.endswith(".report.json")), published[-1])
            return BuildResult(published[0], report, list(self.run_record.stages))

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        WORKSPACE_ROOT.mkdir(parents=True, exist_ok=True)
        for dead in reap_dead_workspaces(WORKSPACE_ROOT):
            LOG.note(f"removed the workspace of a build that was killed: {dead}")
        path = Path(tempfile.mkdtemp(prefix="amberpi-", dir=WORKSPACE_ROOT))
        # Held while the build lives; a later build that can take it knows this one died.
        owner = (path / OWNER_FILE).open("a")
        fcntl.flock(owner, fcntl.LOCK_EX)

        def tidy() -> None:
            LOG.close_log()
            if self.keep_workspace:
                LOG.note(f"workspace kept at {path}")
            else:
                remove_tree(path)
            owner.close()

        with cleanup_after(tidy):
            try:
                yield path
            except BaseException:
                self.keep_log()
                raise

    def keep_log(self) -> None:
        """The build log goes beside the image (and beside no image when the build failed)."""
        if LOG.log_path and LOG.log_path.exists() and LOG.log_path.parent != self.output_dir:
            target = self.output_dir / f"{self.config.name}.build.log"
            shutil.copy2(LOG.log_path, target)
            LOG.log_path = target

    def schedule(self, cache: Cache) -> dict[str, str]:
        """What each stage must do, decided from the last stage back, before any runs.

        "cached": its output is in the cache; "build": it runs; "facts": only its facts
        are needed and a build with the same key recorded them; absent: not needed
        (a later stage was cached), so it is skipped.
        """
        actions: dict[str, str] = {}

        def need_output(name: str) -> None:
            if actions.get(name) in ("cached", "build"):
                return
            planned = self.plan[name]
            if planned.stage.cached:
                if cache.lookup(name, planned.key) is not None:
                    actions[name] = "cached"
                    return
                if self.incremental is Incremental.strict:
                    raise CacheError(
                        f"stage {name} is not cached and --incremental=strict forbids building it",
                        where=cache.explain_miss(name, planned.manifest),
                        hint="build once without --incremental=strict",
                    )
            actions[name] = "build"
            for other in planned.stage.needs:
                need_output(other)
            for other in planned.stage.uses_facts:
                need_facts(other)

        def need_facts(name: str) -> None:
            if name not in actions and cache.load_facts(name, self.plan[name].key) is not None:
                actions[name] = "facts"
            elif name not in actions:
                need_output(name)

        need_output(list(self.plan)[-1])
        return actions

    def execute(self, actions: dict[str, str], cache: Cache, workspace: Path) -> Artefact:
        """Run the schedule top to bottom; returns the last stage's artefact."""
        for name, planned in self.plan.items():
            action = actions.get(name)
            if action == "cached":
                planned.record.status = "cached"
                made = cache.made_at(name, planned.key)
                self.announce(planned, "cached", age=None if made is None else time.time() - made)
                self.keep(name, Artefact.load(cache.entry(name, planned.key)), cache)
            elif action == "facts":
                planned.record.status = "skipped"
                self.artefacts[name] = Artefact(None, cache.load_facts(name, planned.key) or {})
            elif action == "build":
                upstream = {other: self.artefacts[other] for other in (*planned.stage.needs, *planned.stage.uses_facts)}
                self.announce(planned, "start")
                if planned.stage.cached:
                    LOG.detail(f"cache miss for {name}: {cache.explain_miss(name, planned.manifest)}")
                started = time.monotonic()
                artefact = self.run_stage(planned, upstream, cache, workspace)
                planned.record.status, planned.record.seconds = "built", time.monotonic() - started
                self.announce(planned, "done")
                self.keep(name, artefact, cache)
            else:
                planned.record.status = "skipped"
        return self.artefacts[list(self.plan)[-1]]

    def run_stage(self, planned: PlannedStage, upstream: Mapping[str, Artefact], cache: Cache, workspace: Path) -> Artefact:
        try:
            return self.make_artefact(planned, upstream, cache, workspace)
        except Exception as failure:
            if not ran_out_of_room(failure):
                raise
            places = [("the cache folder", cache.root), ("the workspace folder", WORKSPACE_ROOT)]
            raise OutOfRoomError(planned.stage.name, failure, places, hint=ROOM_HINT) from failure

    def make_artefact(self, planned: PlannedStage, upstream: Mapping[str, Artefact], cache: Cache, workspace: Path) -> Artefact:
        stage = planned.stage
        if stage.cached:
            with cache.staging(stage.name, planned.key, planned.manifest) as out:
                stage.run(planned.inputs, upstream, out).save()
            return Artefact.load(cache.entry(stage.name, planned.key))
        out = workspace / stage.name
        out.mkdir(parents=True, exist_ok=True)
        artefact = stage.run(planned.inputs, upstream, out)
        artefact.save()
        return artefact

    def keep(self, name: str, artefact: Artefact, cache: Cache) -> Artefact:
        self.artefacts[name] = artefact
        cache.save_facts(name, self.plan[name].key, artefact.facts)
        return artefact

    def announce(self, planned: PlannedStage, event: str, *, age: float | None = None) -> None:
        order = list(self.plan)
        name = planned.stage.name
        position = f"[{order.index(name) + 1:>{len(str(len(order)))}}/{len(order)}]"
        record = planned.record
        if event == "start":
            remaining = [n for n in order[order.index(name) :] if self.actions.get(n) == "build"]
            known = [self.timings[n] for n in remaining if n in self.timings]
            eta = f", ETA {format_duration(sum(known))}" if known and len(known) == len(remaining) else ""
            elapsed = format_duration(self.run_record.elapsed())
            LOG.note(f"{position} {name:<11} {planned.stage.title(planned.inputs)} … (elapsed {elapsed}{eta})")
        elif event == "done":
            LOG.note(f"{position} {name:<11} built in {format_duration(record.seconds)}")
        else:
            old = f", {format_age(age)} old" if age is not None else ""
            LOG.note(f"{position} {name:<11} cached{old} ({planned.key[:12]})")

    # --- publishing ----------------------------------------------------------------------

    def publish(self, final: Artefact) -> list[Path]:
        """Move the files the last stage names into the output folder, the first (the image) first.

        Each is copied in beside its target first (keeping holes), then all are renamed
        in quick succession; sidecars of an earlier build are removed before the image is
        replaced, so a checksum never describes another image.
        """
        names: list[str] = list(final.facts["publish"])
        check_room(self.output_dir, [final.folder / name for name in names])
        partials = {name: self.output_dir / f".{name}.partial" for name in names}

        def remove_partials() -> None:
            for partial in partials.values():
                partial.unlink(missing_ok=True)

        with cleanup_after(remove_partials):
            for name, partial in partials.items():
                try:
                    move_file(final.folder / name, partial)
                except (OSError, ToolError) as exc:
                    raise OutputError(
                        f"cannot write {name} into the output folder: {describe(exc)}",
                        where=str(self.output_dir),
                        hint=OUTPUT_ROOM_HINT,
                    ) from None
            # Only now, with every new file in place beside its target: a failure above left the
            # earlier build's image and sidecars untouched.
            for stale in [*final.facts.get("withdraw", []), *names[1:]]:
                (self.output_dir / stale).unlink(missing_ok=True)
            for name, partial in partials.items():
                os.replace(partial, self.output_dir / name)
        return [self.output_dir / name for name in names]
