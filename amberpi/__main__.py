"""Entry point: signals, logging set-up, verbs, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from amberpi.cache import Cache, Incremental, locked
from amberpi.cli import parse_args, setting_overrides
from amberpi.config import Config, list_boards, load_config, summary_lines
from amberpi.errors import AmberPiError
from amberpi.log import LOG
from amberpi.pipeline import OUTPUT_LOCK
from amberpi.run import stop_all

EXIT_INTERRUPTED = 130
_interrupted = False


def on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP become KeyboardInterrupt; repeats are ignored during cleanup."""
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise KeyboardInterrupt


def print_boards() -> None:
    boards = list_boards()
    width = max(len(name) for name in boards)
    for name, description in boards.items():
        print(f"{name:<{width}}  {description}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    LOG.verbose = getattr(args, "verbose", False)
    LOG.debug = getattr(args, "debug", False)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return run_verb(args)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_all()
        LOG.note("interrupted: stopped, mounts released, no image written")
        return EXIT_INTERRUPTED
    except AmberPiError as exc:
        LOG.note(exc.render())
        if LOG.log_path and LOG.log_path.exists():
            LOG.note(f"  build log: {LOG.log_path}")
        return exc.exit_code
    except Exception:  # noqa: BLE001 - the last line of defence turns bugs into a clear message
        if LOG.debug:
            traceback.print_exc()
        else:
            LOG.note(f"internal error: {traceback.format_exc().splitlines()[-1]} (run with --debug for the traceback)")
        return 1


def run_verb(args: argparse.Namespace) -> int:
    if args.verb == "boards":
        print_boards()
        return 0
    if args.verb in ("release", "verify", "flash"):
        return release_verb(args)
    config = load_config(args.config, setting_overrides(args))
    if args.verb == "summary":
        if args.json:
            print(json.dumps(config.to_json(redact=True), indent=2))
        else:
            print("\n".join(summary_lines(config)))
        return 0
    if args.verb == "clean":
        return clean(config, args.force)
    if args.verb == "builder-base" or getattr(args, "bootstrap_builder_base", False):
        if args.verb != "builder-base":
            LOG.note("note: --bootstrap-builder-base is deprecated; the verb is `python build.py builder-base`")
        return bootstrap_builder_base(config)
    from amberpi.backends import BuildRequest, select_backend

    backend = select_backend(args.backend)
    if args.verb == "validate":
        backend.validate(BuildRequest(config))
        LOG.note(f"config and host are ready to build (backend {backend.name})")
        return 0
    incremental = Incremental.no if args.no_cache else Incremental(args.incremental)
    request = BuildRequest(config, incremental, args.keep_workspace, LOG.verbose, LOG.debug, args.rebuild_builder)
    return backend.build(request)


def release_verb(args: argparse.Namespace) -> int:
    """release, verify, flash: the release tooling (amberpi/releases.py, verify.py, flash.py)."""
    if args.verb == "verify":
        from amberpi.verify import verify

        verify(Path(args.image))
        return 0
    if args.verb == "flash":
        from amberpi.flash import flash

        flash(Path(args.image), Path(args.device), yes=args.yes, force=args.force)
        return 0
    from amberpi.releases import collect, release, release_configs

    overrides = setting_overrides(args)
    if args.collect:
        return collect(Path(load_config(args.config, overrides).output))
    from amberpi.backends import BuildRequest, select_backend

    configs = release_configs(args.config, overrides, args.boards)
    backend = select_backend(args.backend)
    incremental = Incremental.no if args.no_cache else Incremental.yes
    return release(configs, lambda config: backend.build(BuildRequest(config, incremental, verbose=LOG.verbose, debug=LOG.debug)))


def bootstrap_builder_base(config: Config) -> int:
    from amberpi.backends.builder import bootstrap_base_image
    from amberpi.backends.engine import connect_engine

    bootstrap_base_image(connect_engine(), config.mirror, Path(config.cache_dir))
    return 0


def clean(config: Config, force: bool) -> int:
    output = Path(config.output)
    removed = 0
    if output.is_dir():
        # The build's own lock: no output of a running build is removed.
        with locked(output / OUTPUT_LOCK, f"the output folder {output}"):
            for pattern in (f"{config.name}.*", f".{config.name}.*.partial"):
                for path in output.glob(pattern):
                    path.unlink()
                    removed += 1
    LOG.note(f"removed {removed} output file(s) from {output}")
    if force:
        Cache(Path(config.cache_dir), Incremental.yes).clean()
        LOG.note(f"emptied the cache {config.cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
