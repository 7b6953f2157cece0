"""The boot menu's decisions, run by GRUB itself (grub-emu) against small file-backed disks.

Each case builds the four partitions the way the build does (mtools, pycdlib, mkfs.ext4 -d),
sets the kernel partition's state in grubenv, lets grub-emu source the real grub.cfg, and
reads back which entry GRUB would boot, why, and what it saved. grub-emu is the host's GRUB
(2.06 on Debian 12) while the image runs trixie's; the booted tests cover the difference.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from amberpi.config import Config
from amberpi.digests import sha256_file
from amberpi.filesystems.ext4 import make_ext4
from amberpi.filesystems.fat import make_fat
from amberpi.filesystems.iso9660 import iso_identity, make_iso
from amberpi.layout import plan_layout
from amberpi.render import write_rendered
from amberpi.stages.bootfs import GRUBENV_BYTES, write_grubenv
from amberpi.stages.disk import write_disk
from tests.conftest import EPOCH
from tests.samples import boot_modes, grub_cfg

IMAGE_ID = "1a2b3c4d"
KERNEL_LABEL = "AMBERPI_KRN_1A2B3C4D"
FACTORY = "6.12.1-arm64"
KERNEL_TRIES = Config().kernel_tries
NEW = "7.3.4-arm64"
OLD = "6.16.3-arm64"  # good before NEW was installed: the fallback kept on p3
MODULES = f"rw/usr/lib/modules/{NEW}"
OLD_MODULES = f"rw/usr/lib/modules/{OLD}"


@dataclass
class Scenario:
    state: str
    version: str = NEW
    tries: str | None = None
    modules: str | None = MODULES  # folder created on p4, None for an empty (reset) p4
    kernel_label: str = KERNEL_LABEL
    corrupt_kernel: bool = False
    previous: str | None = None  # a fallback kernel kept in /previous on p3
    previous_modules: str | None = OLD_MODULES
    corrupt_previous: bool = False
    kernel_tries: int = KERNEL_TRIES
    default_mode: str = "persistent"
    mode_device: str | None = None  # amberpi-mode set MODE
    mode_once: str | None = None  # amberpi-mode set MODE --once
    markers: tuple[str, ...] = ()  # files put on p1 from another computer
    krn_uuid: str | None = iso_identity(EPOCH)  # the write grubenv says p3 holds (p3's is this one)


@dataclass
class Decision:
    default: str
    mode: str  # the kernel entry's state: current, trial, previous or factory
    why: str
    grubenv: dict[str, str]
    boot_mode: str = ""  # persistent, readonly, toram or toram-persistent
    boot_mode_source: str = ""
    boot_mode_args: str = ""
    krn_fsuuid: str = ""  # p3's identity as GRUB saw it, passed to the kernel as amberpi.krn_uuid


def build_disk(folder: Path, case: Scenario) -> Path:
    p1 = folder / "p1"
    (p1 / "grub").mkdir(parents=True)
    modes = boot_modes(default=case.default_mode)
    (p1 / "grub" / "grub.cfg").write_text(grub_cfg(FACTORY, timeout=0, kernel_tries=case.kernel_tries, modes=modes))
    for marker in case.markers:
        (p1 / marker).write_text("")
    variables = [("amberpi_state", case.state), ("amberpi_version", case.version)]
    if case.tries is not None:
        variables.append(("amberpi_tries", case.tries))
    if case.previous is not None:
        variables.append(("amberpi_previous", case.previous))
    if case.mode_device is not None:
        variables.append(("amberpi_mode_device", case.mode_device))
    if case.mode_once is not None:
        variables.append(("amberpi_mode_once", case.mode_once))
    if case.krn_uuid is not None:
        variables.append(("amberpi_krn_uuid", case.krn_uuid))
    write_grubenv(p1 / "grub" / "grubenv", variables)
    make_fat(p1, folder / "p1.img", size_mib=40, label="AMBERPI", volume_id=IMAGE_ID, epoch=EPOCH)

    p2 = folder / "p2"
    (p2 / "live").mkdir(parents=True)
    (p2 / "live" / "vmlinuz").write_bytes(b"factory kernel")
    make_iso(p2, folder / "p2.iso", volume_id="AMBERPI_SYS_1A2B3C4D", epoch=EPOCH)

    p3 = folder / "p3"
    write_kernel_slot(p3, case.version, corrupt=case.corrupt_kernel)
    if case.previous:
        write_kernel_slot(p3 / "previous", case.previous, corrupt=case.corrupt_previous)
    make_iso(p3, folder / "p3.iso", volume_id=case.kernel_label, epoch=EPOCH)

    p4 = folder / "p4"
    p4.mkdir()
    (p4 / "persistence.conf").write_text("/ union\n")
    for modules in (case.modules, case.previous_modules):
        if modules:
            (p4 / modules).mkdir(parents=True, exist_ok=True)
    make_ext4(p4, folder / "p4.img", size_mib=8, label=f"amberpi-{IMAGE_ID}", fs_uuid="0e7b4a7e-1d2c-4f0e-9a53-2b1f0c6d8e11", epoch=EPOCH)

    files = {"boot": folder / "p1.img", "system": folder / "p2.iso", "kernel": folder / "p3.iso", "persistence": folder / "p4.img"}
    partitions = plan_layout({role: path.stat().st_size for role, path in files.items()})
    write_disk(folder / "disk.img", partitions, files, IMAGE_ID)
    return folder / "disk.img"


def write_kernel_slot(folder: Path, version: str, *, corrupt: bool) -> None:
    """A kernel's files and their SHA256SUMS, as amberpi-kernel lays them out."""
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"kernel " + version.encode())
    (folder / "initrd.img").write_bytes(b"initrd " + version.encode())
    (folder / "version").write_text(version + "\n")
    sums = [(p.name, sha256_file(p)) for p in sorted(folder.iterdir())]
    write_rendered(folder / "SHA256SUMS", "SHA256SUMS.j2", sums=sums)
    if corrupt:
        (folder / "vmlinuz").write_bytes(b"kernel, cut short")


def read_grubenv(disk: Path) -> dict[str, str]:
    """The environment block as saved on the disk (found by its header, as the device does)."""
    data = disk.read_bytes()
    start = data.index(b"# GRUB Environment Block\n")
    block = data[start : start + GRUBENV_BYTES].decode()
    return dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)


def decide(tmp_path: Path, case: Scenario) -> Decision:
    return boot(tmp_path, build_disk(tmp_path, case))


def boot(tmp_path: Path, disk: Path) -> Decision:
    """One boot of the disk as far as GRUB's menu decides it: what it boots, and what it saved."""
    (tmp_path / "device.map").write_text(f"(hd0) {disk}\n")
    (tmp_path / "emu").mkdir(exist_ok=True)
    commands = [
        "set prefix=(hd0,msdos1)/grub",
        "source ${prefix}/grub.cfg",
        'echo "DECISION|${default}|${amberpi_kernel}|${amberpi_why}|${amberpi_mode}|${amberpi_mode_source}|${amberpi_mode_args}|'
        '${amberpi_krn_fsuuid}|END"',
        "halt",
    ]
    result = subprocess.run(
        ["grub-emu", "-m", str(tmp_path / "device.map"), "-d", str(tmp_path / "emu"), "-r", "hd0,msdos1"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout).replace("\r", "\n")
    # The emulated terminal wraps at 80 columns, at a space: join the answer back up.
    found = re.search(r"^DECISION\|(.*?)\|END$", screen, re.MULTILINE | re.DOTALL)
    assert found, f"grub-emu printed no decision:\n{screen}\n{result.stderr}"
    default, kernel, why, mode, source, args, fsuuid = (" ".join(field.split()) for field in found[1].split("|"))
    # A wrap can fall inside the identity too, which has no spaces of its own.
    return Decision(default, kernel, why, read_grubenv(disk), mode, source, args, fsuuid.replace(" ", ""))


def test_confirmed_kernel_boots_from_the_kernel_partition(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="good"))
    assert (decision.default, decision.mode) == ("current", "current")


def test_factory_version_needs_no_modules_on_persistence(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="good", version=FACTORY, modules=None))
    assert (decision.default, decision.mode) == ("current", "current")


def test_new_kernel_gets_its_first_try_and_it_is_counted(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="new"))
    assert (decision.default, decision.mode) == ("current", "trial")
    assert decision.grubenv["amberpi_tries"] == "1" and decision.grubenv["amberpi_state"] == "new"


def test_new_kernel_gets_a_second_try(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="new", tries="1"))
    assert (decision.default, decision.mode) == ("current", "trial")
    assert decision.grubenv["amberpi_tries"] == "2"


def test_new_kernel_out_of_tries_is_marked_bad(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="new", tries=str(KERNEL_TRIES)))
    assert (decision.default, decision.mode) == ("factory", "factory")
    assert decision.grubenv["amberpi_state"] == "bad"
    assert "did not confirm a good boot in 2 tries" in decision.why


@pytest.mark.parametrize("state", ["new", "good"])
def test_missing_modules_boot_the_factory_kernel(tmp_path: Path, state: str) -> None:
    """A persistence reset after an update: no trial, no try counted."""
    decision = decide(tmp_path, Scenario(state=state, modules=None))
    assert (decision.default, decision.mode) == ("factory", "factory")
    assert decision.why == f"the modules of {NEW} are not on the persistence partition"
    assert "amberpi_tries" not in decision.grubenv


@pytest.mark.parametrize("modules", ["rw", "rw/usr", "rw/usr/lib/modules", "rw/usr/lib/modules/6.12.1-arm64"])
def test_partial_module_paths_are_not_enough(tmp_path: Path, modules: str) -> None:
    decision = decide(tmp_path, Scenario(state="good", modules=modules))
    assert decision.default == "factory"


def test_checksum_mismatch_boots_the_factory_kernel(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="good", corrupt_kernel=True))
    assert decision.default == "factory" and decision.why == "the kernel partition's checksums do not verify"


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("writing", "a write to the kernel partition did not finish"),
        ("bad", f"kernel {NEW} never confirmed a good boot"),
        ("rolled-back", "rolled back by hand"),
        ("confused", "unknown kernel partition state 'confused'"),
    ],
)
def test_unusable_states_boot_the_factory_kernel(tmp_path: Path, state: str, why: str) -> None:
    decision = decide(tmp_path, Scenario(state=state))
    assert (decision.default, decision.why) == ("factory", why)


def test_foreign_kernel_partition_is_not_used(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="good", kernel_label="AMBERPI_KRN_99999999"))
    assert decision.default == "factory"
    assert decision.why == "the kernel partition is not this image's (label 'AMBERPI_KRN_99999999')"


def test_the_kernel_partitions_identity_is_what_the_kernel_is_told(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="new"))
    assert decision.krn_fsuuid == iso_identity(EPOCH) == decision.grubenv["amberpi_krn_uuid"]


@pytest.mark.parametrize("state", ["good", "new", "bad"])
def test_a_partition_holding_another_write_is_not_booted(tmp_path: Path, state: str) -> None:
    """Two writers raced (or a copy was restored): p3 is not what grubenv describes, nor is its fallback."""
    decision = decide(tmp_path, Scenario(state=state, previous=OLD, krn_uuid="2031-01-01-00-00-00-00"))
    assert (decision.default, decision.mode) == ("factory", "factory")
    held, named = iso_identity(EPOCH), "2031-01-01-00-00-00-00"
    assert decision.why == f"the kernel partition holds write '{held}', not '{named}' that GRUB's environment describes"
    assert "amberpi_tries" not in decision.grubenv


def test_a_try_count_that_does_not_stick_gives_no_trial(tmp_path: Path) -> None:
    """A firmware that cannot write p1: without the read-back a panicking kernel would be tried forever."""
    disk = build_disk(tmp_path, Scenario(state="new", previous=OLD))
    subprocess.run(["chattr", "+i", str(disk)], check=True)  # reads work, writes fail, even for root
    try:
        decision = boot(tmp_path, disk)
    finally:
        subprocess.run(["chattr", "-i", str(disk)], check=True)
    assert (decision.default, decision.mode) == ("previous", "previous")
    assert decision.why == f"GRUB cannot write its environment block (the try count did not stick), so kernel {NEW} is not tried"
    assert "amberpi_tries" not in decision.grubenv


def test_a_good_kernel_ignores_the_fallback(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="good", previous=OLD))
    assert (decision.default, decision.mode) == ("current", "current")


def test_new_kernel_out_of_tries_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="new", tries=str(KERNEL_TRIES), previous=OLD))
    assert (decision.default, decision.mode) == ("previous", "previous")
    assert decision.grubenv["amberpi_state"] == "bad" and decision.grubenv["amberpi_previous"] == OLD


@pytest.mark.parametrize(
    "case",
    [
        Scenario(state="bad", previous=OLD),
        Scenario(state="rolled-back", previous=OLD),
        Scenario(state="good", corrupt_kernel=True, previous=OLD),
        Scenario(state="new", modules=None, previous=OLD),
    ],
    ids=["bad", "rolled-back", "current-corrupt", "current-modules-missing"],
)
def test_the_fallback_boots_when_the_current_kernel_cannot(tmp_path: Path, case: Scenario) -> None:
    assert decide(tmp_path, case).default == "previous"


@pytest.mark.parametrize(
    "case",
    [
        Scenario(state="writing", previous=OLD),
        Scenario(state="bad", previous=OLD, corrupt_previous=True),
        Scenario(state="bad", previous=OLD, previous_modules=None),
        Scenario(state="bad", previous=OLD, previous_modules="rw/usr/lib/modules"),
        Scenario(state="bad", previous=OLD, kernel_label="AMBERPI_KRN_99999999"),
        Scenario(state="bad", previous=None),
    ],
    ids=["cut-write", "fallback-corrupt", "fallback-modules-missing", "fallback-modules-partial", "foreign-partition", "none-kept"],
)
def test_the_factory_kernel_boots_when_the_fallback_cannot(tmp_path: Path, case: Scenario) -> None:
    assert decide(tmp_path, case).default == "factory"


@pytest.mark.parametrize("tries", [1, 3])
def test_kernel_tries_is_the_number_of_trial_boots(tmp_path: Path, tries: int) -> None:
    """kernel_tries=N: a new kernel that never confirms boots N times on trial, then never again."""
    disk = build_disk(tmp_path, Scenario(state="new", kernel_tries=tries))
    decisions = [boot(tmp_path, disk) for _ in range(tries + 2)]
    assert [d.mode for d in decisions] == ["trial"] * tries + ["factory", "factory"]
    assert [d.grubenv.get("amberpi_tries") for d in decisions[:tries]] == [str(n) for n in range(1, tries + 1)]
    assert decisions[tries].grubenv["amberpi_state"] == "bad"
    assert f"did not confirm a good boot in {tries} tries" in decisions[tries].why


# --- the mode of a boot ----------------------------------------------------------------------

PERSISTENCE = "persistence persistence-label=amberpi-1a2b3c4d"


@pytest.mark.parametrize(
    ("mode", "args"),
    [
        ("persistent", PERSISTENCE),
        ("readonly", f"{PERSISTENCE} persistence-read-only"),
        ("toram", "toram"),
        ("toram-persistent", f"toram {PERSISTENCE}"),
    ],
)
def test_each_mode_tells_live_boot_what_to_do(tmp_path: Path, mode: str, args: str) -> None:
    decision = decide(tmp_path, Scenario(state="good", version=FACTORY, default_mode=mode))
    assert (decision.boot_mode, decision.boot_mode_source) == (mode, "config")
    assert decision.boot_mode_args == f"{args} amberpi.mode={mode} amberpi.mode_source=config"


def test_precedence_device_then_marker_then_once(tmp_path: Path) -> None:
    """config < amberpi-mode set < a marker file on p1 < amberpi-mode set --once, which is used up."""
    assert decide(tmp_path / "a", Scenario(state="good", mode_device="toram-persistent")).boot_mode_source == "device"
    decision = decide(tmp_path / "b", Scenario(state="good", mode_device="toram-persistent", markers=("amberpi-readonly.txt",)))
    assert (decision.boot_mode, decision.boot_mode_source) == ("readonly", "marker")
    disk = build_disk(tmp_path / "c", Scenario(state="good", mode_device="persistent", mode_once="readonly", markers=("amberpi-toram",)))
    once = boot(tmp_path / "c", disk)
    assert (once.boot_mode, once.boot_mode_source) == ("readonly", "once")
    assert once.grubenv["amberpi_mode_once"] == "", "used up by this boot"
    after = boot(tmp_path / "c", disk)
    assert (after.boot_mode, after.boot_mode_source) == ("toram", "marker")


def test_the_safest_marker_wins(tmp_path: Path) -> None:
    markers = ("amberpi-persistent", "amberpi-toram", "amberpi-readonly")
    assert decide(tmp_path, Scenario(state="good", markers=markers)).boot_mode == "readonly"


def test_a_mode_grub_does_not_know_is_ignored(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="good", default_mode="readonly", mode_device="nonsense", mode_once="; reboot"))
    assert (decision.boot_mode, decision.boot_mode_source) == ("readonly", "config")


def test_toram_boots_the_factory_kernel_when_the_new_ones_modules_are_on_p4(tmp_path: Path) -> None:
    decision = decide(tmp_path, Scenario(state="good", default_mode="toram"))
    assert (decision.default, decision.boot_mode) == ("factory", "toram")
    assert decision.why == f"mode toram leaves out the persistence partition and the modules of {NEW} on it"
    assert "amberpi_tries" not in decision.grubenv


def test_readonly_keeps_the_updated_kernel(tmp_path: Path) -> None:
    """readonly shows p4 (read-only): an updated kernel's modules are there."""
    decision = decide(tmp_path, Scenario(state="good", default_mode="readonly"))
    assert (decision.default, decision.mode, decision.boot_mode) == ("current", "current", "readonly")


@pytest.mark.parametrize("mode", ["readonly", "toram"])
def test_no_kernel_trial_in_a_mode_that_writes_nothing(tmp_path: Path, mode: str) -> None:
    """A trial writes p1 (the try count, then the confirmation): readonly and toram boot the fallback instead."""
    decision = decide(tmp_path, Scenario(state="new", default_mode=mode, previous=OLD))
    assert decision.mode != "trial" and "amberpi_tries" not in decision.grubenv
    assert decision.grubenv["amberpi_state"] == "new", "the new kernel keeps its turn for a boot that keeps changes"
