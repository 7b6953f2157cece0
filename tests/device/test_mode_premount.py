"""The initramfs mode decision (scripts/live-premount/amberpi-mode), under dash and busybox sh.

The persistence partition is a real ext4 image checked by the host's e2fsck
(persistent modes) or read byte by byte (readonly: its superblock flags are set
with debugfs or by writing the bytes, as a power cut leaves them); gpioget is
a fake that models a line with a pull resistor (a jumper to ground, an open
jumper, both polarities) and libgpiod 2.x's error cases. The outcome
is read back as live-boot and userspace would: /conf/param.conf sourced by sh,
/run/amberpi/mode, the console and the kernel log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.device.devicekit import CMDLINE, LIB, PERSISTENCE_LABEL, ROOTFS, SHELLS, Device, fake_tool, make_device, make_ext4

SCRIPT = ROOTFS / "etc/initramfs-tools/scripts/live-premount/amberpi-mode"
PERSISTENT = f"{CMDLINE} persistence persistence-label={PERSISTENCE_LABEL}"
READONLY = f"{CMDLINE} persistence persistence-label={PERSISTENCE_LABEL} persistence-read-only"
STATE_KEYS = (
    "MODE", "SOURCE", "SOURCE_TEXT", "REQUESTED", "REASON", "FSCK", "FSCK_CODE", "SUPERBLOCK", "P4_VIEW", "PERSISTENCE_DEVICE",
    "PENDING", "JUMPER",
)  # fmt: skip
# live-boot's arguments for each view of the persistence partition (after the rest of the line).
RW_ARGS = ["persistence", f"persistence-label={PERSISTENCE_LABEL}"]
RO_ARGS = ["persistence", f"persistence-label={PERSISTENCE_LABEL}", "persistence-read-only"]
# util-linux blockdev: records --setro; FAKE_BLOCKDEV=fail makes it fail.
FAKE_BLOCKDEV = 'echo "blockdev $*" >> "$FAKE_BLOCKDEV_LOG"\n[ "${FAKE_BLOCKDEV:-}" != fail ] || exit 1\n'

# libgpiod 2.2's gpioget: options, then the line. The line's level is FAKE_GPIO
# (low, high, or float: then the requested bias decides), or an error case.
FAKE_GPIOGET = r"""
chip= low= bias= numeric=
while [ $# -gt 1 ]; do
	case "$1" in
		-c | --chip) chip=$2; shift ;;
		-b | --bias) bias=$2; shift ;;
		-p | --hold-period) shift ;;
		-l | --active-low) low=1 ;;
		--numeric) numeric=1 ;;
		*) echo "gpioget: unknown option $1" >&2; exit 1 ;;
	esac
	shift
done
echo "chip=$chip line=$1 active-low=$low bias=$bias numeric=$numeric" >> "$FAKE_GPIO_LOG"
case "$FAKE_GPIO" in
	nochip) echo "gpioget: cannot find GPIO chip character device '$chip'" >&2; exit 1 ;;
	busy) echo "gpioget: unable to request lines: Device or resource busy" >&2; exit 1 ;;
	float) if [ "$bias" = pull-up ]; then level=1; else level=0; fi ;;
	high) level=1 ;;
	*) level=0 ;;
esac
[ -z "$low" ] || level=$((1 - level))
if [ -n "$numeric" ]; then echo "$level"; elif [ "$level" = 1 ]; then echo "\"$1\"=active"; else echo "\"$1\"=inactive"; fi
"""


class Boot:
    """One run of the script: what it left behind."""

    def __init__(self, device: Device, result: subprocess.CompletedProcess[str]) -> None:
        self.device = device
        self.result = result
        mode_file = device.run_dir / "mode"
        self.state: dict[str, str] = {}
        if mode_file.exists():
            # Read as userspace would: the file is shell-sourceable.
            dump = subprocess.run(
                ["sh", "-c", f'. "{mode_file}"; for k in {" ".join(STATE_KEYS)}; do eval "echo $k=\\$$k"; done'],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            self.state = dict(line.split("=", 1) for line in dump.splitlines())

    @property
    def live_boot_cmdline(self) -> list[str]:
        param = Path(self.device.env["AMBERPI_PARAM_CONF"])
        out = subprocess.run(["sh", "-c", f'. "{param}"; echo "$LIVE_BOOT_CMDLINE"'], capture_output=True, text=True, check=True)
        return out.stdout.split()

    @property
    def console(self) -> str:
        return self.result.stdout

    @property
    def kmsg(self) -> str:
        return Path(self.device.env["AMBERPI_KMSG"]).read_text() if Path(self.device.env["AMBERPI_KMSG"]).exists() else ""

    @property
    def blockdev_calls(self) -> list[str]:
        log = Path(self.device.env["FAKE_BLOCKDEV_LOG"])
        return log.read_text().splitlines() if log.exists() else []

    @property
    def gpio_calls(self) -> list[str]:
        log = Path(self.device.env["FAKE_GPIO_LOG"])
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    device = make_device(tmp_path, request.param)
    make_ext4(device.parts / "p4")
    fake_tool(device.fakebin, "gpioget", FAKE_GPIOGET)
    fake_tool(device.fakebin, "blockdev", FAKE_BLOCKDEV)
    # Nothing here mounts for real: the partition's contents stand in a folder (AMBERPI_P4_DIR).
    for tool in ("mount", "umount"):
        fake_tool(device.fakebin, tool, f'echo "{tool} $*" >&2\nexit 32\n')
    contents = tmp_path / "p4-contents"
    (contents / "rw").mkdir(parents=True)
    (contents / "persistence.conf").write_text("/ union\n")
    device.env.update(
        AMBERPI_P4_DIR=str(contents),
        # The system partition, as mounted: make_device's medium holds its .disk/amberpi.conf.
        AMBERPI_SYSTEM_DIR=device.env["AMBERPI_MEDIUM_DIR"],
        FAKE_BLOCKDEV_LOG=str(tmp_path / "blockdev.log"),
        AMBERPI_LIB=str(LIB),
        AMBERPI_PARAM_CONF=str(tmp_path / "param.conf"),
        AMBERPI_MEMINFO=str(tmp_path / "meminfo"),
        AMBERPI_KMSG=str(tmp_path / "kmsg"),
        FAKE_GPIO="float",
        FAKE_GPIO_LOG=str(tmp_path / "gpio.log"),
    )
    set_ram(device, 4000)
    return device


def set_ram(device: Device, available_mib: int) -> None:
    Path(device.env["AMBERPI_MEMINFO"]).write_text(
        f"MemTotal:        {(available_mib + 200) * 1024} kB\n"
        f"MemFree:         {available_mib * 1024} kB\n"
        f"MemAvailable:    {available_mib * 1024} kB\n"
    )


def boot(device: Device, cmdline: str) -> Boot:
    device.set_cmdline(cmdline)
    for name in ("param.conf", "kmsg", "gpio.log", "blockdev.log"):
        (device.tmp / name).unlink(missing_ok=True)
    result = device.run(SCRIPT)
    assert result.returncode == 0, result.stderr
    return Boot(device, result)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_prereqs(shell: list[str]) -> None:
    result = subprocess.run([*shell, str(SCRIPT), "prereqs"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "amberpi-media"


def test_not_an_amberpi_boot(device: Device) -> None:
    result = boot(device, "boot=live persistence quiet")
    assert result.console == "" and result.state == {}
    assert not Path(device.env["AMBERPI_PARAM_CONF"]).exists()


def test_persistent_build_default(device: Device) -> None:
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert b.state["MODE"] == "persistent" and b.state["SOURCE"] == "config" and b.state["REQUESTED"] == "persistent"
    assert b.state["FSCK"] == "clean" and b.state["FSCK_CODE"] == "0"
    assert b.state["P4_VIEW"] == "rw" and b.state["SUPERBLOCK"] == ""
    assert b.state["PERSISTENCE_DEVICE"] == str(device.parts / "p4")
    assert b.live_boot_cmdline == [*CMDLINE.split(), "amberpi.mode=persistent", "amberpi.mode_source=config", *RW_ARGS]
    assert b.blockdev_calls == []
    assert "AmberPi: mode persistent (build default)" in b.console
    assert "<5>AmberPi: mode persistent (build default)" in b.kmsg


def test_readonly_shows_a_clean_partition_read_only(device: Device) -> None:
    p4 = device.parts / "p4"
    before = digest(p4)
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=device")
    assert b.state["MODE"] == "readonly" and b.state["REQUESTED"] == "readonly" and b.state["REASON"] == ""
    assert b.state["P4_VIEW"] == "ro" and b.state["SUPERBLOCK"] == "clean"
    assert b.state["FSCK"] == "skipped" and b.state["FSCK_CODE"] == "", "no e2fsck: it writes the superblock"
    assert b.state["PERSISTENCE_DEVICE"] == str(p4)
    assert b.live_boot_cmdline == [*CMDLINE.split(), "amberpi.mode=readonly", "amberpi.mode_source=device", *RO_ARGS]
    assert b.blockdev_calls == [f"blockdev --setro {p4}"], "the kernel itself refuses writes to it"
    assert f"AmberPi: mode readonly (amberpi-mode set), the persistence partition {p4} shown read-only" in b.console
    assert "<5>AmberPi: mode readonly (amberpi-mode set)" in b.kmsg
    assert not (device.run_dir / "fsck.log").exists()
    assert digest(p4) == before


def test_readonly_args_are_rebuilt_from_any_command_line(device: Device) -> None:
    """GRUB's readonly args, or none at all: the script writes the view it decided."""
    for cmdline in (f"{READONLY} amberpi.mode=readonly", f"{CMDLINE} nopersistence amberpi.mode=readonly"):
        b = boot(device, f"{cmdline} amberpi.mode_source=config")
        args = b.live_boot_cmdline
        assert args[-3:] == RO_ARGS and args.count("persistence") == 1 and args.count("persistence-read-only") == 1
        assert "nopersistence" not in args


def test_readonly_with_the_blockdev_guard_failing_still_shows_it(device: Device) -> None:
    device.env["FAKE_BLOCKDEV"] = "fail"
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["P4_VIEW"] == "ro" and b.live_boot_cmdline[-3:] == RO_ARGS
    assert "cannot set" in b.console and "live-boot still mounts it read-only" in b.console


def set_superblock_byte(p4: Path, offset: int, value: int) -> None:
    """Writes one byte of the primary superblock, as the kernel leaves it (its checksum is not updated)."""
    with p4.open("r+b") as handle:
        handle.seek(1024 + offset)
        handle.write(bytes([value]))


def superblock_byte(p4: Path, offset: int) -> int:
    with p4.open("rb") as handle:
        handle.seek(1024 + offset)
        return handle.read(1)[0]


def debugfs(p4: Path, request: str) -> None:
    subprocess.run(["debugfs", "-w", "-R", request, str(p4)], check=True, capture_output=True)


def needs_recovery_by_debugfs(p4: Path) -> None:
    debugfs(p4, "feature needs_recovery")


def needs_recovery_by_byte(p4: Path) -> None:
    # s_feature_incompat at 0x60: RECOVER is 0x4, set while mounted read-write.
    set_superblock_byte(p4, 0x60, superblock_byte(p4, 0x60) | 0x4)


def errors_recorded(p4: Path) -> None:
    debugfs(p4, "ssv state 3")  # VALID_FS | ERROR_FS


def not_marked_clean(p4: Path) -> None:
    debugfs(p4, "ssv state 0")


def orphans_left(p4: Path) -> None:
    debugfs(p4, "ssv last_orphan 12")


def orphan_file_in_use(p4: Path) -> None:
    debugfs(p4, "feature orphan_present")


NOT_CLEAN = [
    (needs_recovery_by_debugfs, "needs-recovery", "was not shut down cleanly (its journal needs replaying)"),
    (needs_recovery_by_byte, "needs-recovery", "was not shut down cleanly (its journal needs replaying)"),
    (errors_recorded, "errors", "has errors recorded in its superblock"),
    (not_marked_clean, "not-clean", "is not marked clean"),
    (orphans_left, "not-clean", "is not marked clean"),
    (orphan_file_in_use, "not-clean", "is not marked clean"),
]


@pytest.mark.parametrize(("spoil", "superblock", "why"), NOT_CLEAN, ids=[spoil.__name__ for spoil, _, _ in NOT_CLEAN])
def test_readonly_leaves_out_a_partition_that_is_not_clean(device: Device, spoil, superblock: str, why: str) -> None:  # type: ignore[no-untyped-def]
    p4 = device.parts / "p4"
    spoil(p4)
    before = digest(p4)
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=device")
    assert b.state["MODE"] == "readonly" and b.state["REQUESTED"] == "readonly"
    assert b.state["P4_VIEW"] == "none" and b.state["SUPERBLOCK"] == superblock and b.state["FSCK"] == "skipped"
    reason = b.state["REASON"]
    assert f"the persistence partition {p4} {why}" in reason
    assert "readonly never" in reason and "boot once in persistent mode to repair it ('amberpi-mode set persistent --once')" in reason
    args = b.live_boot_cmdline
    assert args[-1] == "nopersistence" and "persistence" not in args and "persistence-read-only" not in args
    assert not any(a.startswith("persistence-label=") for a in args)
    assert b.blockdev_calls == []
    assert f"AmberPi: mode readonly without the persistence partition (amberpi-mode set): {reason}" in b.console
    assert "<4>AmberPi: mode readonly without the persistence partition" in b.kmsg
    assert digest(p4) == before, "readonly never writes the card"


@pytest.mark.parametrize(
    ("spoil", "superblock", "view"),
    [(None, "clean", "ro"), (needs_recovery_by_byte, "needs-recovery", "none"), (errors_recorded, "errors", "none")],
    ids=["clean", "needs-recovery", "errors"],
)
def test_the_superblock_is_read_by_busybox_applets(device: Device, spoil, superblock: str, view: str) -> None:  # type: ignore[no-untyped-def]
    """The initramfs has busybox's dd, od and awk, not coreutils' and mawk or gawk."""
    for applet in ("dd", "od", "awk"):
        (device.fakebin / applet).symlink_to(shutil.which("busybox"))  # type: ignore[arg-type]
    if spoil is not None:
        spoil(device.parts / "p4")
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["SUPERBLOCK"] == superblock and b.state["P4_VIEW"] == view


@pytest.mark.parametrize("damage", ["zeros", "random"])
def test_readonly_leaves_out_a_partition_without_a_superblock(device: Device, damage: str) -> None:
    p4 = device.parts / "p4"
    with p4.open("r+b") as handle:
        handle.seek(1024)
        handle.write(b"\0" * 1024 if damage == "zeros" else os.urandom(1024))
    if damage == "random":
        set_superblock_byte(p4, 0x38, 0x00)  # never the ext4 magic by chance
    before = digest(p4)
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["P4_VIEW"] == "none" and b.state["SUPERBLOCK"] == "bad-magic" and b.state["FSCK"] == "skipped"
    assert f"the persistence partition {p4} holds no ext4 file system (bad superblock magic)" in b.state["REASON"]
    assert b.live_boot_cmdline[-1] == "nopersistence" and "persistence" not in b.live_boot_cmdline
    assert digest(p4) == before


def test_readonly_with_an_unreadable_superblock(device: Device) -> None:
    (device.parts / "p4").write_bytes(b"\0" * 1500)
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["P4_VIEW"] == "none" and b.state["SUPERBLOCK"] == "unreadable"
    assert "cannot read the superblock" in b.state["REASON"] and "nopersistence" in b.live_boot_cmdline


def test_readonly_leaves_a_foreign_or_missing_partition_out(device: Device) -> None:
    make_ext4(device.parts / "p4", label="data")
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["P4_VIEW"] == "none" and b.state["FSCK"] == "foreign" and b.state["SUPERBLOCK"] == ""
    assert "is not this image's persistence partition (ext4, label 'data'" in b.state["REASON"]
    assert "nopersistence" in b.live_boot_cmdline and b.blockdev_calls == []
    (device.parts / "p4").unlink()
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["P4_VIEW"] == "none" and b.state["FSCK"] == "missing" and b.state["PERSISTENCE_DEVICE"] == ""
    assert "nopersistence" in b.live_boot_cmdline


@pytest.mark.parametrize(("kernel", "warned"), [("current", True), ("trial", True), ("factory", False)])
def test_a_partition_kernel_without_persistence_is_warned_about(device: Device, kernel: str, warned: bool) -> None:
    """Only a boot that has no view of the persistence partition lacks the modules kept there."""
    line = CMDLINE.replace("amberpi.kernel=current", f"amberpi.kernel={kernel}")
    b = boot(device, f"{line} toram amberpi.mode=toram amberpi.mode_source=device")
    assert b.state["P4_VIEW"] == "none"
    assert ("runs without its modules in toram mode" in b.console) is warned
    b = boot(device, f"{line} amberpi.mode=readonly amberpi.mode_source=device")
    assert b.state["P4_VIEW"] == "ro" and "without its modules" not in b.console
    b = boot(device, f"{line} persistence amberpi.mode=persistent amberpi.mode_source=device")
    assert b.state["P4_VIEW"] == "rw" and "without its modules" not in b.console
    needs_recovery_by_byte(device.parts / "p4")
    b = boot(device, f"{line} amberpi.mode=readonly amberpi.mode_source=device")
    assert b.state["P4_VIEW"] == "none"
    assert ("runs without its modules in readonly mode" in b.console) is warned


def test_the_last_mode_typed_at_the_prompt_wins(device: Device) -> None:
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=device amberpi.toram_mib=900 amberpi.mode=toram")
    assert b.state["MODE"] == "toram" and b.state["SOURCE"] == "cmdline" and b.state["P4_VIEW"] == "none"
    args = b.live_boot_cmdline
    assert "toram" in args and "nopersistence" in args and "persistence" not in args
    assert not any(a.startswith("persistence-label=") for a in args)
    assert "AmberPi: mode toram (amberpi.mode typed on the kernel command line)" in b.console


def test_an_unknown_typed_mode_is_ignored(device: Device) -> None:
    b = boot(device, f"{CMDLINE} amberpi.mode=readonly amberpi.mode_source=once amberpi.mode=sideways")
    assert b.state["MODE"] == "readonly" and b.state["SOURCE"] == "once"
    assert "unknown amberpi.mode=sideways ignored" in b.console


@pytest.mark.parametrize(
    ("args", "mode"),
    [
        (f"persistence persistence-label={PERSISTENCE_LABEL} toram", "toram-persistent"),
        (f"persistence persistence-label={PERSISTENCE_LABEL}", "persistent"),
        (f"persistence persistence-label={PERSISTENCE_LABEL} persistence-read-only", "readonly"),
        ("persistence nopersistence", "readonly"),
        ("toram persistence persistence-read-only", "toram"),
        ("", "readonly"),
    ],
)
def test_without_amberpi_mode_live_boot_arguments_decide(device: Device, args: str, mode: str) -> None:
    b = boot(device, f"{CMDLINE} {args}")
    assert b.state["MODE"] == mode and b.state["SOURCE"] == "cmdline"
    expected = {"toram-persistent": ["toram", *RW_ARGS], "persistent": RW_ARGS, "readonly": RO_ARGS, "toram": ["toram", "nopersistence"]}
    assert b.live_boot_cmdline[-len(expected[mode]) :] == expected[mode]


JUMPER_LOW = "amberpi.jumper=gpiochip0:17:active-low:persistent"


def test_jumper_to_ground_switches_to_the_maintenance_mode(device: Device) -> None:
    device.env["FAKE_GPIO"] = "low"
    b = boot(device, f"{CMDLINE} amberpi.mode=readonly amberpi.mode_source=config {JUMPER_LOW}")
    assert b.gpio_calls == ["chip=gpiochip0 line=17 active-low=1 bias=pull-up numeric=1"]
    assert b.state["MODE"] == "persistent" and b.state["SOURCE"] == "jumper" and b.state["JUMPER"] == "on"
    assert b.state["FSCK"] == "clean" and b.state["P4_VIEW"] == "rw"
    assert "persistence" in b.live_boot_cmdline and f"persistence-label={PERSISTENCE_LABEL}" in b.live_boot_cmdline
    assert "AmberPi: mode persistent (jumper on gpiochip0 line 17)" in b.console


def test_open_jumper_keeps_the_mode(device: Device) -> None:
    device.env["FAKE_GPIO"] = "float"
    b = boot(device, f"{CMDLINE} amberpi.mode=readonly amberpi.mode_source=marker {JUMPER_LOW}")
    assert b.state["MODE"] == "readonly" and b.state["SOURCE"] == "marker" and b.state["JUMPER"] == "off"
    assert "AmberPi: mode readonly (marker file on the boot partition)" in b.console


@pytest.mark.parametrize(("level", "active"), [("high", "on"), ("float", "off"), ("low", "off")])
def test_active_high_jumper(device: Device, level: str, active: str) -> None:
    device.env["FAKE_GPIO"] = level
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=device amberpi.jumper=:GPIO27:active-high:readonly")
    assert b.gpio_calls == ["chip= line=GPIO27 active-low= bias=pull-down numeric=1"]
    assert b.state["JUMPER"] == active
    assert b.state["MODE"] == ("readonly" if active == "on" else "persistent")


@pytest.mark.parametrize("source", ["menu", "cmdline"])
def test_a_hand_picked_mode_outranks_the_jumper(device: Device, source: str) -> None:
    device.env["FAKE_GPIO"] = "low"
    extra = "amberpi.mode_source=menu" if source == "menu" else "amberpi.mode_source=config amberpi.mode=readonly"
    b = boot(device, f"{CMDLINE} amberpi.mode=readonly {extra} {JUMPER_LOW}")
    assert b.gpio_calls == []
    assert b.state["MODE"] == "readonly" and b.state["SOURCE"] == source and b.state["JUMPER"] == "not-read"


@pytest.mark.parametrize(
    ("failure", "message"),
    [("nochip", "cannot find GPIO chip character device 'gpiochip0'"), ("busy", "unable to request lines: Device or resource busy")],
)
def test_an_unreadable_jumper_is_ignored_with_a_warning(device: Device, failure: str, message: str) -> None:
    device.env["FAKE_GPIO"] = failure
    b = boot(device, f"{CMDLINE} amberpi.mode=readonly amberpi.mode_source=config {JUMPER_LOW}")
    assert b.state["MODE"] == "readonly" and b.state["JUMPER"] == "error"
    assert f"AmberPi: cannot read the jumper on gpiochip0 line 17 (gpioget: {message}); jumper ignored" in b.console
    assert "<4>AmberPi: cannot read the jumper" in b.kmsg


def test_a_malformed_jumper_is_ignored(device: Device) -> None:
    b = boot(device, f"{CMDLINE} amberpi.mode=readonly amberpi.mode_source=config amberpi.jumper=gpiochip0:17:sideways:persistent")
    assert b.gpio_calls == [] and b.state["JUMPER"] == "invalid" and b.state["MODE"] == "readonly"


def test_gpioget_missing_from_the_initramfs(device: Device) -> None:
    (device.fakebin / "gpioget").unlink()
    device.env["PATH"] = f"{device.fakebin}:/usr/sbin:/sbin:/usr/bin:/bin"
    if any((Path(d) / "gpioget").exists() for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")):
        pytest.skip("this host has a real gpioget")
    b = boot(device, f"{CMDLINE} amberpi.mode=readonly amberpi.mode_source=config {JUMPER_LOW}")
    assert b.state["JUMPER"] == "error" and "gpioget is not in the initramfs" in b.console


@pytest.mark.parametrize(("mode", "view"), [("toram", "none"), ("toram-persistent", "ro")])
def test_toram_without_enough_ram_boots_readonly(device: Device, mode: str, view: str) -> None:
    """Short of RAM, readonly shows what the requested mode would have: the factory state, or the saved one."""
    set_ram(device, 700)
    b = boot(device, f"{PERSISTENT} toram amberpi.mode={mode} amberpi.mode_source=config amberpi.toram_mib=900")
    assert b.state["MODE"] == "readonly" and b.state["REQUESTED"] == mode
    assert b.state["REASON"] == f"not enough RAM for {mode}: 700 MiB available, 900 MiB needed"
    assert b.state["P4_VIEW"] == view and b.state["FSCK"] == "skipped"
    assert "toram" not in b.live_boot_cmdline
    if view == "ro":
        assert b.live_boot_cmdline[-3:] == RO_ARGS
    else:
        assert "persistence" not in b.live_boot_cmdline and b.live_boot_cmdline[-1] == "nopersistence"
    assert f"AmberPi: mode readonly instead of {mode} (build default): not enough RAM" in b.console


def test_toram_persistent_without_ram_and_a_partition_that_is_not_clean(device: Device) -> None:
    set_ram(device, 700)
    needs_recovery_by_byte(device.parts / "p4")
    b = boot(device, f"{PERSISTENT} toram amberpi.mode=toram-persistent amberpi.mode_source=config amberpi.toram_mib=900")
    assert b.state["MODE"] == "readonly" and b.state["P4_VIEW"] == "none" and b.state["SUPERBLOCK"] == "needs-recovery"
    reason = b.state["REASON"]
    assert reason.startswith("not enough RAM for toram-persistent") and "; the persistence partition" in reason
    assert b.live_boot_cmdline[-1] == "nopersistence"


def test_toram_with_enough_ram(device: Device) -> None:
    set_ram(device, 901)
    b = boot(device, f"{CMDLINE} toram amberpi.mode=toram amberpi.mode_source=config amberpi.toram_mib=900")
    assert b.state["MODE"] == "toram" and b.state["REASON"] == "" and b.state["P4_VIEW"] == "none"
    assert b.live_boot_cmdline[-2:] == ["toram", "nopersistence"]


def test_a_repairable_partition_is_repaired(device: Device) -> None:
    subprocess.run(["debugfs", "-w", "-R", "ssv state 0", str(device.parts / "p4")], check=True, capture_output=True)
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert b.state["MODE"] == "persistent" and b.state["FSCK"] == "repaired" and b.state["FSCK_CODE"] == "1"
    assert b.state["P4_VIEW"] == "rw"
    assert subprocess.run(["e2fsck", "-n", str(device.parts / "p4")], capture_output=True).returncode == 0


@pytest.mark.parametrize("damage", ["superblock", "root-inode"])
def test_a_damaged_partition_boots_readonly(device: Device, damage: str) -> None:
    p4 = device.parts / "p4"
    if damage == "superblock":
        with p4.open("r+b") as handle:
            handle.seek(1024)
            handle.write(os.urandom(1024))
    else:
        subprocess.run(["debugfs", "-w", "-R", "clri <2>", str(p4)], check=True, capture_output=True)
        subprocess.run(["debugfs", "-w", "-R", "ssv state 0", str(p4)], check=True, capture_output=True)
    before = digest(p4)
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert b.state["MODE"] == "readonly" and b.state["REQUESTED"] == "persistent" and b.state["FSCK"] == "damaged"
    assert b.state["P4_VIEW"] == "none", "a damaged partition is not shown read-only either"
    code = b.state["FSCK_CODE"]
    assert int(code) >= 4
    assert "persistence" not in b.live_boot_cmdline and "persistence-read-only" not in b.live_boot_cmdline
    assert b.live_boot_cmdline[-1] == "nopersistence" and b.blockdev_calls == []
    assert (
        f"AmberPi: mode readonly instead of persistent (build default): the persistence partition {p4} is damaged (e2fsck -p exit {code})"
        in b.console
    )
    assert "<4>AmberPi: mode readonly instead of persistent" in b.kmsg
    assert (device.run_dir / "fsck.log").read_text()
    if damage == "superblock":
        assert digest(p4) == before, "a partition e2fsck cannot open is not written"


def test_a_foreign_partition_is_left_alone(device: Device) -> None:
    make_ext4(device.parts / "p4", label="data")
    before = digest(device.parts / "p4")
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert b.state["MODE"] == "readonly" and b.state["FSCK"] == "foreign" and b.state["P4_VIEW"] == "none"
    assert "is not this image's persistence partition (ext4, label 'data'" in b.state["REASON"]
    assert b.live_boot_cmdline[-1] == "nopersistence"
    assert digest(device.parts / "p4") == before


def test_no_persistence_partition(device: Device) -> None:
    (device.parts / "p4").unlink()
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert b.state["MODE"] == "readonly" and b.state["FSCK"] == "missing" and b.state["P4_VIEW"] == "none"


# --- staged persistence actions ---------------------------------------------------


def p4_tree(root: Path) -> dict[str, str]:
    """Every path under root with its content (files) or '/' (folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = "/" if path.is_dir() else path.read_text()
    return out


def staged(device: Device, action: str, marker: str = "pending") -> Path:
    """A p4 with old data and a staged action, as amberpi-persistence leaves it."""
    root = device.tmp / "p4-mounted"
    (root / "rw/etc").mkdir(parents=True)
    (root / "rw/etc/old").write_text("old")
    (root / "work/work").mkdir(parents=True)
    (root / "home/rw").mkdir(parents=True)
    (root / "lost+found").mkdir()
    (root / "persistence.conf").write_text("/ union\n")
    incoming = root / "amberpi/incoming"
    incoming.mkdir(parents=True)
    if action == "restore":
        (incoming / "rw/etc").mkdir(parents=True)
        (incoming / "rw/etc/new").write_text("new")
    (root / "amberpi" / marker).write_text(f"ACTION={action}\nFROM='/media/backup.tar.zst'\n")
    device.env["AMBERPI_P4_DIR"] = str(root)
    return root


RESTORED = {"amberpi": "/", "lost+found": "/", "persistence.conf": "/ union\n", "rw": "/", "rw/etc": "/", "rw/etc/new": "new"}
RESET = {"amberpi": "/", "lost+found": "/", "persistence.conf": "/ union\n"}


@pytest.mark.parametrize("action", ["restore", "reset"])
def test_a_staged_action_is_swapped_in(device: Device, action: str) -> None:
    root = staged(device, action)
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert p4_tree(root) == (RESTORED if action == "restore" else RESET)
    assert b.state["PENDING"] == f"{action} applied"
    assert f"AmberPi: persistence {action} applied" in b.console


def test_a_staged_action_waits_for_a_boot_with_persistence(device: Device) -> None:
    root = staged(device, "restore")
    before = p4_tree(root)
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["P4_VIEW"] == "ro", "shown read-only: nothing is applied"
    assert p4_tree(root) == before and b.state["PENDING"] == "none"


def cut_during_outgoing(root: Path) -> None:
    # Power cut after rw moved out, before work and home did.
    (root / "amberpi/outgoing").mkdir()
    (root / "rw").rename(root / "amberpi/outgoing/rw")


def cut_during_swap(root: Path) -> None:
    # Power cut in the swap phase after the new rw moved in.
    (root / "amberpi/outgoing").mkdir()
    for name in ("rw", "work", "home"):
        (root / name).rename(root / "amberpi/outgoing" / name)
    (root / "amberpi/pending").rename(root / "amberpi/swapping")
    (root / "amberpi/incoming/rw").rename(root / "rw")


def cut_during_cleanup(root: Path) -> None:
    cut_during_swap(root)
    (root / "amberpi/swapping").rename(root / "amberpi/done")
    (root / "amberpi/incoming").rmdir()


@pytest.mark.parametrize("cut", [cut_during_outgoing, cut_during_swap, cut_during_cleanup], ids=lambda f: f.__name__)
def test_an_interrupted_swap_is_finished(device: Device, cut) -> None:  # type: ignore[no-untyped-def]
    root = staged(device, "restore")
    cut(root)
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert p4_tree(root) == RESTORED
    assert b.state["PENDING"] == "restore applied"


def test_a_failed_step_stops_the_swap_where_it_is(device: Device) -> None:
    root = staged(device, "restore")
    # An entry the initramfs cannot move: the apply stops before the swap phase.
    fake_tool(device.fakebin, "mv", 'case "$1" in */home) echo "mv: cannot move" >&2; exit 1 ;; esac\nexec /bin/mv "$@"\n')
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert b.state["PENDING"] == "interrupted"
    assert (root / "amberpi/pending").exists() and (root / "home").is_dir() and (root / "amberpi/incoming/rw/etc/new").exists()
    (device.fakebin / "mv").unlink()
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent amberpi.mode_source=config")
    assert p4_tree(root) == RESTORED and b.state["PENDING"] == "restore applied"


@pytest.mark.parametrize(
    ("conf", "layers", "shown"),
    [
        ("/ union\n", [], False),
        ("/ union\n", ["rw"], True),
        ("/home union\n/var/lib/app union\n", ["home/rw"], False),
        ("/home union\n/var/lib/app union\n", ["home/rw", "var/lib/app/rw"], True),
        ("# comment\n/home union\n", ["home/rw"], True),
    ],
)
def test_readonly_shows_p4_only_with_every_saved_layer_there(device: Device, conf: str, layers: list[str], shown: bool) -> None:
    """Before: a fresh (or reset) p4 has no rw folder yet; live-boot, told to stack it read-only,
    unmounted the root and failed the boot ("special device overlay does not exist")."""
    contents = Path(device.env["AMBERPI_P4_DIR"])
    (contents / "rw").rmdir()
    (contents / "persistence.conf").write_text(conf)
    for layer in layers:
        (contents / layer).mkdir(parents=True)
    b = boot(device, f"{READONLY} amberpi.mode=readonly amberpi.mode_source=config")
    assert b.state["MODE"] == "readonly"
    if shown:
        assert b.state["P4_VIEW"] == "ro" and b.live_boot_cmdline[-3:] == RO_ARGS
    else:
        assert b.state["P4_VIEW"] == "none" and "nothing is kept on the persistence partition" in b.state["REASON"]
        assert "nopersistence" in b.live_boot_cmdline


def test_the_factory_kernel_on_the_kernel_partition_is_not_warned_about(device: Device) -> None:
    """Before: a fresh device boots the factory kernel from p3 (amberpi.kernel=current); toram
    warned that its modules were missing, though they are in the squashfs."""
    running = subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
    b = boot(device, f"{CMDLINE} amberpi.factory={running} toram amberpi.mode=toram amberpi.mode_source=device")
    assert b.state["P4_VIEW"] == "none" and "without its modules" not in b.console
    b = boot(device, f"{CMDLINE} amberpi.factory=0.0.0-other toram amberpi.mode=toram amberpi.mode_source=device")
    assert "runs without its modules in toram mode" in b.console


def test_the_images_settings_are_kept_for_the_device_tools(device: Device) -> None:
    """In toram, live-boot's copy of the medium in RAM holds only live/: .disk/*.conf is copied first."""
    medium = Path(device.env["AMBERPI_MEDIUM_DIR"]) / ".disk"
    (medium / "resilience.conf").write_text("MODE='readonly'\n")
    boot(device, CMDLINE + " persistence amberpi.mode=toram")
    kept = device.run_dir / "disk"
    assert (kept / "amberpi.conf").read_text() == (medium / "amberpi.conf").read_text()
    assert (kept / "resilience.conf").read_text() == "MODE='readonly'\n"


def test_a_system_partition_that_cannot_be_mounted_only_warns(device: Device) -> None:
    del device.env["AMBERPI_SYSTEM_DIR"]
    result = boot(device, CMDLINE + " persistence")
    assert "cannot" in result.console and "the image's settings" in result.console
    assert result.state["MODE"] == "persistent", "the boot goes on"


def test_live_boot_is_pointed_at_the_partition_amberpi_media_chose(device: Device) -> None:
    """A label names every copy of this card too: live-boot gets the very partition instead."""
    device.run_dir.mkdir(parents=True, exist_ok=True)
    (device.run_dir / "system-partition").write_text("/dev/vdb2\n")
    b = boot(device, f"{PERSISTENT} amberpi.mode=persistent")
    assert "live-media=/dev/vdb2" in b.live_boot_cmdline
    assert not [arg for arg in b.live_boot_cmdline if arg.startswith("live-media=/dev/disk/by-label/")]


@pytest.mark.parametrize(
    ("args", "rotated"),
    [
        ("amberpi.mode=persistent amberpi.claim=00112233aabbccdd", True),
        ("amberpi.mode=toram-persistent amberpi.claim=00112233aabbccdd", True),
        # GRUB passes the token unwritten in the modes that write nothing, and nothing writes here either.
        ("amberpi.mode=readonly amberpi.token=00112233aabbccdd", False),
        ("amberpi.mode=persistent amberpi.token=00112233aabbccdd", False),
        # A readonly boot picked after GRUB claimed the disk: still nothing written.
        ("amberpi.mode=readonly amberpi.claim=00112233aabbccdd", False),
    ],
)
def test_a_new_boot_token_after_a_claim_in_the_modes_that_write(device: Device, args: str, rotated: bool) -> None:
    before = device.grubenv()
    b = boot(device, f"{PERSISTENT} {args}")
    after = device.grubenv()
    if rotated:
        token = after.pop("amberpi_token")
        assert len(token) == 16 and int(token, 16) >= 0 and token != "00112233aabbccdd"
        assert after == before, "only the token changes"
        again = boot(device, f"{PERSISTENT} {args}")
        assert device.grubenv()["amberpi_token"] != token, "a new one at every boot"
        assert "boot token" not in again.console
    else:
        assert after == before
        assert "boot token" not in b.console


def test_a_token_that_cannot_be_made_or_written_is_said_and_the_boot_goes_on(device: Device) -> None:
    claim = f"{PERSISTENT} amberpi.mode=persistent amberpi.claim=00112233aabbccdd"
    before = device.grubenv()
    device.env["AMBERPI_RANDOM"] = "/dev/null"
    b = boot(device, claim)
    assert "AmberPi: cannot make a new boot token (no random source)" in b.console
    del device.env["AMBERPI_RANDOM"]
    # A card that refuses writes: dd reads, but every write fails.
    real_dd = shutil.which("dd")
    refuse_writes = 'for a in "$@"; do case "$a" in of=*) echo "dd: error writing: Read-only file system" >&2; exit 1 ;; esac; done\n'
    fake_tool(device.fakebin, "dd", f'{refuse_writes}exec {real_dd} "$@"\n')
    b = boot(device, claim)
    said = "AmberPi: cannot leave a new boot token in GRUB's environment block: amberpi: error: cannot write GRUB's environment block"
    assert said in b.console
    assert b.state["MODE"] == "persistent" and b.state["P4_VIEW"] == "rw", "the boot goes on"
    assert device.grubenv() == before
