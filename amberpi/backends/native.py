"""The native backend: the pipeline on this host, as root. Also what runs inside the builder container."""

from __future__ import annotations

import os
from pathlib import Path

from amberpi.backends.base import BACKEND_ENV, BackendName, BuildRequest, banner
from amberpi.errors import UsageError
from amberpi.log import LOG

# Set by the Docker backend: "uid:gid" of the user who asked for the build, to own the outputs.
OWNER_ENV = "AMBERPI_OUTPUT_OWNER"


def reported_backend() -> BackendName:
    """`docker` inside the builder container (the Docker backend says so), else `native`."""
    value = os.environ.get(BACKEND_ENV, BackendName.native.value)
    try:
        name = BackendName(value)
    except ValueError:
        raise UsageError(f"{BACKEND_ENV}={value!r} is not a backend", hint="unset it, or set it to native or docker") from None
    return BackendName.native if name is BackendName.auto else name


def output_owner() -> tuple[int, int] | None:
    """(uid, gid) from AMBERPI_OUTPUT_OWNER, or None when the outputs stay root's."""
    value = os.environ.get(OWNER_ENV, "")
    if not value:
        return None
    try:
        uid, gid = (int(part) for part in value.split(":"))
    except ValueError:
        raise UsageError(f"{OWNER_ENV}={value!r} is not uid:gid") from None
    return uid, gid


def hand_over_outputs(output: Path, name: str, owner: tuple[int, int]) -> list[Path]:
    """Give the build's files in the output folder (image, checksum, report, log, lock) to `owner`."""
    changed: list[Path] = []
    if not output.is_dir():
        return changed
    for path in sorted(output.iterdir()):
        ours = path.name.startswith((f"{name}.", f".{name}.")) or path.name == ".amberpi.lock"
        if ours and path.lstat().st_uid != owner[0]:
            os.lchown(path, *owner)
            changed.append(path)
    return changed


class NativeBackend:
    name = BackendName.native

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def validate(self, request: BuildRequest) -> None:
        from amberpi.hostsetup import prepare_native_host
        from amberpi.pipeline import Pipeline, host_tools

        prepare_native_host(host_tools())
        Pipeline(request.config).validate()

    def build(self, request: BuildRequest) -> int:
        from amberpi.hostsetup import prepare_native_host
        from amberpi.pipeline import Pipeline, host_tools

        reported = reported_backend()
        owner = output_owner()
        if reported is BackendName.native:
            # Inside the builder container the Docker backend has already said this.
            LOG.note(banner(request, self.name, self.reason))
        try:
            prepare_native_host(host_tools())
            pipeline = Pipeline(
                request.config,
                incremental=request.incremental,
                keep_workspace=request.keep_workspace,
                backend=reported.value,
            )
            pipeline.build()
        finally:
            if owner is not None:
                hand_over_outputs(Path(request.config.output).resolve(), request.config.name, owner)
        return 0
