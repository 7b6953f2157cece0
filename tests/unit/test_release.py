"""Release tooling: the release stage's artefacts made for real (xz, bmaptool) from a small
AmberPi-shaped image and read back (verify, the block map, the package manifest, the Raspberry
Pi Imager list validated against Imager's own schema), the DEP-5 licence reader, and the
`release` verb over a stand-in build."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from amberpi import imager
from amberpi.config import list_boards, load_board
from amberpi.context import RunRecord, StageRecord
from amberpi.errors import UsageError
from amberpi.manifest import QUERY_FORMAT, copyright_licences, query_packages
from amberpi.releases import collect, release, release_configs
from amberpi.stages.base import Artefact
from amberpi.stages.release import ReleaseInputs, ReleaseNames, ReleaseStage
from amberpi.verify import verify
from tests.conftest import EPOCH, REPO, amberpi
from tests.fakes import MIRROR, FakeTools
from tests.minimage import IDENTITY, KERNEL, make_image

pytestmark = pytest.mark.usefixtures("quiet_log")

# rpi-imager's doc/json-schema/os-list-schema.json, unchanged (tests/data/README.md: where from).
IMAGER_SCHEMA = REPO / "tests" / "data" / "rpi-imager-os-list-schema.json"
MANIFEST = [
    {"name": "base-files", "version": "13.8", "architecture": "arm64", "source": "base-files", "source_version": "13.8", "licenses": None},
    {
        "name": "libc6",
        "version": "2.41-6",
        "architecture": "arm64",
        "source": "glibc",
        "source_version": "2.41-6",
        "licenses": ["GPL-2", "LGPL-2.1+"],
    },
]


def validate_imager_list(document: dict[str, Any]) -> None:
    schema = json.loads(IMAGER_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(document)


# --- the release stage, for real ------------------------------------------------------------


def release_inputs(board: str = "pi3", release_url: str = "") -> ReleaseInputs:
    spec = load_board(board)
    return ReleaseInputs(
        name=f"amberpi-{board}",
        compress="xz",
        identity=IDENTITY,
        board=board,
        board_description=spec.description,
        imager_devices=tuple(spec.imager_devices),
        release_url=release_url,
        backend="native",
        suite="trixie",
        mirror=MIRROR,
        config=(("compress", "xz"),),
        amberpi_version="0.test",
        run_record=RunRecord(stages=[StageRecord("disk", "built", 1.0, "k")]),
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release stage's folder for a small pi3 image, made with the real xz and bmaptool."""
    root = tmp_path_factory.mktemp("release")
    mini = make_image(root / "built")
    disk = root / "disk"
    disk.mkdir()
    shutil.move(mini.image, disk / "disk.img")  # a rename: the holes stay
    built = {"kernel_version": KERNEL, "package_count": 2, "packages": ["base-files 13.8", "libc6 2.41-6"], "package_manifest": MANIFEST}
    upstream = {
        "disk": Artefact(disk, {"image_bytes": (disk / "disk.img").stat().st_size, "layout": []}),
        "customize": Artefact(None, {**built, "initramfs": "built"}),
        "squash": Artefact(None, {"squashfs_bytes": 6 << 20}),
        "epoch": Artefact(None, {"source_date_epoch": EPOCH}),
    }
    out = root / "out"
    out.mkdir()
    artefact = ReleaseStage().run(release_inputs(release_url="https://example.org/amberpi/v1/"), upstream, out)
    (out / "publish.json").write_text(json.dumps(artefact.facts["publish"]))
    return out


def test_the_release_publishes_every_artefact_in_order(released: Path) -> None:
    names = ReleaseNames("amberpi-pi3")
    publish = json.loads((released / "publish.json").read_text())
    assert publish == names.published(compressed=True, listed=True)
    assert publish[0] == names.image and publish[-1] == names.report
    report = json.loads((released / names.report).read_text())
    listed = {entry["file"]: entry for entry in report["files"]}
    assert set(listed) == set(publish) - {names.report}, "the report lists every other file"
    assert listed[names.image]["sha256"] == report["sha256"]
    assert report["imager"] == {"file": names.imager, "init_format": imager.INIT_FORMAT, "devices": ["pi3-64bit"]}


def test_the_published_download_verifies(released: Path) -> None:
    lines: list[str] = []
    verify(released / "amberpi-pi3.img.xz", lines.append)
    assert lines[-1] == "OK         amberpi-pi3.img.xz verifies"
    assert "packages   2 (from amberpi-pi3.manifest.json)" in lines


def test_the_block_map_lists_only_the_data_of_a_sparse_image(released: Path) -> None:
    image = released / "amberpi-pi3.img"
    assert image.stat().st_blocks * 512 < image.stat().st_size // 2, "the image stays sparse"
    bmap = ElementTree.parse(released / "amberpi-pi3.img.bmap").getroot()
    assert int(bmap.findtext("ImageSize") or 0) == image.stat().st_size
    mapped, total = int(bmap.findtext("MappedBlocksCount") or 0), int(bmap.findtext("BlocksCount") or 0)
    assert 0 < mapped < total // 2, (mapped, total)


def test_the_package_manifest_is_sorted_json_with_sources_and_licences(released: Path) -> None:
    document = json.loads((released / "amberpi-pi3.manifest.json").read_text())
    assert document["packages"] == MANIFEST and document["package_count"] == 2
    assert document["image"] == "amberpi-pi3.img" and document["architecture"] == "arm64" and document["kernel_version"] == KERNEL
    assert (released / "amberpi-pi3.manifest.json").read_text() == json.dumps(document, indent=1, sort_keys=True) + "\n"


def test_the_imager_list_follows_imagers_schema(released: Path) -> None:
    document = json.loads((released / "amberpi-pi3.rpi-imager.json").read_text())
    validate_imager_list(document)
    (entry,) = document["os_list"]
    image, download = released / "amberpi-pi3.img", released / "amberpi-pi3.img.xz"
    report = json.loads((released / "amberpi-pi3.report.json").read_text())
    assert entry["url"] == "https://example.org/amberpi/v1/amberpi-pi3.img.xz"
    assert entry["bmap_url"] == "https://example.org/amberpi/v1/amberpi-pi3.img.bmap"
    assert entry["extract_size"] == image.stat().st_size and entry["extract_sha256"] == report["sha256"]
    assert entry["image_download_size"] == download.stat().st_size
    assert entry["image_download_sha256"] == report["compressed"]["sha256"]
    assert entry["init_format"] == "cloudinit", "Imager offers its cloud-init customisation"
    assert entry["devices"] == ["pi3-64bit"] and entry["architecture"] == "armv8"
    assert entry["release_date"] == "2023-11-14", "the build's timestamp, not today"


def test_the_schema_catches_what_imager_would_refuse() -> None:
    entry = imager.os_entry(
        name="x", description="y", devices=["pi4-64bit"], url="x.img.xz", extract_size=1, extract_sha256="0" * 64,
        download_size=1, download_sha256="0" * 64, date="2026-01-01",
    )  # fmt: skip
    validate_imager_list({"os_list": [entry]})
    for broken in (
        {k: v for k, v in entry.items() if k != "devices"},
        {**entry, "init_format": "cloud-init"},
        {**entry, "extract_size": "1"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_imager_list({"os_list": [broken]})
    with pytest.raises(jsonschema.ValidationError):
        validate_imager_list({"os_list": [entry], "extra": 1})


def test_download_urls_are_bare_names_without_a_release_url() -> None:
    assert imager.download_url("", "a.img.xz") == "a.img.xz"
    assert imager.download_url("https://h/r", "a.img.xz") == imager.download_url("https://h/r/", "a.img.xz") == "https://h/r/a.img.xz"


def test_a_board_without_imager_tags_writes_no_list_and_withdraws_an_old_one(fake_tools: FakeTools, tmp_path: Path) -> None:
    fake_tools.add("xz", creates="{last}.xz", content=b"xz!")
    fake_tools.add("bmaptool", creates="{argv[3]}", content="<bmap/>")
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "disk.img").write_bytes(b"disk")
    built = {"kernel_version": KERNEL, "package_count": 2, "packages": [], "package_manifest": MANIFEST, "initramfs": "built"}
    upstream = {
        "disk": Artefact(disk, {"image_bytes": 4, "layout": []}),
        "customize": Artefact(None, built),
        "squash": Artefact(None, {"squashfs_bytes": 4}),
        "epoch": Artefact(None, {"source_date_epoch": EPOCH}),
    }
    out = tmp_path / "out"
    out.mkdir()
    artefact = ReleaseStage().run(release_inputs("qemu"), upstream, out)
    assert "amberpi-qemu.rpi-imager.json" in artefact.facts["withdraw"]
    assert artefact.facts["publish"] == ReleaseNames("amberpi-qemu").published(compressed=True, listed=False)


# --- the package manifest -------------------------------------------------------------------

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: glibc

Files: *
Copyright: 1991-2024 Free Software Foundation, Inc.
License: LGPL-2.1+
 This library is free software.

Files: debian/*
Copyright: 2000 Someone
License: GPL-2+ or Artistic

Files: manual/*
License:
 GPL-2

License: LGPL-2.1+
 The full text.
"""


def test_a_dep5_copyright_file_names_its_licences() -> None:
    assert copyright_licences(DEP5) == ["GPL-2+ or Artistic", "LGPL-2.1+"]
    draft = "Format: http://dep.debian.net/deps/dep5\nLicense: MIT\n\nFiles: *\nLicense: MIT\n"
    assert copyright_licences(draft) == ["MIT"]


def test_a_free_form_copyright_file_gives_null() -> None:
    assert copyright_licences("This is the Debian prepackaged version of the GNU C Library.\n\nLicense: LGPL\n") is None
    assert copyright_licences("") is None


def test_the_manifest_reads_dpkg_and_each_packages_copyright(fake_tools: FakeTools, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    docs = tree / "usr/share/doc"
    (docs / "libc6").mkdir(parents=True)
    (docs / "libc6/copyright").write_text(DEP5)
    (docs / "libc-bin").symlink_to("libc6")  # a package whose docs are another's
    (docs / "base-files").mkdir()
    (docs / "base-files/copyright").write_bytes("Free-form text, caf\xe9\n".encode("latin-1"))
    fake_tools.add(
        "dpkg-query",
        stdout="libc6\t2.41-6\tarm64\tglibc\t2.41-6\nbase-files\t13.8\tarm64\t\t\nzlib1g\t1:1.3\tarm64\tzlib\t1:1.3\nlibc-bin\t2.41-6\tarm64\tglibc\t2.41-6\n",
    )
    packages = query_packages(tree)
    assert fake_tools.calls("dpkg-query") == [["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", QUERY_FORMAT]]
    assert [p["name"] for p in packages] == ["base-files", "libc-bin", "libc6", "zlib1g"], "sorted: the same packages, the same manifest"
    by_name = {p["name"]: p for p in packages}
    assert by_name["base-files"] == {**MANIFEST[0], "licenses": None}, "no source field: the binary's own name and version"
    assert by_name["libc6"]["source"] == "glibc" and by_name["libc6"]["licenses"] == ["GPL-2+ or Artistic", "LGPL-2.1+"]
    assert by_name["libc-bin"]["licenses"] == by_name["libc6"]["licenses"], "through the doc folder's symlink"
    assert by_name["zlib1g"]["licenses"] is None, "no copyright file"


# --- the release verb -----------------------------------------------------------------------


def fake_build(output: Path, release_url: str = "https://h/r/") -> Any:
    """A stand-in for the backend's build: writes the board's Imager list as the release stage would."""
    built: list[str] = []

    def build(config: Any) -> int:
        built.append(config.board)
        assert config.compress == "xz"
        devices = load_board(config.board).imager_devices
        if devices:
            url = imager.download_url(release_url, f"{config.name}.img.xz")
            entry = imager.os_entry(
                name=f"AmberPi ({config.board})", description="d", devices=devices, url=url,
                extract_size=1, extract_sha256="0" * 64, download_size=1, download_sha256="0" * 64, date="2026-01-01",
            )  # fmt: skip
            (output / ReleaseNames(config.name).imager).write_text(imager.os_list_text([entry]))
        return 0

    build.built = built  # type: ignore[attr-defined]
    return build


def test_release_builds_every_board_for_download_and_writes_one_imager_list(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    configs = release_configs(None, {"output": str(output), "mirror": MIRROR}, [])
    assert [c.board for c in configs] == list(list_boards()) and all(c.compress == "xz" for c in configs)
    build = fake_build(output)
    assert release(configs, build) == 0
    assert build.built == list(list_boards())
    document = json.loads((output / imager.COMBINED).read_text())
    validate_imager_list(document)
    boards_with_tags = [b for b in list_boards() if load_board(b).imager_devices]
    assert [e["name"] for e in document["os_list"]] == sorted(f"AmberPi ({b})" for b in boards_with_tags)


def test_release_stops_at_the_first_failed_build(tmp_path: Path) -> None:
    configs = release_configs(None, {"output": str(tmp_path), "mirror": MIRROR}, ["pi3", "pi4"])
    assert release(configs, lambda config: 1) == 1
    assert not (tmp_path / imager.COMBINED).exists()


def test_collect_combines_the_lists_in_the_output_folder(tmp_path: Path) -> None:
    build = fake_build(tmp_path)
    for config in release_configs(None, {"output": str(tmp_path), "mirror": MIRROR}, ["pi4", "pi3"]):
        build(config)
    assert collect(tmp_path) == 0
    document = json.loads((tmp_path / imager.COMBINED).read_text())
    assert [e["devices"] for e in document["os_list"]] == [["pi3-64bit"], ["pi4-64bit"]]
    assert collect(tmp_path) == 0 and json.loads((tmp_path / imager.COMBINED).read_text()) == document, "the combined list is not read back"


def test_collect_without_any_list_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no board's Imager list"):
        collect(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "boards", "message"),
    [
        ({"image_name": "mine"}, ["pi3", "pi4"], "every board's image would be called mine"),
        ({"image_name": "amberpi"}, ["pi3"], "would overwrite the combined Imager list"),
        ({}, ["pi3", "pi3"], "--board pi3 given twice"),
    ],
)
def test_release_refuses_names_that_collide(tmp_path: Path, overrides: dict[str, str], boards: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        release_configs(None, {"output": str(tmp_path), "mirror": MIRROR, **overrides}, boards)


def test_the_release_verbs_command_line(tmp_path: Path) -> None:
    from amberpi.cli import parse_args

    args = parse_args(["release", "--board", "pi3", "--board", "pi4", "--release-url", "https://h/r/"])
    assert args.verb == "release" and args.boards == ["pi3", "pi4"] and args.release_url == "https://h/r/"
    assert not hasattr(args, "compress"), "a release is always compressed"
    assert parse_args(["release"]).boards == []
    result = amberpi("release", "--collect", "--output", str(tmp_path), "--mirror", MIRROR)
    assert result.returncode == 2 and "no board's Imager list" in result.stderr
    bad = amberpi("release", "--board", "pi5", "--mirror", MIRROR)
    assert bad.returncode == 2 and "unknown board 'pi5'" in bad.stderr
