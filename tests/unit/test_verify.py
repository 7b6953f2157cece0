"""`verify`: a small AmberPi-shaped image (tests/minimage.py) checked against its checksums and
report, as .img and as .img.xz; truncated and altered copies fail naming what differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from amberpi.verify import ISO_HEAD, VerifyError, read_image, verify
from tests.conftest import amberpi
from tests.minimage import DISK_INFO, IDENTITY, KERNEL, MiniImage, compress, flip_byte, make_image, truncate

pytestmark = pytest.mark.usefixtures("quiet_log")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> MiniImage:
    mini = make_image(tmp_path_factory.mktemp("mini"))
    compress(mini)
    return mini


@pytest.fixture
def mini(built: MiniImage, tmp_path: Path) -> MiniImage:
    """A copy the test may damage."""
    folder = tmp_path / "copy"
    shutil.copytree(built.folder, folder, ignore=shutil.ignore_patterns("work"))
    return MiniImage(folder, built.names)


def lines_of(path: Path) -> tuple[list[str], Exception | None]:
    lines: list[str] = []
    try:
        verify(path, lines.append)
    except VerifyError as exc:
        return lines, exc
    return lines, None


def test_a_good_image_verifies_and_shows_what_it_holds(mini: MiniImage) -> None:
    lines, error = lines_of(mini.image)
    assert error is None, error
    text = "\n".join(lines)
    assert "disk id    0x1a2b3c4d" in text
    assert "p1         4 MiB +64 MiB, FAT32 (LBA), bootable: FAT32 label AMBERPI serial 1a2b3c4d" in text
    assert f"ISO9660 label {IDENTITY.system_label}" in text and f"ISO9660 label {IDENTITY.kernel_label}" in text
    assert f"ext4 label {IDENTITY.persistence_label}" in text
    assert f"kernel     {KERNEL}" in text
    assert f"build      {DISK_INFO.strip()}" in text and f"image_id={IDENTITY.image_id}" in text
    assert f"packages   3 (from {mini.names.report})" in text
    assert f"sha256 of {mini.names.image} matches {mini.names.checksum}" in text
    assert f"the image's sha256 matches {mini.names.report}" in text
    assert lines[-1] == f"OK         {mini.names.image} verifies"


def test_the_build_info_beyond_the_iso_head_is_read_from_the_stream(mini: MiniImage) -> None:
    """p2's .disk files lie past the squashfs, well after the bytes kept for the ISO's directories."""
    info = read_image(mini.image)
    system = info.partition(2)
    assert system is not None and system.size > ISO_HEAD
    assert system.files["/.disk/info"] == DISK_INFO
    assert info.problems == []


def test_the_download_verifies_through_xz(mini: MiniImage) -> None:
    lines, error = lines_of(mini.compressed)
    assert error is None, error
    text = "\n".join(lines)
    assert f"sha256 of {mini.names.compressed} matches {mini.names.compressed_checksum}" in text
    assert f"sha256 of {mini.names.image} matches {mini.names.checksum}" in text
    assert f"the sha256 of {mini.names.compressed} matches {mini.names.report}" in text
    assert f"kernel     {KERNEL}" in text


def test_a_truncated_image_fails_naming_the_cut(mini: MiniImage) -> None:
    truncate(mini.image, mini.image.stat().st_size - (1 << 20))
    _, error = lines_of(mini.image)
    assert error is not None
    text = str(error)
    assert "p4 ends at byte" in text and "it is truncated" in text
    assert "differs from" in text and mini.names.checksum in text
    assert f"the image's size is {mini.image.stat().st_size} but {mini.names.report} says" in text


def test_a_truncated_download_fails_naming_the_cut(mini: MiniImage) -> None:
    truncate(mini.compressed, mini.compressed.stat().st_size // 2)
    _, error = lines_of(mini.compressed)
    assert error is not None
    text = str(error)
    assert "the xz data ends before its end marker (truncated)" in text
    assert f"{mini.names.compressed}: sha256" in text and mini.names.compressed_checksum in text


def test_an_altered_byte_fails_naming_the_checksum(mini: MiniImage) -> None:
    flip_byte(mini.image, 70 << 20)  # inside p2's squashfs: the file systems still read
    lines, error = lines_of(mini.image)
    assert error is not None
    assert f"{mini.names.image}: sha256" in str(error) and f"in {mini.names.checksum}" in str(error)
    assert "the image's sha256 is" in str(error)
    assert any(line.startswith("p2 ") for line in lines), "what it holds is still shown"


def test_an_altered_download_fails(mini: MiniImage) -> None:
    flip_byte(mini.compressed, mini.compressed.stat().st_size // 2)
    _, error = lines_of(mini.compressed)
    assert error is not None
    assert "the xz data is corrupt" in str(error) or "sha256" in str(error)


def test_a_report_that_names_another_kernel_or_label_fails(mini: MiniImage) -> None:
    report_path = mini.folder / mini.names.report
    report = json.loads(report_path.read_text())
    report["kernel_version"] = "6.1.0-arm64"
    report["labels"]["kernel"] = "AMBERPI_KRN_DEADBEEF"
    report_path.write_text(json.dumps(report))
    _, error = lines_of(mini.image)
    assert error is not None
    assert f"the kernel (p3's version) is {KERNEL} but {mini.names.report} says 6.1.0-arm64" in str(error)
    assert f"p3's label is {IDENTITY.kernel_label} but {mini.names.report} says AMBERPI_KRN_DEADBEEF" in str(error)


def test_without_a_checksum_or_report_nothing_is_verified(mini: MiniImage) -> None:
    (mini.folder / mini.names.checksum).unlink()
    (mini.folder / mini.names.report).unlink()
    _, error = lines_of(mini.image)
    assert error is not None and "nothing to check" in str(error)


def test_a_file_that_is_no_image_fails(tmp_path: Path) -> None:
    path = tmp_path / "notes.img"
    path.write_bytes(b"hello" * 1000)
    (tmp_path / "notes.img.sha256").write_text("0" * 64 + "  notes.img\n")
    _, error = lines_of(path)
    assert error is not None and "no MBR partition table" in str(error)


def test_the_verb_exits_0_1_and_2(mini: MiniImage, tmp_path: Path) -> None:
    good = amberpi("verify", str(mini.compressed))
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout and KERNEL in good.stdout
    truncate(mini.image, 10 << 20)
    bad = amberpi("verify", str(mini.image))
    assert bad.returncode == 1 and "does not verify" in bad.stderr and "truncated" in bad.stderr
    missing = amberpi("verify", str(tmp_path / "nothing.img"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    usage = amberpi("verify")
    assert usage.returncode == 2
