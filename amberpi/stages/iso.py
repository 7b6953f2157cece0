"""iso: p2, the read-only system partition, and p3, the kernel partition (pycdlib)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi import __version__
from amberpi.config import Board, Resilience, gpio_line
from amberpi.context import BuildContext
from amberpi.digests import sha256_file
from amberpi.errors import StageError
from amberpi.filesystems.iso9660 import make_iso
from amberpi.identity import ImageIdentity
from amberpi.render import write_rendered
from amberpi.stages.base import Artefact, Stage
from amberpi.stages.persistence import persistence_entries
from amberpi.trees import gzip_file, link_or_copy

KERNEL_FILES = ("vmlinuz", "initrd.img")
# A press shorter than this is noise on the line, not a person.
HALT_DEBOUNCE_MS = 50


@dataclass(frozen=True)
class DeviceProfile:
    """The resilience profile as the device tools read it, with the board's GPIO lines resolved."""

    default_mode: str
    maintenance_mode: str
    jumper_chip: str
    jumper_line: str
    jumper_active: str
    halt_chip: str
    halt_line: str
    halt_active: str
    halt_debounce_ms: int
    journal_save: bool
    journal_save_minutes: int
    journal_save_max_mib: int
    grow_persistence: bool


def device_profile(resilience: Resilience, board: Board) -> DeviceProfile:
    jumper_chip, _, jumper_line = gpio_line(resilience.jumper, board.gpio_jumper).partition(":")
    halt_chip, _, halt_line = gpio_line(resilience.halt_button, board.gpio_halt).partition(":")
    return DeviceProfile(
        default_mode=resilience.mode,
        maintenance_mode=resilience.maintenance_mode,
        jumper_chip=jumper_chip,
        jumper_line=jumper_line,
        jumper_active=resilience.jumper_active,
        halt_chip=halt_chip,
        halt_line=halt_line,
        halt_active=resilience.halt_active,
        halt_debounce_ms=HALT_DEBOUNCE_MS,
        journal_save=resilience.journal_save,
        journal_save_minutes=resilience.journal_save_minutes,
        journal_save_max_mib=resilience.journal_max_mib,
        grow_persistence=resilience.grow_persistence,
    )


@dataclass(frozen=True)
class IsoInputs:
    identity: ImageIdentity
    board: str
    suite: str
    device_trees: tuple[str, ...]
    kernel_size_mib: int
    amberpi_version: str
    profile: DeviceProfile
    persistence_entries: tuple[str, ...]


def stage_system_tree(inputs: IsoInputs, squashfs: Path, boot: Path, facts: Mapping[str, object], tree: Path) -> None:
    live = tree / "live"
    link_or_copy(squashfs, live / "filesystem.squashfs")
    for name in KERNEL_FILES:
        link_or_copy(boot / name, live / name)
    identity = inputs.identity
    write_rendered(
        tree / ".disk" / "info",
        "disk-info.j2",
        version=inputs.amberpi_version,
        suite=inputs.suite,
        board=inputs.board,
        image_id=identity.image_id,
        kernel=facts["kernel_version"],
    )
    write_rendered(
        tree / ".disk" / "amberpi.conf",
        "amberpi.conf.j2",
        board=inputs.board,
        image_id=identity.image_id,
        system_label=identity.system_label,
        kernel_label=identity.kernel_label,
        persistence_label=identity.persistence_label,
        factory_version=facts["kernel_version"],
        device_trees=inputs.device_trees,
        grubenv_offset=facts["grubenv_offset"],
    )
    # The device reads these two through /etc/amberpi (links made by the customize stage).
    write_rendered(tree / ".disk" / "resilience.conf", "resilience.conf.j2", profile=inputs.profile)
    write_rendered(tree / ".disk" / "persistence.conf", "persistence.conf.j2", entries=inputs.persistence_entries)


def stage_kernel_tree(inputs: IsoInputs, boot: Path, kernel_version: str, tree: Path) -> None:
    """The kernel partition: kernel (gzip-compressed), initrd, the board's DTBs, version and checksums.

    The arm64 kernel is an uncompressed Image (38 MB); GRUB reads it twice at every boot
    (its checksum, then the load) through the firmware's block I/O, which on a Pi is U-Boot's
    SD driver. GRUB's gzio filter undoes the gzip as it loads: a third of the bytes to read."""
    gzip_file(boot / "vmlinuz", tree / "vmlinuz")
    link_or_copy(boot / "initrd.img", tree / "initrd.img")
    for dtb in inputs.device_trees:
        link_or_copy(boot / "dtbs" / dtb, tree / "dtbs" / dtb)
    (tree / "version").write_text(kernel_version + "\n")
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    sums = [(str(p.relative_to(tree)), sha256_file(p)) for p in files]
    write_rendered(tree / "SHA256SUMS", "SHA256SUMS.j2", sums=sums)


class IsoStage(Stage[IsoInputs]):
    name = "iso"
    version = 4
    needs = ("squash", "bootfiles")
    uses_facts = ("customize", "bootfs", "epoch")

    def inputs(self, build: BuildContext) -> IsoInputs:
        return IsoInputs(
            build.identity,
            build.board.name,
            build.config.suite,
            tuple(build.board.device_trees),
            build.config.kernel_size_mib,
            __version__,
            device_profile(build.config.resilience, build.board),
            persistence_entries(build.config.resilience.persistent_paths),
        )

    def title(self, inputs: IsoInputs) -> str:
        return "Writing the system and kernel partitions (ISO9660)"

    def run(self, inputs: IsoInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        boot = upstream["bootfiles"].folder / "boot"
        kernel_version = str(upstream["customize"].facts["kernel_version"])
        facts = {"kernel_version": kernel_version, "grubenv_offset": upstream["bootfs"].facts["grubenv_offset"]}
        system_tree, kernel_tree = out / "system", out / "kernel"
        stage_system_tree(inputs, upstream["squash"].folder / "filesystem.squashfs", boot, facts, system_tree)
        stage_kernel_tree(inputs, boot, kernel_version, kernel_tree)
        epoch = int(upstream["epoch"].facts["source_date_epoch"])
        make_iso(system_tree, out / "p2.iso", volume_id=inputs.identity.system_label, epoch=epoch)
        make_iso(kernel_tree, out / "p3.iso", volume_id=inputs.identity.kernel_label, epoch=epoch)
        kernel_bytes = (out / "p3.iso").stat().st_size
        if kernel_bytes > inputs.kernel_size_mib << 20:
            raise StageError(
                f"the kernel partition needs {-(-kernel_bytes >> 20)} MiB but kernel_size_mib is {inputs.kernel_size_mib}",
                where="stage iso, p3",
                hint="raise kernel_size_mib in your config",
            )
        return Artefact(out, {"system_bytes": (out / "p2.iso").stat().st_size, "kernel_bytes": kernel_bytes})
