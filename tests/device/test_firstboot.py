"""amberpi-firstboot: Raspberry Pi Imager's cloud-init files on a file-backed p1, applied into a folder.

p1 is a real FAT (mkfs.vfat, files added with mcopy, read back with mtools); the
settings go into a small root tree through the real useradd/chpasswd (-R). The
plain secrets are then removed from p1 in place, and the FAT must stay intact.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_PASSWORD_HASH
from tests.device.devicekit import SHELLS, Device, make_device, require
from tests.samples import imager_network_config, imager_user_data

PSK = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirstBootTestKeyOnly alice@laptop"

USER_DATA = imager_user_data(
    hostname="amber-test", password_hash=TEST_PASSWORD_HASH, public_key=KEY, runcmd="\nruncmd:\n  - [ rfkill, unblock, wifi ]\n"
)
NETWORK_CONFIG = imager_network_config('"Home net/5G"', PSK)
META_DATA = "instance-id: rpi-imager-1732000000000\n"


def put_on_p1(device: Device, files: dict[str, str]) -> None:
    for name, text in files.items():
        source = device.tmp / f"src-{name}"
        source.write_text(text)
        subprocess.run(["mcopy", "-o", "-i", str(device.parts / "p1"), str(source), f"::{name}"], check=True, capture_output=True)
        source.unlink()


def read_p1(device: Device, name: str) -> str:
    return subprocess.run(["mtype", "-i", str(device.parts / "p1"), f"::{name}"], check=True, capture_output=True, text=True).stdout


def make_root(tmp: Path) -> Path:
    """The files the tool writes to, as a minimal Debian root has them."""
    root = tmp / "root"
    for folder in ("etc/default", "etc/sudoers.d", "etc/ssh", "home", "root", "bin", "usr/lib/systemd/system", "var/lib"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    groups = {"root": 0, "adm": 4, "dialout": 20, "sudo": 27, "audio": 29, "video": 44, "plugdev": 46, "users": 100, "netdev": 101}
    (root / "etc/group").write_text("".join(f"{name}:x:{gid}:\n" for name, gid in groups.items()))
    (root / "etc/shadow").write_text("root:*:20000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("".join(f"{name}:*::\n" for name in groups))
    (root / "etc/hostname").write_text("amberpi\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tamberpi\n")
    (root / "bin/bash").write_text("")
    (root / "bin/bash").chmod(0o755)
    (root / "usr/lib/systemd/system/wpa_supplicant@.service").write_text("")
    zoneinfo = root / "usr/share/zoneinfo/Europe"
    zoneinfo.mkdir(parents=True)
    shutil.copy2("/usr/share/zoneinfo/Europe/Berlin", zoneinfo / "Berlin")
    return root


RECORDING_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "${AMBERPI_FAKE_UNITS:?}/.calls"
"""

# / as live-boot mounts it with persistence: its upper folder on p4.
PERSISTENT_ROOT = (
    "overlay / overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs,"
    "upperdir=/run/live/persistence/vda4/rw,workdir=/run/live/persistence/vda4/work 0 0"
)


def firstboot_device(tmp_path: Path, shell: list[str], files: dict[str, str], *, persistent: bool = True) -> tuple[Device, Path]:
    require("mcopy", "mtype", "useradd", "chpasswd", "fsck.fat")
    device = make_device(tmp_path, shell)
    put_on_p1(device, files)
    root = make_root(tmp_path)
    (device.fakebin / "systemctl").write_text(RECORDING_SYSTEMCTL)
    device.env["AMBERPI_TARGET_ROOT"] = str(root)
    if persistent:
        device.set_mounts("sysfs /sys sysfs rw 0 0", PERSISTENT_ROOT)
    return device, root


def systemctl_calls(device: Device) -> list[str]:
    calls = Path(device.env["AMBERPI_FAKE_UNITS"]) / ".calls"
    return calls.read_text().splitlines() if calls.exists() else []


def fat_is_clean(device: Device) -> None:
    result = subprocess.run(["fsck.fat", "-n", str(device.parts / "p1")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_imager_files_are_applied_and_the_wifi_password_leaves_p1(tmp_path: Path, shell: list[str]) -> None:
    device, root = firstboot_device(tmp_path, shell, {"user-data": USER_DATA, "network-config": NETWORK_CONFIG, "meta-data": META_DATA})
    grubenv_before = device.grubenv()
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 0, result.stderr

    assert (root / "etc/hostname").read_text() == "amber-test\n"
    assert "127.0.1.1\tamber-test\n" in (root / "etc/hosts").read_text()
    assert (root / "etc/localtime").readlink() == Path("../usr/share/zoneinfo/Europe/Berlin")
    assert (root / "etc/timezone").read_text() == "Europe/Berlin\n"
    assert 'XKBLAYOUT="de"' in (root / "etc/default/keyboard").read_text()
    passwd = (root / "etc/passwd").read_text()
    assert "alice:x:1000:1000::/home/alice:/bin/bash" in passwd
    assert f"alice:{TEST_PASSWORD_HASH}:" in (root / "etc/shadow").read_text(), "the hash is set and not locked"
    members = {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines() if "alice" in line.split(":")[3]}
    assert members == {"users", "adm", "dialout", "audio", "netdev", "video", "plugdev", "sudo"}
    keys = root / "home/alice/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n"
    assert keys.stat().st_mode & 0o777 == 0o600 and keys.stat().st_uid == 1000
    assert (root / "etc/sudoers.d/90-amberpi-firstboot-alice").read_text() == "alice ALL=(ALL) NOPASSWD:ALL\n"
    assert "PasswordAuthentication yes" in (root / "etc/ssh/sshd_config.d/50-amberpi-firstboot.conf").read_text()

    wpa = root / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
    assert wpa.stat().st_mode & 0o777 == 0o600
    text = wpa.read_text()
    assert "country=DE" in text and f"psk={PSK}" in text
    assert f"ssid={b'Home net/5G'.hex()}" in text
    assert "DHCP=ipv4" in (root / "etc/systemd/network/25-amberpi-wifi-wlan0.network").read_text()
    calls = systemctl_calls(device)
    assert f"--root={root} enable ssh.service" in calls
    assert f"--root={root} add-wants sys-subsystem-net-devices-wlan0.device wpa_supplicant@wlan0.service" in calls, calls

    report = (root / "var/lib/amberpi/firstboot/report").read_text()
    assert "not applied: user-data key 'packages'" in report and "not applied: user-data key 'apt'" in report
    assert "groups not on this image, skipped: cdrom games input gpio spi i2c render" in report

    # The PSK is gone from every byte of p1; the rest of the FAT is as it was.
    assert PSK.encode() not in device.p1_bytes()
    assert "password: ~ ####" in read_p1(device, "network-config")
    assert read_p1(device, "user-data") == USER_DATA
    assert device.grubenv() == grubenv_before
    fat_is_clean(device)
    assert len((root / "var/lib/amberpi/firstboot/applied").read_text().split()) == 2

    # Next boot: nothing to do, nothing touched.
    before = (root / "etc/shadow").stat().st_mtime_ns
    again = device.tool("amberpi-firstboot")
    assert again.returncode == 0 and "applied already" in again.stdout
    assert (root / "etc/shadow").stat().st_mtime_ns == before


def test_files_edited_later_are_applied_again_and_the_wifi_kept(tmp_path: Path) -> None:
    device, root = firstboot_device(tmp_path, SHELLS[0], {"user-data": USER_DATA, "network-config": NETWORK_CONFIG})
    assert device.tool("amberpi-firstboot").returncode == 0
    wpa = (root / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf").read_text()
    put_on_p1(device, {"user-data": USER_DATA.replace("amber-test", "amber-two")})
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 0, result.stderr
    assert (root / "etc/hostname").read_text() == "amber-two\n"
    assert "user alice: updated" in result.stdout
    assert "passwords were removed from p1" in result.stdout
    assert (root / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf").read_text() == wpa
    assert [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()] == ["root", "alice"]


def test_a_plain_password_is_set_and_removed_from_p1(tmp_path: Path) -> None:
    user_data = "#cloud-config\nusers:\n  - name: bob\n    plain_text_passwd: 'correct horse'\n    lock_passwd: false\n"
    device, root = firstboot_device(tmp_path, SHELLS[0], {"user-data": user_data})
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 0, result.stderr
    shadow = (root / "etc/shadow").read_text()
    bob = next(line for line in shadow.splitlines() if line.startswith("bob:"))
    assert bob.split(":")[1].startswith("$"), bob
    assert b"correct horse" not in device.p1_bytes()
    assert "plain_text_passwd: ~ ####" in read_p1(device, "user-data")
    fat_is_clean(device)


def test_without_persistence_the_secrets_stay_for_the_next_boot(tmp_path: Path) -> None:
    device, root = firstboot_device(tmp_path, SHELLS[0], {"network-config": NETWORK_CONFIG}, persistent=False)
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 0, result.stderr
    assert "plain secrets left on p1" in result.stdout
    assert PSK.encode() in device.p1_bytes()
    assert (root / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf").exists()


def test_no_files_no_change(tmp_path: Path) -> None:
    device, root = firstboot_device(tmp_path, SHELLS[0], {})
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 0 and "no first-boot files" in result.stdout
    assert not (root / "var/lib/amberpi/firstboot").exists()


def test_a_file_outside_the_subset_applies_nothing(tmp_path: Path) -> None:
    broken = "#cloud-config\nhostname: x\nusers:\n\t- name: tabbed\n"
    device, root = firstboot_device(tmp_path, SHELLS[0], {"user-data": broken})
    passwd = (root / "etc/passwd").read_text()
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 1
    assert "p1:/user-data:4:" in result.stderr and "nothing was applied" in result.stderr
    assert (root / "etc/passwd").read_text() == passwd
    assert (root / "etc/hostname").read_text() == "amberpi\n"
    assert not (root / "var/lib/amberpi/firstboot/applied").exists()


@pytest.mark.parametrize(
    ("user_data", "warning"),
    [
        ("hostname: -bad-\n", "not a valid host name"),
        ('hostname: "ok\\nbad"\n', "not a valid host name"),
        ("timezone: Mars/Olympus\n", "time zone 'Mars/Olympus' is unknown"),
        ("timezone: ../../etc/passwd\n", "is not a zone name"),
        ("users:\n- name: Bad User\n", "is not a valid user name"),
        ("users:\n- name: carol\n  passwd: plain\n", "passwd is not a crypt hash"),
        ("keyboard:\n  layout: 'us; rm -rf /'\n", "has characters no XKB name has"),
    ],
)
def test_bad_values_are_reported_and_skipped(tmp_path: Path, user_data: str, warning: str) -> None:
    device, root = firstboot_device(tmp_path, SHELLS[0], {"user-data": "#cloud-config\n" + user_data})
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 0, result.stderr
    assert warning in result.stderr
    assert (root / "etc/hostname").read_text() == "amberpi\n"
    assert not (root / "etc/localtime").exists()


@pytest.mark.parametrize(
    ("password", "country", "warning"),
    [
        ("short", "DE", "neither 8-63 printable ASCII characters nor 64 hex digits"),
        ("line one\\nnetwork={\\n}", "DE", "neither 8-63 printable ASCII characters nor 64 hex digits"),
        ("good passphrase", "DE\\nupdate_config=1", "is not a two-letter country code"),
    ],
)
def test_wifi_values_that_would_break_wpa_supplicants_file_are_refused(tmp_path: Path, password: str, country: str, warning: str) -> None:
    network_config = NETWORK_CONFIG.replace(PSK, password).replace('"DE"', f'"{country}"')
    device, root = firstboot_device(tmp_path, SHELLS[0], {"network-config": network_config})
    result = device.tool("amberpi-firstboot")
    assert result.returncode == 0, result.stderr
    assert warning in result.stderr
    wpa = root / "etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
    if wpa.exists():
        assert "update_config" not in wpa.read_text() and wpa.read_text().count("network={") == 1
