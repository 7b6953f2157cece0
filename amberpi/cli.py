"""Command line: verbs and flags only. Flags for settings derive from config.py."""

from __future__ import annotations

import argparse
from typing import Any

from amberpi import __version__
from amberpi.cache import Incremental
from amberpi.config import SETTING_FIELDS

VERBS = ("build", "validate", "summary", "boards", "clean", "builder-base", "release", "verify", "flash")


def add_setting_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for name, spec in SETTING_FIELDS.items():
        if not spec.metadata.get("cli") or name in skip:
            continue
        choices = spec.metadata.get("choices")
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar=name.upper(),
            help=spec.metadata["help"] + (f" ({', '.join(choices)})" if choices else ""),
        )


def add_common(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    parser.add_argument("--config", type=str, default=None, metavar="FILE", help="YAML file of settings (see `summary` for the keys)")
    add_setting_flags(parser, skip)
    add_output_flags(parser)


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", help="stream every command and its output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["auto", "native", "docker"],
        default="auto",
        help="where to build: native (this Debian host, as root), docker (in the builder container), "
        "auto (default: native when root on a Debian-family host, else docker)",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build.py",
        description="AmberPi: build indestructible Raspberry Pi images from Debian's archive. "
        "With no verb, `build` is assumed: `python build.py --board pi3`.",
    )
    parser.add_argument("--version", action="version", version=f"amberpi {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    build = sub.add_parser(
        "build",
        help="build an image (the default verb)",
        description="Build an image: out/amberpi-<board>.img with its .sha256, report and log.",
        epilog="Other verbs: validate, summary [--json], boards, clean [-f], builder-base, release, verify, flash.",
    )
    add_common(build)
    build.add_argument("--no-cache", action="store_true", help="rebuild every stage (same as --incremental=no)")
    build.add_argument(
        "--incremental",
        choices=[m.value for m in Incremental],
        default=Incremental.yes.value,
        help="use cached stages: yes (default), no, or strict (fail when a stage is not cached)",
    )
    build.add_argument("--keep-workspace", action="store_true", help="keep the build workspace for inspection")
    add_backend(build)
    build.add_argument("--rebuild-builder", action="store_true", help="docker backend: rebuild the builder image even if it is current")
    build.add_argument(
        "--bootstrap-builder-base",
        action="store_true",
        help="deprecated spelling of the `builder-base` verb",
    )

    validate = sub.add_parser("validate", help="check the config and the host, build nothing")
    add_common(validate)
    add_backend(validate)

    summary = sub.add_parser("summary", help="print the resolved config")
    add_common(summary)
    summary.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    sub.add_parser("boards", help="list the boards, one line each")

    base = sub.add_parser(
        "builder-base",
        help="make the Docker builder's base image amberpi/debian-base:bookworm with debootstrap (root)",
        description="Debootstrap Debian bookworm (minbase) and import it into the Docker engine as "
        "amberpi/debian-base:bookworm, the base of the builder image: no registry needed.",
    )
    add_common(base)

    release = sub.add_parser(
        "release",
        help="build boards for download: .img.xz, .bmap, manifests, report, and one Raspberry Pi Imager list",
        description="Build each board with --compress xz (the usual pipeline and cache), then write one "
        "Raspberry Pi Imager list of them all (amberpi.rpi-imager.json) into the output folder.",
    )
    add_common(release, skip=("board", "compress"))
    release.add_argument(
        "--board", dest="boards", action="append", default=[], metavar="BOARD", help="a board to release; repeat it (default: every board)"
    )
    release.add_argument(
        "--collect", action="store_true", help="build nothing: combine the boards' Imager lists already in the output folder"
    )
    release.add_argument("--no-cache", action="store_true", help="rebuild every stage")
    add_backend(release)

    verify = sub.add_parser(
        "verify",
        help="check an image or its .img.xz against its checksums and report, and show what it holds",
        description="Check IMAGE (.img, or .img.xz read through xz) against the .sha256 files and the build report "
        "beside it, and print its partitions, labels, kernel, package count and build info. No mount, no root. "
        "Exit 1 when it differs from them.",
    )
    verify.add_argument("image", metavar="IMAGE", help="the image (.img) or its download (.img.xz)")
    add_output_flags(verify)

    flash = sub.add_parser(
        "flash",
        help="write an image to an SD card or USB stick (bmaptool with the .bmap, else dd)",
        description="Write IMAGE to the whole-disk DEVICE after checking it is not mounted, not the disk of /, "
        "and not larger than 256 GiB (--force), then asking on the terminal (--yes: do not ask).",
    )
    flash.add_argument("image", metavar="IMAGE", help="the image (.img) or its download (.img.xz)")
    flash.add_argument("device", metavar="DEVICE", help="the card's whole-disk device, e.g. /dev/sdb or /dev/mmcblk0")
    flash.add_argument("--yes", action="store_true", help="write without asking (for scripts)")
    flash.add_argument("--force", action="store_true", help="write a device larger than 256 GiB")
    add_output_flags(flash)

    clean = sub.add_parser("clean", help="delete build outputs; -f also deletes the cache")
    add_common(clean)
    clean.add_argument("-f", "--force", action="store_true", help="also delete the build cache")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse argv, with `build` as the verb when none is given (so --help shows the build flags).

    Only the first token can be a verb: `--output build` names a folder.
    """
    if not (argv and argv[0] in VERBS) and "--version" not in argv:
        argv = ["build", *argv]
    return make_parser().parse_args(argv)


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in SETTING_FIELDS if getattr(args, name, None) is not None}
