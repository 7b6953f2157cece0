"""The builder image (docker/Dockerfile) and its Debian base image, made with the Docker SDK.

The builder image is tagged by a content hash of docker/, requirements.txt, the
build arguments and the base image's id, so it is rebuilt only when one of them
changes. No registry is needed: the base image `amberpi/debian-base:bookworm`
can be debootstrapped on this host and imported (`python3 build.py builder-base`);
only when it is missing is the official `debian:bookworm` pulled instead.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import platform
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from amberpi.backends.engine import api_error, diagnose
from amberpi.cache import canonical
from amberpi.config import REPO_ROOT
from amberpi.errors import BackendError, ToolMissing, UsageError
from amberpi.log import LOG
from amberpi.mirror import detect_host_mirrors
from amberpi.pipeline import host_tools
from amberpi.run import run, which
from amberpi.tools import packages_for
from amberpi.trees import forget_build_host, remove_tree

LABEL = "io.amberpi.role"
BASE_SUITE = "bookworm"  # the Debian release the project supports as a build host
BASE_REPOSITORY = "amberpi/debian-base"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_SUITE}"
OFFICIAL_BASE = ("debian", BASE_SUITE)  # Docker Hub; pulled only when BASE_IMAGE is missing
BUILDER_REPOSITORY = "amberpi/builder"
DOCKER_DIR = REPO_ROOT / "docker"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")  # authorities the host's admin added
CA_CONTEXT_DIR = "host-ca-certificates"  # where docker/Dockerfile expects them in the context
WORK_ROOT = Path("/var/tmp")
# Debian's name for this machine's architecture (platform.machine() spelling on the left).
DEBIAN_ARCHES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "i686": "i386",
    "ppc64le": "ppc64el",
    "riscv64": "riscv64",
    "s390x": "s390x",
}


def host_arch() -> str:
    machine = platform.machine().lower()
    if machine not in DEBIAN_ARCHES:
        raise BackendError(f"no Debian architecture is known for this machine ({machine})")
    return DEBIAN_ARCHES[machine]


def trim_rootfs(tree: Path) -> None:
    """Drop downloaded packages and package lists (the Dockerfile fetches fresh ones), and this
    host's hostname and resolver, which debootstrap copied in (the engine provides its own)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*.log", "debootstrap"):
        for path in tree.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                remove_tree(path)
            elif path.is_file() or path.is_symlink():
                path.unlink()
    forget_build_host(tree)


def import_result_error(result: Any) -> str | None:
    """The engine's error message from an image import's JSON lines, if any."""
    for line in str(result or "").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("error"):
            return str(item["error"])
    return None


def bootstrap_base_image(client: Any, mirror: str, cache_dir: Path) -> str:
    """Debootstrap the base suite (minbase, this host's architecture) and import it as BASE_IMAGE."""
    if os.geteuid() != 0:
        raise UsageError("creating the builder's base image needs root (debootstrap)", hint="sudo python3 build.py builder-base")
    if which("debootstrap") is None:
        raise ToolMissing("debootstrap", "debootstrap")
    arch = host_arch()
    debs = cache_dir / "debs" / f"{BASE_SUITE}-{arch}"
    debs.mkdir(parents=True, exist_ok=True)
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="amberpi-base-", dir=WORK_ROOT))
    try:
        tree = work / "rootfs"
        LOG.note(f"Debootstrapping {BASE_SUITE} {arch} (minbase) from {mirror or 'the default mirror'} for {BASE_IMAGE} …")
        argv = ["debootstrap", "--variant=minbase", f"--arch={arch}", f"--cache-dir={debs}", BASE_SUITE, str(tree)]
        run(
            [*argv, mirror] if mirror else argv,
            label="debootstrap",
            where=f"the builder's base image, mirror {mirror}",
            hint="check that this host reaches the mirror, or choose another with --mirror URL",
            tool_log=tree / "debootstrap" / "debootstrap.log",
        )
        trim_rootfs(tree)
        tarball = work / "rootfs.tar"
        run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(tree), "-cf", str(tarball), "."], label="tar")
        LOG.note(f"Importing it as {BASE_IMAGE} ({tarball.stat().st_size >> 20} MiB)")
        changes = ["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
        try:
            result = client.api.import_image_from_file(str(tarball), repository=BASE_REPOSITORY, tag=BASE_SUITE, changes=changes)
        except Exception as exc:  # noqa: BLE001 - any SDK failure becomes a clear message
            raise api_error(exc, f"import {BASE_IMAGE}", {"Docker's data root": Path(client.info()["DockerRootDir"])}) from None
        error = import_result_error(result)
        if error:
            raise BackendError(f"the Docker engine could not import {BASE_IMAGE}: {error}")
    finally:
        remove_tree(work)
    image = client.images.get(BASE_IMAGE)
    LOG.note(f"Base image {BASE_IMAGE} is ready ({image.short_id})")
    return str(image.id)


def ensure_base_image(client: Any) -> str:
    """The base image's id: the local one; only when it is missing, the official image from Docker Hub."""
    import docker

    try:
        return str(client.images.get(BASE_IMAGE).id)
    except docker.errors.ImageNotFound:
        pass
    name, tag = OFFICIAL_BASE
    LOG.note(f"The builder's base image {BASE_IMAGE} is not here; pulling the official {name}:{tag} from Docker Hub")
    try:
        image = client.images.pull(name, tag=tag)
    except docker.errors.APIError as exc:
        raise BackendError(
            f"the builder's base image {BASE_IMAGE} does not exist and {name}:{tag} cannot be pulled ({exc.explanation or exc})",
            hint="create it on this host, no registry needed: sudo python3 build.py builder-base",
        ) from None
    image.tag(BASE_REPOSITORY, BASE_SUITE)
    return str(image.id)


def builder_inputs() -> tuple[dict[str, bytes], dict[str, str]]:
    """The build context (docker/ and requirements.txt, by their repository paths) and build arguments."""
    files = {str(path.relative_to(REPO_ROOT)): path.read_bytes() for path in sorted(DOCKER_DIR.rglob("*")) if path.is_file()}
    files[REQUIREMENTS.name] = REQUIREMENTS.read_bytes()
    if HOST_CA_DIR.is_dir():
        for path in sorted(HOST_CA_DIR.rglob("*.crt")):
            if path.is_file():
                files[f"{CA_CONTEXT_DIR}/{path.relative_to(HOST_CA_DIR)}"] = path.read_bytes()
    buildargs = {
        "BASE_IMAGE": BASE_IMAGE,
        "SUITE": BASE_SUITE,
        "HOST_PACKAGES": " ".join(packages_for(host_tools())),
        "MIRROR": detect_host_mirrors()[0],
    }
    return files, buildargs


def builder_tag(files: dict[str, bytes], buildargs: dict[str, str], base_id: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0".encode())
        digest.update(hashlib.sha256(files[name]).digest())
    digest.update(canonical({"buildargs": buildargs, "base": base_id}).encode())
    return f"{BUILDER_REPOSITORY}:{digest.hexdigest()[:16]}"


def context_tar(files: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo(CA_CONTEXT_DIR)  # present even when the host added no authority
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    buffer.seek(0)
    return buffer


def build_builder_image(client: Any, tag: str, files: dict[str, bytes], buildargs: dict[str, str], *, nocache: bool) -> None:
    """docker/Dockerfile through the engine, its output shown live as `builder | line`."""
    import docker

    places = {"Docker's data root": Path(client.info()["DockerRootDir"])}
    tail: collections.deque[str] = collections.deque(maxlen=60)
    try:
        stream = client.api.build(
            fileobj=context_tar(files),
            custom_context=True,
            dockerfile="docker/Dockerfile",
            tag=tag,
            buildargs=buildargs,
            network_mode="host",  # apt and pip reach the mirror and PyPI the way this host does
            pull=False,  # never pull: the base image is local
            nocache=nocache,
            rm=True,
            forcerm=True,
            decode=True,
            labels={LABEL: "builder"},
        )
        for chunk in stream:
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    tail.append(line)
                    LOG.note(f"builder | {line}")
            if chunk.get("error"):
                tail.append(str(chunk["error"]))
                cause = diagnose(tail, mirror=buildargs["MIRROR"] or "deb.debian.org", places=places, pypi=True)
                if cause:
                    cause.what = f"building the builder image failed, {cause.what}"
                    raise cause
                raise BackendError(
                    f"building the builder image failed: {chunk['error']}",
                    where="docker/Dockerfile",
                    hint="the lines above (builder | ...) show the failing step",
                )
    except docker.errors.APIError as exc:
        raise api_error(exc, "build the builder image", places) from None


def prune_builders(client: Any, keep: str, replaced: str | None = None) -> None:
    """Remove builder images of earlier inputs, and the one a forced rebuild replaced (they are large).

    Images still in use by a container stay.
    """
    import docker

    stale = [image.id for image in client.images.list(name=BUILDER_REPOSITORY) if keep not in image.tags]
    for image_id in [*stale, *([replaced] if replaced else [])]:
        try:
            client.images.remove(image_id)
        except docker.errors.APIError:
            continue


def ensure_builder_image(client: Any, *, rebuild: bool = False) -> str:
    """The tag of an up-to-date builder image: reused when its inputs are unchanged, else built."""
    import docker

    base_id = ensure_base_image(client)
    files, buildargs = builder_inputs()
    tag = builder_tag(files, buildargs, base_id)
    try:
        previous = str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        previous = None
    if previous and not rebuild:
        LOG.note(f"Builder image {tag} is up to date")
        return tag
    LOG.note(f"Building the builder image {tag} (docker/Dockerfile on {BASE_IMAGE}) …")
    build_builder_image(client, tag, files, buildargs, nocache=rebuild)
    image = client.images.get(tag)
    prune_builders(client, keep=tag, replaced=previous if previous != image.id else None)
    LOG.note(f"Builder image {tag} is ready ({int(image.attrs.get('Size', 0)) >> 20} MiB)")
    return tag
