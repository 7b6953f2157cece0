"""amberpi-halt-button and amberpi-journal-save under dash and busybox sh, with fake gpiomon, systemctl and journalctl."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.device.devicekit import LIB, SBIN, SHELLS, Device, fake_tool, make_device

# libgpiod 2.2's gpiomon: records its arguments; FAKE_GPIOMON says what the line does.
FAKE_GPIOMON = r"""
echo "$*" >> "$FAKE_LOG"
chip=
while [ $# -gt 1 ]; do case "$1" in -c | --chip) chip=$2; shift ;; esac; shift; done
case "$FAKE_GPIOMON" in
	press) exit 0 ;;
	nochip) echo "gpiomon: cannot find GPIO chip character device '$chip'" >&2; exit 1 ;;
	noline) echo "gpiomon: offset 99 is out of range on chip '$chip'" >&2; exit 1 ;;
	busy) echo "gpiomon: unable to request lines on chip /dev/$chip: Device or resource busy" >&2; exit 1 ;;
	crash) echo "gpiomon: unable to read line events: Input/output error" >&2; exit 1 ;;
esac
"""


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    device = make_device(tmp_path, request.param)
    fake_tool(device.fakebin, "gpiomon", FAKE_GPIOMON)
    fake_tool(device.fakebin, "systemctl", 'echo "systemctl $*" >> "$FAKE_LOG"\n')
    device.env.update(AMBERPI_LIB=str(LIB), FAKE_LOG=str(tmp_path / "calls"), FAKE_GPIOMON="press")
    return device


def calls(device: Device) -> list[str]:
    log = Path(device.env["FAKE_LOG"])
    return log.read_text().splitlines() if log.exists() else []


# --- halt button ------------------------------------------------------------------


def test_not_configured(device: Device) -> None:
    device.set_profile(DEFAULT_MODE="readonly")
    result = device.tool("amberpi-halt-button")
    assert result.returncode == 0 and "no halt button configured" in result.stdout
    assert calls(device) == []


@pytest.mark.parametrize(
    ("active", "args"),
    [("low", "--active-low --bias pull-up"), ("high", "--bias pull-down")],
)
def test_a_press_powers_off(device: Device, active: str, args: str) -> None:
    device.set_profile(HALT_CHIP="gpiochip0", HALT_LINE="3", HALT_ACTIVE=active)
    result = device.tool("amberpi-halt-button")
    assert result.returncode == 0, result.stderr
    assert f"halt button pressed on gpiochip0 line 3 (active {active}): powering off" in result.stdout
    assert calls(device) == [
        f"--num-events 1 --edges rising --debounce-period 50ms --quiet --chip gpiochip0 {args} 3",
        "systemctl poweroff",
    ]


def test_a_named_line_and_a_longer_debounce(device: Device) -> None:
    device.set_profile(HALT_LINE="GPIO27", HALT_DEBOUNCE_MS="200")
    assert device.tool("amberpi-halt-button").returncode == 0
    assert calls(device)[0] == "--num-events 1 --edges rising --debounce-period 200ms --quiet --active-low --bias pull-up GPIO27"


@pytest.mark.parametrize(
    ("failure", "code", "message"),
    [
        ("nochip", 3, "does not exist: gpiomon: cannot find GPIO chip character device 'gpiochip9'"),
        ("noline", 3, "does not exist: gpiomon: offset 99 is out of range"),
        ("busy", 3, "is held by something else (a kernel driver such as gpio-keys?)"),
        ("crash", 1, "gpiomon failed on gpiochip9 line 99 (active low) (exit 1)"),
    ],
)
def test_a_button_that_cannot_work(device: Device, failure: str, code: int, message: str) -> None:
    device.set_profile(HALT_CHIP="gpiochip9", HALT_LINE="99")
    device.env["FAKE_GPIOMON"] = failure
    result = device.tool("amberpi-halt-button")
    assert result.returncode == code
    assert message in result.stderr
    assert "systemctl poweroff" not in calls(device)


@pytest.mark.parametrize("profile", [{"HALT_LINE": "3", "HALT_ACTIVE": "sideways"}, {"HALT_LINE": "3", "HALT_DEBOUNCE_MS": "soon"}])
def test_bad_settings(device: Device, profile: dict[str, str]) -> None:
    device.set_profile(**profile)
    result = device.tool("amberpi-halt-button")
    assert result.returncode == 3 and calls(device) == []


# --- journal saves ----------------------------------------------------------------

# journalctl with --cursor-file: prints the entries after the saved cursor and
# stores the last one's; the "journal" grows by FAKE_NEW entries per call.
FAKE_JOURNALCTL = r"""
echo "journalctl $*" >> "$FAKE_LOG"
for arg in "$@"; do case "$arg" in --cursor-file=*) cursor=${arg#*=} ;; esac; done
last=$(cat "$FAKE_JOURNAL_SIZE" 2>/dev/null || echo 0)
total=$((last + ${FAKE_NEW:-3}))
echo "$total" > "$FAKE_JOURNAL_SIZE"
from=$(cat "$cursor" 2>/dev/null || echo 0)
i=$from
while [ "$i" -lt "$total" ]; do i=$((i + 1)); echo "2026-01-01T00:00:0$((i % 10)).000000+0000 kiosk app[1]: entry $i"; done
echo "$total" > "$cursor"
"""


@pytest.fixture
def logger(device: Device, tmp_path: Path) -> Device:
    fake_tool(device.fakebin, "journalctl", FAKE_JOURNALCTL)
    (tmp_path / "p4-mounted").mkdir()
    (tmp_path / "boot_id").write_text("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
    device.env.update(
        AMBERPI_PERSISTENCE_MOUNT=str(tmp_path / "p4-mounted"),
        AMBERPI_BOOT_ID_FILE=str(tmp_path / "boot_id"),
        FAKE_JOURNAL_SIZE=str(tmp_path / "journal-size"),
    )
    device.set_profile(JOURNAL_SAVE="yes", JOURNAL_SAVE_MINUTES="0", JOURNAL_SAVE_MAX_MIB="1")
    device.set_state(MODE="persistent")
    return device


def saved(device: Device) -> list[Path]:
    return sorted((Path(device.env["AMBERPI_PERSISTENCE_MOUNT"]) / "amberpi/journal").glob("journal-*.log"))


def test_saves_only_what_is_new(logger: Device) -> None:
    assert logger.tool("amberpi-journal-save").returncode == 0
    assert logger.tool("amberpi-journal-save").returncode == 0
    files = saved(logger)
    assert len(files) == 1 and files[0].name.endswith("-0f1e2d3c.log")
    lines = files[0].read_text().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(1, 7)]
    assert (
        calls(logger)[0] == f"journalctl --no-pager --quiet --boot --output=short-iso-precise --cursor-file={logger.run_dir}/journal.cursor"
    )


def test_old_saves_go_when_over_the_cap(logger: Device) -> None:
    folder = Path(logger.env["AMBERPI_PERSISTENCE_MOUNT"]) / "amberpi/journal"
    folder.mkdir(parents=True)
    for day in ("20250101", "20250102", "20250103"):
        (folder / f"journal-{day}T000000-aaaaaaaa.log").write_bytes(b"x" * 400_000)
    result = logger.tool("amberpi-journal-save")
    assert result.returncode == 0
    names = [p.name for p in saved(logger)]
    assert "journal-20250101T000000-aaaaaaaa.log" not in names and "journal-20250103T000000-aaaaaaaa.log" in names
    assert any(name.endswith("-0f1e2d3c.log") for name in names)
    assert "removed" in result.stdout


@pytest.mark.parametrize(
    ("profile", "state", "why"),
    [
        ({"JOURNAL_SAVE": "no"}, "persistent", "not enabled"),
        ({"JOURNAL_SAVE": "yes"}, "readonly", "mode readonly keeps no persistent logs"),
    ],
)
def test_nothing_without_persistence_or_when_off(logger: Device, profile: dict[str, str], state: str, why: str) -> None:
    """readonly shows the partition read-only (it is mounted): nothing is saved on it."""
    logger.set_profile(**profile)
    logger.set_state(MODE=state, P4_VIEW="rw" if state == "persistent" else "ro")
    for args in ((), ("--every",)):
        result = logger.tool("amberpi-journal-save", *args, timeout=10)
        assert result.returncode == 0 and why in result.stdout
    assert saved(logger) == []


def test_every_saves_once_more_when_stopped(logger: Device) -> None:
    process = subprocess.Popen(
        [*logger.shell, str(SBIN / "amberpi-journal-save"), "--every"],
        env=logger.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    assert process.poll() is None, "runs until stopped"
    assert saved(logger) == [], "JOURNAL_SAVE_MINUTES=0: nothing before the end"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert len(saved(logger)) == 1 and "entry 3" in saved(logger)[0].read_text()


def test_bad_numbers(logger: Device) -> None:
    logger.set_profile(JOURNAL_SAVE="yes", JOURNAL_SAVE_MAX_MIB="lots")
    result = logger.tool("amberpi-journal-save")
    assert result.returncode == 1 and "JOURNAL_SAVE_MAX_MIB" in result.stderr
