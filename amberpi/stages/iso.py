"""iso: p2, the read-only system partition, and p3, the kernel partition (pycdlib)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amberpi import __version__
from amberpi.context import BuildContext
from amberpi.files import link_or_copy, sha256_file
from amberpi.isofs import make_iso
from amberpi.render import write_rendered
from amberpi.stages.base import Artefact, Stage

KERNEL_FILES = ("vmlinuz", "initrd.img")


def stage_system_tree(ctx: BuildContext, squash: Artefact, bootfs: Artefact, tree: Path) -> None:
    live = tree / "live"
    link_or_copy(squash.path / "filesystem.squashfs", live / "filesystem.squashfs")
    for name in KERNEL_FILES:
        link_or_copy(squash.path / "boot" / name, live / name)
    write_rendered(
        tree / ".disk" / "info",
        "disk-info.j2",
        version=__version__,
        suite=ctx.config.suite,
        board=ctx.board.name,
        image_id=ctx.image_id,
        kernel=squash.meta["kernel_version"],
    )
    write_rendered(
        tree / ".disk" / "amberpi.conf",
        "amberpi.conf.j2",
        board=ctx.board.name,
        image_id=ctx.image_id,
        system_label=ctx.system_label,
        kernel_label=ctx.kernel_label,
        persistence_label=ctx.persistence_label,
        factory_version=squash.meta["kernel_version"],
        device_trees=ctx.board.device_trees,
        grubenv_offset=bootfs.meta["grubenv_offset"],
    )


def stage_kernel_tree(ctx: BuildContext, squash: Artefact, tree: Path) -> None:
    """The kernel partition: kernel, initrd, the board's DTBs, version and checksums."""
    boot = squash.path / "boot"
    for name in KERNEL_FILES:
        link_or_copy(boot / name, tree / name)
    for dtb in ctx.board.device_trees:
        link_or_copy(boot / "dtbs" / dtb, tree / "dtbs" / dtb)
    (tree / "version").write_text(squash.meta["kernel_version"] + "\n")
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    sums = [(str(p.relative_to(tree)), sha256_file(p)) for p in files]
    write_rendered(tree / "SHA256SUMS", "SHA256SUMS.j2", sums=sums)


class IsoStage(Stage):
    name = "iso"
    title = "Writing the system and kernel partitions (ISO9660)"
    version = 2
    needs = ("squash", "bootfs")

    def key_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        return {"image_id": ctx.image_id, "device_trees": ctx.board.device_trees}

    def run(self, ctx: BuildContext, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        squash = upstream["squash"]
        system_tree, kernel_tree = out / "system", out / "kernel"
        stage_system_tree(ctx, squash, upstream["bootfs"], system_tree)
        stage_kernel_tree(ctx, squash, kernel_tree)
        epoch = squash.meta["source_date_epoch"]
        make_iso(system_tree, out / "p2.iso", volume_id=ctx.system_label, epoch=epoch)
        make_iso(kernel_tree, out / "p3.iso", volume_id=ctx.kernel_label, epoch=epoch)
        kernel_bytes = (out / "p3.iso").stat().st_size
        limit = ctx.config.kernel_size_mib << 20
        if kernel_bytes > limit:
            from amberpi.errors import StageError

            raise StageError(
                f"the kernel partition needs {kernel_bytes >> 20} MiB but kernel_size_mib is {ctx.config.kernel_size_mib}",
                where="stage iso, p3",
                hint="raise kernel_size_mib in your config",
            )
        return Artefact(out, {"system_bytes": (out / "p2.iso").stat().st_size, "kernel_bytes": kernel_bytes})
