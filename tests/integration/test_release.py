"""The release artefacts of real builds: the block map, the package manifest with Debian's sources
and licences, the pi3 image's Imager list, and `verify` on the built images and on a truncated copy."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from amberpi.stages.release import ReleaseNames
from tests.conftest import BuiltImage, amberpi

pytestmark = pytest.mark.integration


def test_the_block_map_and_manifest_beside_the_image(qemu_image: BuiltImage) -> None:
    names = ReleaseNames("amberpi-qemu")
    bmap = ElementTree.parse(qemu_image.output / names.bmap).getroot()
    mapped, total = int(bmap.findtext("MappedBlocksCount") or 0), int(bmap.findtext("BlocksCount") or 0)
    assert 0 < mapped < total // 2, f"the image is sparse: {mapped} of {total} blocks hold data"
    manifest = json.loads((qemu_image.output / names.manifest).read_text())
    packages = {p["name"]: p for p in manifest["packages"]}
    assert len(packages) == qemu_image.report["package_count"]
    assert packages["libc6"]["source"] == "glibc" and packages["libc6"]["architecture"] == "arm64"
    licensed = [p for p in packages.values() if p["licenses"]]
    assert len(licensed) > len(packages) // 3, "most Debian packages have a machine-readable copyright file (69% on a bookworm host)"
    assert not (qemu_image.output / names.imager).exists(), "the qemu board is not in Raspberry Pi Imager's list"


def test_verify_passes_on_the_built_images(qemu_image: BuiltImage, pi3_image: BuiltImage) -> None:
    for built in (qemu_image, pi3_image):
        result = amberpi("verify", str(built.path))
        assert result.returncode == 0, result.stderr
        assert built.report["kernel_version"] in result.stdout and built.report["labels"]["system"] in result.stdout
    assert (pi3_image.output / ReleaseNames("amberpi-pi3").imager).is_file()


def test_verify_fails_on_a_truncated_copy(qemu_image: BuiltImage, tmp_path: Path) -> None:
    names = ReleaseNames("amberpi-qemu")
    for name in (names.image, names.checksum, names.report):
        subprocess.run(["cp", "--sparse=always", str(qemu_image.output / name), str(tmp_path / name)], check=True)
    copy = tmp_path / names.image
    with copy.open("r+b") as handle:
        handle.truncate(copy.stat().st_size - (64 << 20))
    result = amberpi("verify", str(copy))
    assert result.returncode == 1
    assert "truncated" in result.stderr and names.checksum in result.stderr
