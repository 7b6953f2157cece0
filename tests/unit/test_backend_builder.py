"""The builder image and its base image (amberpi/backends/builder.py), with a fake engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from amberpi.backends import builder
from amberpi.errors import BackendError, UsageError
from amberpi.pipeline import host_tools
from amberpi.tools import packages_for
from tests.fakes import MIRROR, FakeClient

pytestmark = pytest.mark.usefixtures("quiet_log")


def test_builder_tag_follows_its_inputs() -> None:
    files = {"docker/Dockerfile": b"FROM x\n", "requirements.txt": b"plumbum==1.9.0\n"}
    args = {"HOST_PACKAGES": "debootstrap"}
    tag = builder.builder_tag(files, args, "sha256:base")
    assert tag.startswith("amberpi/builder:") and tag == builder.builder_tag(dict(files), dict(args), "sha256:base")
    assert tag != builder.builder_tag({**files, "docker/Dockerfile": b"FROM y\n"}, args, "sha256:base")
    assert tag != builder.builder_tag(files, {"HOST_PACKAGES": "debootstrap zstd"}, "sha256:base")
    assert tag != builder.builder_tag(files, args, "sha256:other-base")


def test_builder_inputs_cover_the_dockerfile_and_host_packages() -> None:
    files, args = builder.builder_inputs()
    assert "docker/Dockerfile" in files and "requirements.txt" in files
    # Every package the stages' declared tools come from, and each only once.
    assert args["HOST_PACKAGES"].split() == packages_for(host_tools())
    assert {"debootstrap", "squashfs-tools", "qemu-user-static", "dosfstools", "e2fsprogs"} <= set(args["HOST_PACKAGES"].split())


def test_builder_image_is_reused_then_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(images={builder.BASE_IMAGE})
    tag = builder.ensure_builder_image(client)
    assert client.built == [tag]
    assert builder.ensure_builder_image(client) == tag and client.built == [tag], "current image reused"
    builder.ensure_builder_image(client, rebuild=True)
    assert client.built == [tag, tag], "--rebuild-builder forces it"
    assert client.images.pulled == [], "never pulls when the base exists"


def test_missing_base_without_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(images=set())
    with pytest.raises(BackendError) as info:
        builder.ensure_builder_image(client)
    text = info.value.render()
    assert "the builder's base image amberpi/debian-base:bookworm does not exist and debian:bookworm cannot be pulled" in text
    assert "sudo python3 build.py builder-base" in text
    assert client.built == []


def test_builder_network_failure_names_pypi(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(images={builder.BASE_IMAGE})

    def failing_build(**kwargs: Any) -> Any:
        yield {"stream": "ERROR: Could not find a version (Failed to establish a new connection)\n"}
        yield {"error": "The command '/bin/sh -c pip install' returned a non-zero code: 1"}

    monkeypatch.setattr(client, "build", failing_build)
    with pytest.raises(BackendError) as info:
        builder.ensure_builder_image(client)
    assert "building the builder image failed, no network" in info.value.render() and "pypi.org" in info.value.render()


def test_bootstrap_base_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(builder.os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError) as info:
        builder.bootstrap_base_image(FakeClient(), MIRROR, tmp_path)
    assert "sudo python3 build.py builder-base" in info.value.render()


def test_the_base_image_keeps_no_build_host_hostname_or_resolver(tmp_path: Path) -> None:
    """Before: debootstrap's copies of this host's /etc/hostname and /etc/resolv.conf went into the base image."""
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "hostname").write_text("build-host.lan\n")
    (etc / "resolv.conf").write_text("nameserver 192.0.2.53\nsearch corp.example\n")
    builder.trim_rootfs(tmp_path / "rootfs")
    assert not (etc / "hostname").exists() and (etc / "resolv.conf").read_text() == ""
