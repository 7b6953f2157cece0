"""bootfs: p1, the FAT32 boot partition: GRUB, its menu, and the Pi firmware chain."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.config import ConfigTxtSection, gpio_line
from amberpi.context import BuildContext
from amberpi.errors import StageError, ToolError
from amberpi.filesystems.fat import make_fat
from amberpi.filesystems.iso9660 import iso_identity
from amberpi.identity import ImageIdentity
from amberpi.kernelstates import INITIAL_STATE
from amberpi.render import render, write_rendered
from amberpi.run import run
from amberpi.stages.base import Artefact, FileInput, Stage, resource
from amberpi.stages.firmware import FIRMWARE_DIR, UBOOT_DIR

GRUB_TIMEOUT = 3
GRUBENV_BYTES = 1024
UBOOT_NAME = "u-boot.bin"
FIRMWARE_PATTERNS = ("bootcode.bin", "start*.elf", "fixup*.dat", "LICENCE*")
# cloud-init NoCloud's files, as Raspberry Pi Imager writes them to p1's root; the
# device applies them at first boot (amberpi-firstboot).
FIRSTBOOT_FILES = ("user-data", "network-config", "meta-data")


# The menu's title for each mode, and the order marker files on p1 are honoured in:
# lowest first, so the safest mode wins when a person left several there.
MODE_TITLES = {
    "persistent": "persistent (changes kept)",
    "readonly": "read-only (changes in RAM, the card never written)",
    "toram": "run from RAM (nothing kept; the card may be removed)",
    "toram-persistent": "run from RAM, changes kept",
}
# One key at GRUB's menu boots the mode (shown in the entry's title).
MODE_HOTKEYS = {"persistent": "p", "readonly": "r", "toram": "t", "toram-persistent": "k"}
MARKER_ORDER = ("persistent", "toram-persistent", "toram", "readonly")
# Modes that leave p4 out: only the factory kernel's modules are there (in the squashfs).
MODES_WITHOUT_P4 = ("toram",)
# Modes that write nothing to the card: no kernel trial (it counts in grubenv, and confirms).
MODES_WITHOUT_WRITES = ("readonly", "toram")


@dataclass(frozen=True)
class BootModes:
    """The resilience profile as far as GRUB and the initramfs take part in it."""

    default: str
    panic_reboot_seconds: int
    jumper: str  # gpiochipN:LINE, or "" for none
    jumper_active: str
    maintenance_mode: str
    toram_margin_mib: int


@dataclass(frozen=True)
class BootfsInputs:
    identity: ImageIdentity
    board: str
    firmware: str
    serial_console: str
    uboot: str
    device_trees: tuple[str, ...]
    config_txt: tuple[ConfigTxtSection, ...]
    extra_cmdline: str
    kernel_tries: int
    timeout: int
    size_mib: int
    modes: BootModes
    firstboot: tuple[FileInput, ...]
    # The device's own reader of those files: the build checks them with it.
    firstboot_reader: Path = resource()
    firstboot_dir: str = resource()


def kernel_cmdline(inputs: BootfsInputs, system_bytes: int, factory_version: str) -> str:
    """What every boot passes, whatever the mode: live-boot uses only this image's partitions."""
    modes = inputs.modes
    # toram copies the whole system partition to RAM; with too little room beside it
    # for the margin, the initramfs boots readonly instead.
    toram_mib = -(-system_bytes >> 20) + modes.toram_margin_mib
    args = [
        "boot=live",
        f"live-media=/dev/disk/by-label/{inputs.identity.system_label}",
        f"amberpi.id={inputs.identity.image_id}",
        # Persistence is a partition found by its label: live-boot then never mounts
        # other partitions (p1's FAT read-write among them) to look for persistence files.
        "persistence-storage=filesystem",
        # The kernel whose modules are in the squashfs: any other's live on p4.
        f"amberpi.factory={factory_version}",
        "console=tty1",
        f"console={inputs.serial_console}",
        # A kernel that panics reboots, so GRUB can count the try and fall back.
        f"panic={modes.panic_reboot_seconds}",
        f"amberpi.toram_mib={toram_mib}",
        # p4 is on the disk p2 was found on, so its driver is loaded already: skip live-boot's
        # USB module load, udev trigger and settle, and up-to-5 s wait for new disks (12 s under TCG).
        "quickusbmodules",
    ]
    if modes.jumper:
        args.append(f"amberpi.jumper={modes.jumper}:active-{modes.jumper_active}:{modes.maintenance_mode}")
    if inputs.extra_cmdline:
        args.append(inputs.extra_cmdline)
    return " ".join(args)


def mode_args(identity: ImageIdentity) -> dict[str, str]:
    """What each mode tells live-boot. readonly shows p4 as it is but writes nothing to it."""
    persistence = f"persistence persistence-label={identity.persistence_label}"
    return {
        "persistent": persistence,
        "readonly": f"{persistence} persistence-read-only",
        "toram": "toram",
        "toram-persistent": f"toram {persistence}",
    }


def render_grub_cfg(inputs: BootfsInputs, factory_version: str, system_bytes: int) -> str:
    return render(
        "grub.cfg.j2",
        board=inputs.board,
        image_id=inputs.identity.image_id,
        timeout=inputs.timeout,
        cmdline=kernel_cmdline(inputs, system_bytes, factory_version),
        kernel_label=inputs.identity.kernel_label,
        factory_version=factory_version,
        tries=inputs.kernel_tries,
        default_mode=inputs.modes.default,
        mode_args=mode_args(inputs.identity),
        mode_titles=MODE_TITLES,
        mode_hotkeys=MODE_HOTKEYS,
        marker_order=MARKER_ORDER,
        modes_without_p4=MODES_WITHOUT_P4,
        modes_without_writes=MODES_WITHOUT_WRITES,
    )


def first_boot_token(identity: ImageIdentity, epoch: int) -> str:
    """The token every card of this image starts with (16 hex digits, as the device makes them).

    Not a secret and not unique: GRUB's first write of it as the claim is what sets the booted
    card apart from copies, and the device replaces it with a random one at that boot.
    """
    return hashlib.sha256(f"amberpi:token:{identity.image_id}:{epoch}".encode()).hexdigest()[:16]


def write_grubenv(target: Path, variables: list[tuple[str, str]]) -> None:
    """GRUB's environment block: exactly 1024 bytes, '#'-padded, so GRUB can rewrite it in place."""
    unpadded = render("grubenv.j2", variables=variables, padding="")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render("grubenv.j2", variables=variables, padding="#" * (GRUBENV_BYTES - len(unpadded))))
    if target.stat().st_size != GRUBENV_BYTES:
        raise StageError(f"grubenv is {target.stat().st_size} bytes, not {GRUBENV_BYTES}", where=str(target))


def find_grubenv(image: Path, expected: bytes) -> int:
    """Byte offset of grubenv inside the FAT image; it must be one contiguous 1024-byte run."""
    data = image.read_bytes()
    offset = data.find(expected[:512])
    if offset < 0 or offset % 512 or data[offset : offset + len(expected)] != expected or data.find(expected[:512], offset + 1) >= 0:
        raise StageError("grub/grubenv is not stored as one contiguous block in the boot partition", where=str(image))
    return offset


def firstboot_files(folder: str) -> tuple[FileInput, ...]:
    if not folder:
        return ()
    return tuple(FileInput.of(Path(folder) / name) for name in FIRSTBOOT_FILES if (Path(folder) / name).is_file())


def copy_raspi_firmware(inputs: BootfsInputs, firmware: Path, boot: Path, tree: Path) -> None:
    files = firmware / "files"
    sources = [p for pattern in FIRMWARE_PATTERNS for p in sorted((files / FIRMWARE_DIR).glob(pattern))]
    if not any(p.name == "start.elf" for p in sources) and not any(p.name.startswith("start4") for p in sources):
        raise StageError("raspi-firmware has no start*.elf", where=str(files / FIRMWARE_DIR), hint="rebuild with --no-cache")
    for source in sources:
        shutil.copy2(source, tree / source.name)
    uboot = files / UBOOT_DIR / inputs.uboot
    if not uboot.is_file():
        raise StageError(
            f"U-Boot binary {inputs.uboot} is missing",
            where=f"board {inputs.board}: uboot",
            hint="use a path from u-boot-rpi, e.g. rpi_arm64/u-boot.bin",
        )
    shutil.copy2(uboot, tree / UBOOT_NAME)
    for dtb in inputs.device_trees:
        shutil.copy2(boot / "dtbs" / dtb, tree / Path(dtb).name)
    write_rendered(tree / "config.txt", "config.txt.j2", board=inputs.board, uboot=UBOOT_NAME, sections=inputs.config_txt)


class BootfsStage(Stage[BootfsInputs]):
    name = "bootfs"
    version = 6
    needs = ("bootfiles", "firmware")
    uses_facts = ("customize", "squash", "epoch")
    tools = ("mkfs.vfat", "mcopy", "awk")

    def inputs(self, build: BuildContext) -> BootfsInputs:
        b, c = build.board, build.config
        r = c.resilience
        return BootfsInputs(
            identity=build.identity,
            board=b.name,
            firmware=b.firmware,
            serial_console=b.serial_console,
            uboot=b.uboot,
            device_trees=tuple(b.device_trees),
            config_txt=tuple(b.config_txt),
            extra_cmdline=c.kernel_cmdline,
            kernel_tries=c.kernel_tries,
            timeout=GRUB_TIMEOUT,
            size_mib=c.boot_size_mib,
            modes=BootModes(
                default=r.mode,
                panic_reboot_seconds=r.panic_reboot_seconds,
                jumper=gpio_line(r.jumper, b.gpio_jumper),
                jumper_active=r.jumper_active,
                maintenance_mode=r.maintenance_mode,
                toram_margin_mib=r.toram_margin_mib,
            ),
            firstboot=firstboot_files(c.firstboot_dir),
            firstboot_reader=build.layout.device / "rootfs/usr/lib/amberpi/yaml-flat.awk",
            firstboot_dir=c.firstboot_dir,
        )

    def preflight(self, inputs: BootfsInputs) -> list[str]:
        problems = []
        if inputs.firstboot_dir:
            folder = Path(inputs.firstboot_dir)
            strays = sorted(p.name for p in folder.iterdir() if p.name not in FIRSTBOOT_FILES)
            if strays:
                problems.append(f"firstboot_dir {folder}: unexpected {', '.join(strays)} (only {', '.join(FIRSTBOOT_FILES)} go on p1)")
            if not inputs.firstboot:
                problems.append(f"firstboot_dir {folder}: none of {', '.join(FIRSTBOOT_FILES)} is there")
        for item in inputs.firstboot:
            # The device's reader, so a file the device would refuse fails the build instead.
            try:
                run(["awk", "-f", str(inputs.firstboot_reader), str(item.path)], capture=True, label="awk")
            except ToolError as error:
                problems.append("; ".join(error.output_tail) or f"{item.path}: not in the supported YAML subset")
        return problems

    def title(self, inputs: BootfsInputs) -> str:
        return "Writing the boot partition (FAT32, GRUB" + (", Pi firmware, U-Boot)" if inputs.firmware == "raspi" else ")")

    def run(self, inputs: BootfsInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        boot = upstream["bootfiles"].folder / "boot"
        factory_version = upstream["customize"].facts["kernel_version"]
        tree = out / "tree"
        (tree / "EFI" / "BOOT").mkdir(parents=True)
        shutil.copy2(boot / "BOOTAA64.EFI", tree / "EFI" / "BOOT" / "BOOTAA64.EFI")
        grub_cfg = tree / "grub" / "grub.cfg"
        grub_cfg.parent.mkdir(parents=True)
        # What toram copies: the squashfs and the factory kernel and initrd beside it on p2.
        system_bytes = int(upstream["squash"].facts["squashfs_bytes"]) + sum(
            (boot / name).stat().st_size for name in ("vmlinuz", "initrd.img")
        )
        grub_cfg.write_text(render_grub_cfg(inputs, factory_version, system_bytes))
        epoch = int(upstream["epoch"].facts["source_date_epoch"])
        # The iso stage writes p3 with the same epoch, so this is the identity it will carry.
        initial = [
            ("amberpi_state", INITIAL_STATE.value),
            ("amberpi_version", factory_version),
            ("amberpi_krn_uuid", iso_identity(epoch)),
            # GRUB claims its disk with it at the first boot (grub.cfg, "this boot's disk").
            ("amberpi_token", first_boot_token(inputs.identity, epoch)),
        ]
        write_grubenv(tree / "grub" / "grubenv", initial)
        if inputs.firmware == "raspi":
            copy_raspi_firmware(inputs, upstream["firmware"].folder, boot, tree)
        for item in inputs.firstboot:
            shutil.copy2(item.path, tree / item.name)
        make_fat(tree, out / "p1.img", size_mib=inputs.size_mib, label="AMBERPI", volume_id=inputs.identity.image_id, epoch=epoch)
        # The device rewrites grubenv in place on the raw partition, as GRUB does.
        offset = find_grubenv(out / "p1.img", (tree / "grub" / "grubenv").read_bytes())
        return Artefact(out, {"grubenv_offset": offset})
