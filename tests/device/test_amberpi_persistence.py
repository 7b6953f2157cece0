"""amberpi-persistence on the host, under dash and busybox sh.

A folder stands in for the mounted persistence partition, holding what live-boot
leaves there: persistence.conf, the overlay's upper layer rw/ (with an overlayfs
whiteout and an opaque folder), its work/ folder, lost+found. A staged restore
or reset is then applied by the initramfs script itself, as at the next boot.
"""

from __future__ import annotations

import os
import pty
import stat
import subprocess
from pathlib import Path

import pytest

from tests.device.devicekit import CMDLINE, LIB, PERSISTENCE_LABEL, ROOTFS, SHELLS, Device, fake_tool, make_device, make_ext4

PREMOUNT = ROOTFS / "etc/initramfs-tools/scripts/live-premount/amberpi-mode"
PERSISTENT = f"{CMDLINE} persistence persistence-label={PERSISTENCE_LABEL} amberpi.mode=persistent amberpi.mode_source=config"
OPAQUE = "trusted.overlay.opaque"


def fill_partition(root: Path) -> None:
    (root / "rw/etc/ssh").mkdir(parents=True)
    (root / "rw/etc/hostname").write_text("kiosk\n")
    (root / "rw/etc/ssh/ssh_host_ed25519_key").write_text("secret\n")
    (root / "rw/etc/ssh/ssh_host_ed25519_key").chmod(0o600)
    (root / "rw/root").mkdir()
    (root / "rw/root/notes.txt").write_text("keep me\n")
    # A file deleted from the squashfs: overlayfs records it as a 0/0 character device.
    os.mknod(root / "rw/etc/motd", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.setxattr(root / "rw/root", OPAQUE, b"y")
    (root / "work/work").mkdir(parents=True)
    (root / "work/work/leftover").write_text("overlayfs internals")
    (root / "lost+found").mkdir()
    (root / "persistence.conf").write_text("/ union\n")
    (root / "amberpi/journal").mkdir(parents=True)
    (root / "amberpi/journal/journal-20260101T000000-abcdef01.log").write_text("log\n")


def snapshot(root: Path, top: str = "rw") -> dict[str, object]:
    """Content, mode, device kind and overlay attribute of every path under root/top."""
    out: dict[str, object] = {}
    for path in sorted((root / top).rglob("*")):
        info = path.lstat()
        kind = "chr" if stat.S_ISCHR(info.st_mode) else "dir" if path.is_dir() else "file"
        content = path.read_text() if kind == "file" else None
        try:
            opaque = os.getxattr(path, OPAQUE, follow_symlinks=False)
        except OSError:
            opaque = None
        out[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), content, opaque)
    return out


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Device:
    device = make_device(tmp_path, request.param)
    mounted = tmp_path / "p4-mounted"
    fill_partition(mounted)
    make_ext4(device.parts / "p4")
    device.env.update(
        AMBERPI_LIB=str(LIB),
        AMBERPI_PERSISTENCE_MOUNT=str(mounted),
        AMBERPI_FACTORY_CONF=str(tmp_path / "factory-persistence.conf"),
        AMBERPI_PARAM_CONF=str(tmp_path / "param.conf"),
        AMBERPI_MEMINFO="/proc/meminfo",
        AMBERPI_KMSG=str(tmp_path / "kmsg"),
    )
    device.set_cmdline(PERSISTENT)
    device.set_state(
        MODE="persistent", SOURCE="config", SOURCE_TEXT="build default", FSCK="clean", P4_VIEW="rw",
        PERSISTENCE_DEVICE=str(device.parts / "p4"),
    )  # fmt: skip
    return device


def mounted(device: Device) -> Path:
    return Path(device.env["AMBERPI_PERSISTENCE_MOUNT"])


def next_boot(device: Device) -> subprocess.CompletedProcess[str]:
    """The initramfs at the next boot, applying what is staged on the partition."""
    env = dict(device.env, AMBERPI_P4_DIR=str(mounted(device)))
    result = subprocess.run([*device.shell, str(PREMOUNT)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def manifest(backup: Path) -> dict[str, str]:
    """Read back with standard tools only, as a person would years later."""
    text = subprocess.run(
        ["tar", "--zstd", "-x", "-i", "-O", "-f", str(backup), "AMBERPI-MANIFEST"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in text.splitlines())


def test_backup_holds_the_upper_layer_and_a_manifest(device: Device, tmp_path: Path) -> None:
    backup = tmp_path / "backup.tar.zst"
    result = device.tool("amberpi-persistence", "backup", str(backup))
    assert result.returncode == 0, result.stderr
    assert f"backup written: {backup}" in result.stdout
    assert subprocess.run(["zstd", "-t", "-q", str(backup)]).returncode == 0
    listing = subprocess.run(["tar", "--zstd", "-t", "-i", "-f", str(backup)], capture_output=True, text=True, check=True).stdout.split()
    assert "./rw/root/notes.txt" in listing and "./rw/etc/motd" in listing and "./persistence.conf" in listing
    assert not any(name.startswith(("./work", "./amberpi", "./lost+found")) for name in listing)
    info = manifest(backup)
    assert info["format"] == "amberpi-backup-1" and info["image_id"] == "1a2b3c4d" and info["board"] == "pi3"
    assert info["mode"] == "persistent" and info["persists"] == "the whole root file system (/ union)"
    assert int(info["files"]) == len([n for n in listing if n != "AMBERPI-MANIFEST"])
    data = backup.read_bytes()[: int(info["payload_bytes"])]
    import hashlib

    assert hashlib.sha256(data).hexdigest() == info["payload_sha256"]
    assert not backup.with_name("backup.tar.zst.partial").exists()


def test_backup_restore_round_trip(device: Device, tmp_path: Path) -> None:
    root = mounted(device)
    before = snapshot(root)
    backup = tmp_path / "backup.tar.zst"
    assert device.tool("amberpi-persistence", "backup", str(backup)).returncode == 0
    # Life goes on: files change, then the backup is restored.
    (root / "rw/root/notes.txt").write_text("changed\n")
    (root / "rw/root/new.txt").write_text("new\n")
    (root / "persistence.conf").write_text("/ union\n# this image's own\n")
    result = device.tool("amberpi-persistence", "restore", str(backup))
    assert result.returncode == 0, result.stderr
    assert "verified: " in result.stdout and "restore staged" in result.stdout
    assert (root / "amberpi/pending").exists()
    assert (root / "rw/root/new.txt").exists(), "nothing changes before the next boot"
    assert "pending:       restore of " in device.tool("amberpi-persistence", "status").stdout
    next_boot(device)
    assert snapshot(root) == before
    assert (root / "persistence.conf").read_text() == "/ union\n# this image's own\n", "the image's persistence.conf stays"
    assert not (root / "work").exists() and (root / "amberpi/journal").is_dir()
    assert sorted(p.name for p in (root / "amberpi").iterdir()) == ["journal"]


def test_restore_refuses_a_damaged_backup(device: Device, tmp_path: Path) -> None:
    backup = tmp_path / "backup.tar.zst"
    assert device.tool("amberpi-persistence", "backup", str(backup)).returncode == 0
    data = bytearray(backup.read_bytes())
    data[200] ^= 0xFF
    backup.write_bytes(bytes(data))
    result = device.tool("amberpi-persistence", "restore", str(backup))
    assert result.returncode == 1 and "damaged" in result.stderr
    assert not (mounted(device) / "amberpi/pending").exists() and not (mounted(device) / "amberpi/incoming").exists()


def test_restore_checks_the_data_against_the_manifest(device: Device, tmp_path: Path) -> None:
    backup = tmp_path / "backup.tar.zst"
    assert device.tool("amberpi-persistence", "backup", str(backup)).returncode == 0
    info = manifest(backup)
    # A well-formed stream whose manifest does not describe its data.
    folder = tmp_path / "forged"
    folder.mkdir()
    info["payload_sha256"] = "0" * 64
    (folder / "AMBERPI-MANIFEST").write_text("".join(f"{k}={v}\n" for k, v in info.items()))
    tail = subprocess.run(f"tar -c -C {folder} AMBERPI-MANIFEST | zstd -q", shell=True, capture_output=True, check=True).stdout
    backup.write_bytes(backup.read_bytes()[: int(info["payload_bytes"])] + tail)
    result = device.tool("amberpi-persistence", "restore", str(backup))
    assert result.returncode == 1 and "does not match its manifest's SHA-256" in result.stderr
    not_a_backup = tmp_path / "other.tar.zst"
    subprocess.run(f"tar -c -C {folder} . | zstd -q > {not_a_backup}", shell=True, check=True)
    (folder / "AMBERPI-MANIFEST").unlink()
    subprocess.run(f"tar -c -C {folder} . | zstd -q > {not_a_backup}", shell=True, check=True)
    result = device.tool("amberpi-persistence", "restore", str(not_a_backup))
    assert result.returncode == 1 and "not an amberpi-persistence backup" in result.stderr


def test_restore_of_another_image_needs_force(device: Device, tmp_path: Path) -> None:
    backup = tmp_path / "backup.tar.zst"
    assert device.tool("amberpi-persistence", "backup", str(backup)).returncode == 0
    device.set_cmdline(PERSISTENT.replace("amberpi.id=1a2b3c4d", "amberpi.id=deadbeef"))
    result = device.tool("amberpi-persistence", "restore", str(backup))
    assert result.returncode == 3
    assert "is a backup of image 1a2b3c4d, this is image deadbeef" in result.stderr and "--force" in result.stderr
    assert not (mounted(device) / "amberpi/pending").exists()
    result = device.tool("amberpi-persistence", "restore", str(backup), "--force")
    assert result.returncode == 0 and "(--force)" in result.stderr
    assert (mounted(device) / "amberpi/pending").exists()


def test_restore_refuses_without_room(device: Device, tmp_path: Path) -> None:
    backup = tmp_path / "backup.tar.zst"
    assert device.tool("amberpi-persistence", "backup", str(backup)).returncode == 0
    fake_tool(device.fakebin, "df", "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\necho 'p4 2048 2000 48 98% /p4'\n")
    result = device.tool("amberpi-persistence", "restore", str(backup))
    assert result.returncode == 3 and "MiB free on the persistence partition" in result.stderr
    assert not (mounted(device) / "amberpi/incoming").exists()


@pytest.mark.parametrize("mode", ["readonly", "toram"])
@pytest.mark.parametrize("command", ["backup", "restore", "reset"])
def test_modes_without_persistence_refuse_and_say_how(device: Device, tmp_path: Path, mode: str, command: str) -> None:
    backup = tmp_path / "backup.tar.zst"
    assert device.tool("amberpi-persistence", "backup", str(backup)).returncode == 0
    del device.env["AMBERPI_PERSISTENCE_MOUNT"]
    device.set_state(MODE=mode, SOURCE="device", FSCK="skipped", P4_VIEW="none")
    args = {"backup": [str(tmp_path / "b2.tar.zst")], "restore": [str(backup)], "reset": ["--yes"]}[command]
    result = device.tool("amberpi-persistence", command, *args)
    assert result.returncode == 3
    assert f"this boot runs in {mode} mode and never writes the card" in result.stderr
    assert "'amberpi-mode set persistent --once'" in result.stderr
    status = device.tool("amberpi-persistence", "status").stdout
    assert "persists:      nothing: changes live in RAM" in status and f"not checked (the {mode} mode" in status
    assert "view:          none (P4_VIEW=none)" in status


def test_reset_asks_or_needs_yes(device: Device) -> None:
    root = mounted(device)
    result = device.tool("amberpi-persistence", "reset", stdin="y\n")
    assert result.returncode == 3 and "Not on a terminal: run again with --yes" in result.stderr
    assert not (root / "amberpi/pending").exists()
    result = device.tool("amberpi-persistence", "reset", "--yes")
    assert result.returncode == 0 and "reset staged" in result.stdout
    next_boot(device)
    assert sorted(p.name for p in root.iterdir()) == ["amberpi", "lost+found", "persistence.conf"]
    assert (root / "amberpi/journal").is_dir(), "saved logs outlive a reset"


def run_on_terminal(device: Device, answer: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [*device.shell, str(ROOTFS / "usr/sbin/amberpi-persistence"), "reset"], stdin=slave, stdout=slave, stderr=slave, env=device.env
    )
    os.close(slave)
    os.write(master, answer.encode())
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_reset_on_a_terminal(device: Device) -> None:
    code, output = run_on_terminal(device, "n\n")
    assert code == 3 and "Erase every persistent change" in output and "nothing changed" in output
    assert not (mounted(device) / "amberpi/pending").exists()
    code, output = run_on_terminal(device, "y\n")
    assert code == 0 and "reset staged" in output
    assert "ACTION=reset" in (mounted(device) / "amberpi/pending").read_text()


def test_cancel(device: Device) -> None:
    assert device.tool("amberpi-persistence", "reset", "--yes").returncode == 0
    result = device.tool("amberpi-persistence", "cancel")
    assert result.returncode == 0 and "the staged reset is dropped" in result.stdout
    assert sorted(p.name for p in (mounted(device) / "amberpi").iterdir()) == ["journal"]
    next_boot(device)
    assert (mounted(device) / "rw/root/notes.txt").exists()


def test_a_half_applied_swap_blocks_new_actions(device: Device) -> None:
    (mounted(device) / "amberpi/swapping").write_text("ACTION=reset\n")
    result = device.tool("amberpi-persistence", "reset", "--yes")
    assert result.returncode == 3 and "half-applied" in result.stderr


def test_status_in_persistent_mode(device: Device) -> None:
    result = device.tool("amberpi-persistence", "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mode:          persistent (build default)" in out
    assert "persists:      the whole root file system (/ union)" in out
    assert f"partition:     {device.parts / 'p4'} on {mounted(device)}: " in out and "MiB free" in out
    assert "check at boot: clean" in out and "pending:       none" in out
    assert "view:          read-write (P4_VIEW=rw)" in out
    assert "saved logs:    1 files" in out
    (mounted(device) / "persistence.conf").write_text("/home union\n/var/lib/myapp source=myapp\n")
    assert "persists:      only these paths: /home /var/lib/myapp" in device.tool("amberpi-persistence", "status").stdout


def test_a_damaged_partition_is_reported_and_recreated_by_reset(device: Device) -> None:
    p4 = device.parts / "p4"
    with p4.open("r+b") as handle:
        handle.seek(1024)
        handle.write(b"\0" * 1024)
    del device.env["AMBERPI_PERSISTENCE_MOUNT"]
    device.set_state(
        MODE="readonly", SOURCE="config", REQUESTED="persistent", FSCK="damaged", FSCK_CODE="8", PERSISTENCE_DEVICE=str(p4),
        REASON=f"the persistence partition {p4} is damaged (e2fsck -p exit 8) and is left as it is",
    )  # fmt: skip
    (device.run_dir / "fsck.log").write_text("e2fsck: Bad magic number in super-block while trying to open p4\n")
    status = device.tool("amberpi-persistence", "status").stdout
    assert "check at boot: DAMAGED: e2fsck -p could not repair it (exit 8)" in status
    assert "| e2fsck: Bad magic number" in status and "'amberpi-persistence reset' recreates it" in status
    assert device.tool("amberpi-persistence", "backup", str(device.tmp / "b.tar.zst")).returncode == 3
    Path(device.env["AMBERPI_FACTORY_CONF"]).write_text("/home union\n")
    result = device.tool("amberpi-persistence", "reset", "--yes")
    assert result.returncode == 0, result.stderr
    assert "recreated empty" in result.stdout
    assert subprocess.run(["e2fsck", "-n", str(p4)], capture_output=True).returncode == 0
    label = subprocess.run(["blkid", "-s", "LABEL", "-o", "value", str(p4)], capture_output=True, text=True).stdout.strip()
    assert label == PERSISTENCE_LABEL
    conf = subprocess.run(["debugfs", "-R", "cat /persistence.conf", str(p4)], capture_output=True, text=True).stdout
    assert conf == "/home union\n"


def readonly_view(device: Device, *, recorded: bool) -> None:
    """readonly with the partition shown read-only: recorded at boot, or only seen in the mount table."""
    state = {"MODE": "readonly", "SOURCE": "config", "SOURCE_TEXT": "build default", "FSCK": "skipped", "SUPERBLOCK": "clean"}
    state["PERSISTENCE_DEVICE"] = str(device.parts / "p4")
    if recorded:
        state["P4_VIEW"] = "ro"
    device.set_state(**state)
    device.set_mounts(f"{device.parts / 'p4'} {mounted(device)} ext4 ro,noatime 0 0")


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "mount-table"])
def test_readonly_shows_the_partition_but_never_writes_it(device: Device, tmp_path: Path, recorded: bool) -> None:
    backup = tmp_path / "backup.tar.zst"
    assert device.tool("amberpi-persistence", "backup", str(backup)).returncode == 0
    readonly_view(device, recorded=recorded)
    root = mounted(device)
    before = snapshot(root), sorted(p.name for p in (root / "amberpi").iterdir())
    for args in (["restore", str(backup)], ["reset", "--yes"], ["cancel"]):
        result = device.tool("amberpi-persistence", *args)
        assert result.returncode == 3, args
        assert "the persistence partition is only shown read-only and the card is never written" in result.stderr
        assert f"'amberpi-mode set persistent --once', reboot, then run 'amberpi-persistence {args[0]}' again" in result.stderr
    assert (snapshot(root), sorted(p.name for p in (root / "amberpi").iterdir())) == before
    # Reading it is fine: a backup of what persistent mode saved.
    again = tmp_path / "again.tar.zst"
    result = device.tool("amberpi-persistence", "backup", str(again))
    assert result.returncode == 0, result.stderr
    assert manifest(again)["mode"] == "readonly"
    out = device.tool("amberpi-persistence", "status").stdout
    assert "persists:      nothing in this boot: changes live in RAM and are gone at reboot" in out
    assert "shown:         read-only, what persistent mode saved: the whole root file system (/ union)" in out
    assert f"partition:     {device.parts / 'p4'} on {root}: " in out
    if recorded:
        assert "view:          read-only (P4_VIEW=ro)" in out
    assert "check at boot: superblock clean (only read: readonly runs no e2fsck, which writes)" in out


@pytest.mark.parametrize(
    ("superblock", "shown"),
    [
        ("needs-recovery", "check at boot: NOT CLEAN: its journal needs replaying"),
        ("errors", "check at boot: ERRORS recorded in its superblock"),
        ("not-clean", "check at boot: NOT CLEAN: not marked clean"),
    ],
)
def test_readonly_without_an_unclean_partition(device: Device, superblock: str, shown: str) -> None:
    p4 = device.parts / "p4"
    del device.env["AMBERPI_PERSISTENCE_MOUNT"]
    reason = f"the persistence partition {p4} was not shut down cleanly; readonly never repairs it, so it is left out"
    device.set_state(
        MODE="readonly", SOURCE="config", REQUESTED="readonly", FSCK="skipped", SUPERBLOCK=superblock, P4_VIEW="none",
        PERSISTENCE_DEVICE=str(p4), REASON=reason,
    )  # fmt: skip
    out = device.tool("amberpi-persistence", "status").stdout
    assert shown in out and "to repair: boot once in persistent mode ('amberpi-mode set persistent --once', reboot)" in out
    assert f"why:           {reason}" in out and "view:          none (P4_VIEW=none)" in out
    before = p4.read_bytes()
    result = device.tool("amberpi-persistence", "reset", "--yes")
    assert result.returncode == 3 and "this boot runs in readonly mode and never writes the card" in result.stderr
    assert p4.read_bytes() == before, "only a partition without a file system is recreated"


def test_readonly_recreates_a_partition_without_a_file_system(device: Device) -> None:
    p4 = device.parts / "p4"
    with p4.open("r+b") as handle:
        handle.seek(1024)
        handle.write(b"\0" * 1024)
    del device.env["AMBERPI_PERSISTENCE_MOUNT"]
    device.set_state(
        MODE="readonly", SOURCE="config", REQUESTED="readonly", FSCK="skipped", SUPERBLOCK="bad-magic", P4_VIEW="none",
        PERSISTENCE_DEVICE=str(p4), REASON=f"the persistence partition {p4} holds no ext4 file system (bad superblock magic)",
    )  # fmt: skip
    out = device.tool("amberpi-persistence", "status").stdout
    assert "check at boot: DAMAGED: no ext4 file system (bad superblock magic)" in out and "'amberpi-persistence reset' recreates it" in out
    result = device.tool("amberpi-persistence", "backup", str(device.tmp / "b.tar.zst"))
    assert result.returncode == 3 and "the persistence partition is damaged" in result.stderr
    result = device.tool("amberpi-persistence", "reset", "--yes")
    assert result.returncode == 0, result.stderr
    assert "recreated empty" in result.stdout
    assert subprocess.run(["e2fsck", "-n", str(p4)], capture_output=True).returncode == 0


def test_usage(device: Device) -> None:
    for args in [(), ("frobnicate",), ("backup",), ("restore",), ("restore", "a", "b"), ("reset", "--no"), ("status", "x")]:
        assert device.tool("amberpi-persistence", *args).returncode == 2, args
