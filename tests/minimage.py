"""A small disk image laid out like AmberPi's (FAT p1, ISO9660 p2 and p3, ext4 p4), made in a
second with the build's own writers, and the files a build puts beside it: for the tests of
`verify` and `flash`, which read images without building one."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from amberpi.filesystems.ext4 import make_ext4
from amberpi.filesystems.fat import make_fat
from amberpi.filesystems.iso9660 import make_iso
from amberpi.identity import ImageIdentity
from amberpi.layout import plan_layout
from amberpi.stages.disk import write_disk
from amberpi.stages.release import ReleaseNames
from tests.conftest import EPOCH
from tests.imagetools import sha256_file

IDENTITY = ImageIdentity("1a2b3c4d")
KERNEL = "6.12.9-arm64"
DISK_INFO = f"AmberPi 0.test trixie arm64 board=pi3 image={IDENTITY.image_id} kernel={KERNEL}\n"
# More than verify keeps of an ISO partition's start: .disk/ lies beyond it, as on a real image.
SQUASHFS_BYTES = 6 << 20


@dataclass
class MiniImage:
    folder: Path
    names: ReleaseNames

    @property
    def image(self) -> Path:
        return self.folder / self.names.image

    @property
    def compressed(self) -> Path:
        return self.folder / self.names.compressed


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def noise(size: int, seed: int) -> bytes:
    """Bytes that do not compress (a squashfs, a kernel), the same every run."""
    return random.Random(seed).randbytes(size)


def make_image(folder: Path, name: str = "amberpi-pi3", *, identity: ImageIdentity = IDENTITY) -> MiniImage:
    """The image, its .sha256 and a report as a build writes them, in `folder`."""
    work = folder / "work"
    conf = (
        f"board=pi3\nimage_id={identity.image_id}\nsystem_label={identity.system_label}\n"
        f"kernel_label={identity.kernel_label}\npersistence_label={identity.persistence_label}\nfactory_version={KERNEL}\n"
    )
    system = {"live/filesystem.squashfs": noise(SQUASHFS_BYTES, 1), ".disk/info": DISK_INFO.encode(), ".disk/amberpi.conf": conf.encode()}
    kernel = {"vmlinuz": noise(1 << 20, 2), "version": f"{KERNEL}\n".encode()}
    files = {
        "boot": work / "p1.img",
        "system": work / "p2.iso",
        "kernel": work / "p3.iso",
        "persistence": work / "p4.img",
    }
    make_fat(
        tree(work / "t1", {"EFI/BOOT/BOOTAA64.EFI": b"grub"}),
        files["boot"],
        size_mib=64,
        label="AMBERPI",
        volume_id=identity.image_id,
        epoch=EPOCH,
    )
    make_iso(tree(work / "t2", system), files["system"], volume_id=identity.system_label, epoch=EPOCH)
    make_iso(tree(work / "t3", kernel), files["kernel"], volume_id=identity.kernel_label, epoch=EPOCH)
    fs_uuid = identity.partition_uuid("persistence")
    make_ext4(
        tree(work / "t4", {"persistence.conf": b"/ union\n"}),
        files["persistence"],
        size_mib=8,
        label=identity.persistence_label,
        fs_uuid=fs_uuid,
        epoch=EPOCH,
    )
    partitions = plan_layout({role: path.stat().st_size for role, path in files.items()})
    names = ReleaseNames(name)
    image = folder / names.image
    write_disk(image, partitions, files, identity.image_id)
    digest = sha256_file(image)
    (folder / names.checksum).write_text(f"{digest}  {names.image}\n")
    report = {
        "image": names.image,
        "sha256": digest,
        "image_bytes": image.stat().st_size,
        "image_id": identity.image_id,
        "kernel_version": KERNEL,
        "package_count": 3,
        "labels": identity.labels(),
    }
    (folder / names.report).write_text(json.dumps(report, indent=2) + "\n")
    return MiniImage(folder, names)


def compress(mini: MiniImage) -> Path:
    """The .img.xz and its .sha256, as a release writes them (and the sizes into the report)."""
    import lzma

    data = lzma.compress(mini.image.read_bytes(), preset=0)
    mini.compressed.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (mini.folder / mini.names.compressed_checksum).write_text(f"{digest}  {mini.names.compressed}\n")
    report_path = mini.folder / mini.names.report
    report = json.loads(report_path.read_text())
    report["compressed"] = {"file": mini.names.compressed, "bytes": len(data), "sha256": digest}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return mini.compressed


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)
