"""The built qemu image, read back partition by partition with independent tools."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amberpi.digests import sha256_file
from amberpi.filesystems.fat import list_fat, read_fat_file
from amberpi.filesystems.iso9660 import list_iso, read_iso_file, volume_id
from amberpi.nativecopy import static_busybox
from amberpi.stages import STAGES
from tests.buildtools import hook_config
from tests.conftest import TEST_PASSWORD_HASH, BuiltImage, amberpi, write_test_config
from tests.imagetools import extract_partition, iso_identity, partition_table, squashfs_cat, squashfs_list

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def parts(qemu_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("parts")
    files = {
        "p1": extract_partition(qemu_image.path, 1, folder / "p1.img"),
        "p2": extract_partition(qemu_image.path, 2, folder / "p2.iso"),
        "p3": extract_partition(qemu_image.path, 3, folder / "p3.iso"),
        "p4": extract_partition(qemu_image.path, 4, folder / "p4.img"),
    }
    squashfs = folder / "filesystem.squashfs"
    squashfs.write_bytes(read_iso_file(files["p2"], "/live/filesystem.squashfs"))
    files["squashfs"] = squashfs
    yield files
    # Gigabytes the later (heavier) tests need more.
    shutil.rmtree(folder, ignore_errors=True)


def test_outputs_next_to_the_image(qemu_image: BuiltImage) -> None:
    names = {p.name for p in qemu_image.output.iterdir()}
    expected = {f"amberpi-qemu.{suffix}" for suffix in ("img", "img.sha256", "report.json", "build.log", "packages")}
    assert expected <= names
    assert not [n for n in names if n.endswith(".partial")]
    digest = hashlib.sha256(qemu_image.path.read_bytes()).hexdigest()
    assert (qemu_image.output / "amberpi-qemu.img.sha256").read_text() == f"{digest}  amberpi-qemu.img\n"
    report = qemu_image.report
    assert report["sha256"] == digest and report["board"] == "qemu" and report["backend"] == "native"
    assert report["kernel_version"].endswith("-arm64") and report["package_count"] > 100
    assert [s["name"] for s in report["stages"]] == [stage.name for stage in STAGES if stage.name != "release"]
    assert report["config"]["root_password_hash"] == "(set)", "the report says a hash is set, never which"
    assert TEST_PASSWORD_HASH not in (qemu_image.output / "amberpi-qemu.report.json").read_text()
    assert TEST_PASSWORD_HASH not in (qemu_image.output / "amberpi-qemu.build.log").read_text()
    manifest = (qemu_image.output / "amberpi-qemu.packages").read_text().splitlines()
    assert len(manifest) == report["package_count"] and any(line.startswith("live-boot ") for line in manifest)
    assert sha256_file(qemu_image.output / "amberpi-qemu.packages") == report["packages"]["sha256"]


def test_mbr_has_four_partitions(qemu_image: BuiltImage) -> None:
    table = partition_table(qemu_image.path)
    assert table["label"] == "dos"
    assert table["id"] == f"0x{qemu_image.report['image_id']}"
    partitions = table["partitions"]
    assert [p["type"] for p in partitions] == ["c", "83", "83", "83"]
    assert partitions[0].get("bootable") is True
    assert not any(p.get("bootable") for p in partitions[1:])
    assert all(p["start"] % 8192 == 0 for p in partitions), "4 MiB alignment"


def test_boot_partition_has_grub(parts: dict[str, Path], qemu_image: BuiltImage) -> None:
    names = list_fat(parts["p1"])
    assert "/EFI/BOOT/BOOTAA64.EFI" in names and "/grub/grub.cfg" in names
    assert read_fat_file(parts["p1"], "/EFI/BOOT/BOOTAA64.EFI")[:2] == b"MZ"
    grub_cfg = read_fat_file(parts["p1"], "/grub/grub.cfg").decode()
    labels = qemu_image.report["labels"]
    assert f"live-media=/dev/disk/by-label/{labels['system']}" in grub_cfg
    assert f"persistence-label={labels['persistence']}" in grub_cfg
    assert "console=ttyAMA0,115200" in grub_cfg
    assert not any(name.endswith(".elf") for name in names), "no Pi firmware on the qemu board"


def test_system_partition(parts: dict[str, Path], qemu_image: BuiltImage) -> None:
    files = list_iso(parts["p2"])
    assert {"/live/filesystem.squashfs", "/live/vmlinuz", "/live/initrd.img", "/.disk/info"} <= set(files)
    assert volume_id(parts["p2"]) == qemu_image.report["labels"]["system"]
    assert files["/live/filesystem.squashfs"] == qemu_image.report["squashfs_bytes"]


def test_kernel_partition_checksums(parts: dict[str, Path], qemu_image: BuiltImage) -> None:
    files = list_iso(parts["p3"])
    assert {"/vmlinuz", "/initrd.img", "/version", "/SHA256SUMS"} <= set(files)
    assert volume_id(parts["p3"]) == qemu_image.report["labels"]["kernel"]
    assert read_iso_file(parts["p3"], "/version").decode().strip() == qemu_image.report["kernel_version"]
    for line in read_iso_file(parts["p3"], "/SHA256SUMS").decode().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256(read_iso_file(parts["p3"], f"/{name}")).hexdigest() == digest
    # p3's kernel is gzip-compressed (GRUB reads it at every boot), p2's factory copy is not.
    factory_kernel = read_iso_file(parts["p2"], "/live/vmlinuz")
    assert factory_kernel[56:60] == b"ARM\x64", "p2 holds the arm64 Image as Debian ships it"
    kernel = read_iso_file(parts["p3"], "/vmlinuz")
    assert gzip.decompress(kernel) == factory_kernel and len(kernel) < len(factory_kernel) / 2
    # GRUB boots p3 only when it holds the write grubenv names: its volume date, as `probe --fs-uuid` shows it.
    grubenv = read_fat_file(parts["p1"], "/grub/grubenv").decode()
    assert f"\namberpi_krn_uuid={iso_identity(parts['p3'])}\n" in grubenv


def test_initrd_compressed_for_quick_updates(parts: dict[str, Path]) -> None:
    """The modules (.ko.xz) sit in the initrd's uncompressed first archive; the rest is zstd at
    level 1 (etc/initramfs-tools/conf.d/amberpi-compress), which every kernel update on the
    device makes again. A streamed zstd frame's window tells the level: 2^19 bytes at level 1,
    2^22 at mkinitramfs's default 9."""
    initrd = read_iso_file(parts["p3"], "/initrd.img")
    frame = initrd.find(b"\x28\xb5\x2f\xfd")
    assert initrd.startswith(b"070701") and frame > 0, "an uncompressed cpio archive, then a zstd frame"
    header, window = initrd[frame + 4], initrd[frame + 5]
    assert not header & 0x20, "streamed (no single-segment frame): the window descriptor follows"
    assert 10 + (window >> 3) == 19, f"zstd window 2^{10 + (window >> 3)}: not level 1"


def uncompressed_cpio_names(initrd: bytes) -> list[str]:
    """Member names of the initrd's leading uncompressed cpio archives (newc), where the modules are."""
    names, at = [], 0
    while initrd.startswith(b"070701", at):
        name_size, file_size = int(initrd[at + 94 : at + 102], 16), int(initrd[at + 54 : at + 62], 16)
        name = initrd[at + 110 : at + 110 + name_size - 1].decode()
        at = (at + 110 + name_size + 3) & ~3
        at = (at + file_size + 3) & ~3
        if name == "TRAILER!!!":
            while at < len(initrd) and initrd[at] == 0:  # archives are padded apart
                at += 1
        else:
            names.append(name)
    return names


def test_initrd_carries_the_modules_that_find_the_boot_medium_and_no_network_drivers(parts: dict[str, Path]) -> None:
    """hooks/amberpi-modules (MODULES=list): SD/MMC hosts, USB hosts and storage, virtio; not
    MODULES=most's network, GPU and InfiniBand drivers or SCSI host adapters (but for a few
    that kept modules depend on)."""
    modules = {name.rsplit("/", 1)[-1].split(".ko")[0]: name for name in uncompressed_cpio_names(read_iso_file(parts["p3"], "/initrd.img"))}
    modules = {name: path for name, path in modules.items() if ".ko" in path}
    # The Pi 3 and 4 SD hosts, USB (dwc2; the Pi 4's VL805 on PCIe: xhci-pci, its reset line), virtio.
    wanted = {"sdhci-iproc", "bcm2835", "dwc2", "usb-storage", "uas", "sd_mod", "reset-raspberrypi", "xhci-pci", "virtio_blk"}
    wanted |= {"overlay", "isofs"}
    assert wanted <= set(modules), f"missing: {wanted - set(modules)}"
    network = [path for path in modules.values() if "/drivers/net/" in path]
    assert not network, network[:10]
    # A few come along as dependencies (USB-C DisplayPort and I2C HID need drm); MODULES=most took 42.
    graphics = [path for path in modules.values() if "/drivers/gpu/" in path or "/drivers/infiniband/" in path]
    assert len(graphics) < 25, graphics
    assert "mpt3sas" not in modules and "megaraid_sas" not in modules, "no SCSI host adapters"
    assert len(modules) < 1100, f"{len(modules)} modules: MODULES=most (and live-boot's network drivers) take about 1350"


def test_initramfs_module_copies_ran_natively_with_a_static_busybox(qemu_image: BuiltImage) -> None:
    """A static busybox on the host (Debian's busybox-static) takes dracut-install's copies off
    qemu-user (amberpi/nativecopy.py); test_a_build_from_scratch_gives_the_same_image compares such
    an initrd with one from the cache. Without one, the build says the copies ran emulated."""
    log = (qemu_image.output / "amberpi-qemu.build.log").read_text()
    if "update-initramfs -v" not in log:
        pytest.skip("this session's initrd came from the cache: no update-initramfs ran")
    if static_busybox() is None:
        assert "initramfs: module copies emulated (no static busybox on this host" in log
        pytest.skip("no static busybox on this host (busybox-static): the copies ran emulated, as the log says")
    assert "initramfs: module copies native (" in log
    assert "dracut-install: cp " in log, "dracut-install copied the modules (update-initramfs -v shows each)"


def test_persistence_partition(parts: dict[str, Path], qemu_image: BuiltImage) -> None:
    conf = subprocess.run(["debugfs", "-R", "cat /persistence.conf", str(parts["p4"])], capture_output=True, text=True, check=True)
    assert conf.stdout == "/ union\n"
    label = subprocess.run(["e2label", str(parts["p4"])], capture_output=True, text=True, check=True).stdout.strip()
    assert label == qemu_image.report["labels"]["persistence"]
    fsck = subprocess.run(["e2fsck", "-fn", str(parts["p4"])], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_rootfs_has_no_baked_secrets(parts: dict[str, Path], qemu_image: BuiltImage) -> None:
    squashfs = parts["squashfs"]
    listing = squashfs_list(squashfs)
    assert not [p for p in listing if p.startswith("etc/ssh/ssh_host_")], "SSH host keys are made on first boot"
    assert squashfs_cat(squashfs, "etc/machine-id") == b""
    shadow = squashfs_cat(squashfs, "etc/shadow").decode()
    assert f"root:{TEST_PASSWORD_HASH}:" in shadow
    assert not [p for p in listing if p.startswith("var/lib/apt/lists/") and p.endswith("Packages")]
    assert "usr/sbin/update-initramfs" in listing and "usr/sbin/update-initramfs.distrib" not in listing
    assert "usr/sbin/policy-rc.d" not in listing


def test_no_account_opens_without_a_secret(parts: dict[str, Path]) -> None:
    """Security: every account's password is locked or a hash (root's is the test's); none is empty."""
    for line in squashfs_cat(parts["squashfs"], "etc/shadow").decode().splitlines():
        name, password = line.split(":")[:2]
        assert password, f"{name} has an empty password"
        assert password.startswith(("!", "*")) or (name == "root" and password == TEST_PASSWORD_HASH), f"{name}: {password[:3]}..."
    assert "var/lib/systemd/random-seed" not in squashfs_list(parts["squashfs"]), "each device seeds its own"


def test_the_factory_kernel_package_is_held(parts: dict[str, Path], qemu_image: BuiltImage) -> None:
    """Its modules are the last-resort kernel's: no autoremove or same-name upgrade on the device may take them."""
    status = squashfs_cat(parts["squashfs"], "var/lib/dpkg/status").decode()
    entry = next(block for block in status.split("\n\n") if f"Package: linux-image-{qemu_image.report['kernel_version']}\n" in block)
    assert "Status: hold ok installed" in entry


def test_apt_sources_point_at_the_mirror(parts: dict[str, Path], qemu_image: BuiltImage) -> None:
    sources = squashfs_cat(parts["squashfs"], "etc/apt/sources.list.d/debian.sources").decode()
    assert f"URIs: {qemu_image.report['mirror']}\n" in sources
    assert "cache" not in sources
    assert f"Suites: {qemu_image.report['suite']} " in sources


def test_same_inputs_give_the_same_image(qemu_image: BuiltImage, tmp_path: Path) -> None:
    """Reproducible: two builds of one config with a fixed image id are byte-identical.

    Both reuse the cached rootfs and squashfs (rebuilding them takes minutes); the
    stages that write p1-p4 and the disk run again in each, at another wall-clock time.
    """
    config = write_test_config(tmp_path, image_id="0badcafe")
    digests = []
    for run, compress in (("first", "none"), ("second", "xz")):
        # Strict: the rootfs and squashfs the session's image made are reused, or the build fails.
        amberpi("--config", str(config), "--output", str(tmp_path / run), "--compress", compress, "--incremental", "strict", check=True)
        report = json.loads((tmp_path / run / "amberpi-qemu.report.json").read_text())
        assert {s["name"]: s["status"] for s in report["stages"]}["disk"] == "built"
        assert report["source_date_epoch"] == qemu_image.report["source_date_epoch"]
        digests.append(report["sha256"])
    assert digests[0] == digests[1]
    # The download form: the .img.xz unpacks to the very image, and its checksum file matches.
    compressed = tmp_path / "second" / "amberpi-qemu.img.xz"
    unpacker = subprocess.Popen(["xz", "-dc", str(compressed)], stdout=subprocess.PIPE)
    assert unpacker.stdout
    unpacked = hashlib.sha256()
    while chunk := unpacker.stdout.read(1 << 20):
        unpacked.update(chunk)
    assert unpacker.wait() == 0
    assert unpacked.hexdigest() == digests[1]
    assert report["compressed"]["bytes"] == compressed.stat().st_size
    expected = f"{report['compressed']['sha256']}  amberpi-qemu.img.xz\n"
    assert (tmp_path / "second" / "amberpi-qemu.img.xz.sha256").read_text() == expected
    assert sha256_file(compressed) == report["compressed"]["sha256"]


def test_a_build_from_scratch_gives_the_same_image(qemu_image: BuiltImage, tmp_path: Path) -> None:
    """Reproducible from scratch: a fresh debootstrap, apt run and initramfs (an empty cache)
    give the very image a build from the cache gives, when the package versions match.

    When the session's image was itself built from an empty cache (CI, a fresh machine), it is
    the from-scratch build: a strict rebuild of it from the cache, with its image id, is compared
    with it. Otherwise both builds are made here, the second with an empty cache of its own.
    """
    outputs = {"cached": tmp_path / "cached", "scratch": tmp_path / "scratch"}
    reports = {}
    if {s["status"] for s in qemu_image.report["stages"]} == {"built"}:
        config = write_test_config(tmp_path, image_id=qemu_image.report["image_id"])
        outputs["scratch"], reports["scratch"] = qemu_image.output, qemu_image.report
        amberpi("--config", str(config), "--output", str(outputs["cached"]), "--incremental", "strict", check=True)
        reports["cached"] = json.loads((outputs["cached"] / "amberpi-qemu.report.json").read_text())
    else:
        config = write_test_config(tmp_path, image_id="5ca1ab1e")
        for run, extra in (("cached", []), ("scratch", ["--cache-dir", str(tmp_path / "empty-cache")])):
            amberpi("--config", str(config), "--output", str(outputs[run]), *extra, check=True)
            reports[run] = json.loads((outputs[run] / "amberpi-qemu.report.json").read_text())
    assert {s["status"] for s in reports["scratch"]["stages"]} == {"built"}
    if reports["cached"]["packages"]["sha256"] != reports["scratch"]["packages"]["sha256"]:
        changed = set((outputs["scratch"] / "amberpi-qemu.packages").read_text().splitlines()) - set(
            (outputs["cached"] / "amberpi-qemu.packages").read_text().splitlines()
        )
        pytest.skip(f"the archive has moved on since the cache was filled ({len(changed)} newer packages, e.g. {sorted(changed)[:3]})")
    assert reports["scratch"]["source_date_epoch"] == reports["cached"]["source_date_epoch"]
    images = {run: outputs[run] / "amberpi-qemu.img" for run in reports}
    for number in (2, 3):
        parts = [sha256_file(extract_partition(images[run], number, tmp_path / f"{run}-p{number}")) for run in images]
        assert parts[0] == parts[1], f"p{number} differs between the cached and the from-scratch build"
    assert reports["scratch"]["sha256"] == reports["cached"]["sha256"]


def squashfs_of(image: Path, folder: Path) -> Path:
    """The image's live/filesystem.squashfs, copied out of p2."""
    squashfs = folder / "filesystem.squashfs"
    squashfs.write_bytes(read_iso_file(extract_partition(image, 2, folder / "p2.iso"), "/live/filesystem.squashfs"))
    return squashfs


def test_what_a_hook_sees_is_keyed(qemu_image: BuiltImage, tmp_path: Path) -> None:
    """A hook sees only keyed values: a new image id reuses the cached rootfs (strict mode proves it) and
    reaches no hook; editing a file a hook reads rebuilds the rootfs, and the initrd, whose inputs did
    not change, is reused byte for byte."""
    # A fresh word per run: content the shared cache has seen before would make the rootfs "cached".
    run = uuid.uuid4().hex[:8]
    includes = tmp_path / "includes"
    (includes / "etc").mkdir(parents=True)
    (includes / "etc" / "amberpi-test-word").write_text(f"first {run}\n")
    config = hook_config(tmp_path, "env | sort > /etc/amberpi-hook-env\ncat /etc/amberpi-test-word > /etc/motd\n")
    config.write_text(config.read_text() + f"includes_dirs: [{includes}]\n")

    def build(name: str, *args: str) -> dict[str, Any]:
        amberpi("--config", str(config), "--output", str(tmp_path / name), *args, check=True)
        return dict(json.loads((tmp_path / name / "amberpi-qemu.report.json").read_text()))

    first = build("first")
    second = build("second", "--incremental", "strict")
    statuses = {s["name"]: s["status"] for s in second["stages"]}
    assert second["image_id"] != first["image_id"], "each build draws its own image id"
    assert (statuses["customize"], statuses["squash"], statuses["bootfiles"]) == ("skipped", "cached", "cached")
    assert all(statuses[name] == "built" for name in ("bootfs", "iso", "persistence", "disk"))
    squashfs = squashfs_of(tmp_path / "second" / "amberpi-qemu.img", tmp_path)
    hook_env = dict(line.split("=", 1) for line in squashfs_cat(squashfs, "etc/amberpi-hook-env").decode().splitlines())
    assert hook_env["SOURCE_DATE_EPOCH"] == str(second["source_date_epoch"])
    assert (hook_env["AMBERPI_SUITE"], hook_env["AMBERPI_HOSTNAME"]) == (second["suite"], "amberpi")
    assert not [name for name in hook_env if "IMAGE_ID" in name]
    assert not [value for value in hook_env.values() if first["image_id"] in value or second["image_id"] in value]

    (includes / "etc" / "amberpi-test-word").write_text(f"second {run}\n")
    third = build("third")
    statuses = {s["name"]: s["status"] for s in third["stages"]}
    assert (statuses["packages"], statuses["customize"], statuses["squash"]) == ("cached", "built", "built")
    assert third["initramfs"] == "reused"
    images = [tmp_path / name / "amberpi-qemu.img" for name in ("second", "third")]
    initrds = [read_iso_file(extract_partition(image, 3, tmp_path / f"p3-{n}.iso"), "/initrd.img") for n, image in enumerate(images)]
    assert initrds[0] == initrds[1]
    assert squashfs_cat(squashfs_of(images[1], tmp_path), "etc/motd") == f"second {run}\n".encode()
