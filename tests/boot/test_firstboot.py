"""End to end: a password-less image set up at first boot from Raspberry Pi Imager's files on p1.

The image is built without any password or key, as a release is, with Wi-Fi
settings pre-seeded at build time (`firstboot_dir`). The test then writes the
user-data Imager writes (hostname, a user with a password hash and an SSH key,
a time zone, a keyboard) onto p1 of a copy, as Imager does after flashing. One VM
run, two boots: the settings applied on the first, the Wi-Fi password removed from
p1, a login and a key-based SSH session as that user; the second boot keeps it all
and applies nothing again.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_PASSWORD, TEST_PASSWORD_HASH, BuiltImage, amberpi, require_root
from tests.device.test_firstboot import NETWORK_CONFIG, PSK
from tests.imagetools import partition_range
from tests.measurements import record
from tests.samples import imager_user_data
from tests.vm import VM

pytestmark = pytest.mark.boot

HOSTNAME = "amber-first"


@pytest.fixture(scope="module")
def passwordless_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    require_root()
    folder = tmp_path_factory.mktemp("firstboot")
    seeds = folder / "firstboot"
    seeds.mkdir()
    (seeds / "network-config").write_text(NETWORK_CONFIG)
    (seeds / "meta-data").write_text("instance-id: amberpi-firstboot-test\n")
    config = folder / "release.yaml"
    config.write_text(f"firstboot_dir: {seeds}\n")
    output = folder / "out"
    started = time.monotonic()
    amberpi("--board", "qemu", "--config", str(config), "--output", str(output), check=True)
    record(f"build of the password-less qemu image: {time.monotonic() - started:.0f}s")
    report = json.loads((output / "amberpi-qemu.report.json").read_text())
    return BuiltImage("qemu", output / "amberpi-qemu.img", report, time.monotonic() - started, output)


def p1_of(image: Path) -> str:
    offset, _ = partition_range(image, 1)
    return f"{image}@@{offset}"


def read_p1(image: Path, name: str) -> str:
    return subprocess.run(["mtype", "-i", p1_of(image), f"::{name}"], capture_output=True, text=True, check=True).stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ssh_as_alice(key: Path, port: int, command: str, wait: float = 180) -> str:
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
    argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "alice@127.0.0.1", command]
    deadline = time.monotonic() + wait
    while True:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()
        time.sleep(5)


def test_imager_settings_applied_at_first_boot(passwordless_image: BuiltImage, tmp_path: Path) -> None:
    image = passwordless_image.path
    assert read_p1(image, "network-config") == NETWORK_CONFIG, "the build put the pre-seeded file on p1"

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@test", "-f", str(key)], check=True)
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    user_data = tmp_path / "user-data"
    public_key = Path(f"{key}.pub").read_text().strip()
    user_data.write_text(imager_user_data(hostname=HOSTNAME, password_hash=TEST_PASSWORD_HASH, public_key=public_key))
    subprocess.run(["mcopy", "-o", "-i", p1_of(disk), str(user_data), "::user-data"], check=True)

    port = free_port()
    vm = VM(disk, console_log=tmp_path / "console.log", hostfwd=[f"tcp:127.0.0.1:{port}-:22"])
    try:
        vm.start()
        seconds = vm.wait_for_login()
        record(f"first boot with Imager's settings: login after {seconds:.0f}s")
        vm.login("alice", TEST_PASSWORD)
        assert vm.check("hostname") == HOSTNAME
        assert vm.check("timedatectl show -p Timezone --value") == "Europe/Berlin"
        assert "sudo" in vm.check("id -nG").split()
        assert vm.check("sudo -n id -u") == "0", "Imager's sudo rule"
        assert vm.check("sudo -n passwd -S root").split()[1] == "L", "root stays locked"
        report = vm.check("sudo -n cat /var/lib/amberpi/firstboot/report")
        assert "user alice: created" in report and "not applied: user-data key 'packages'" in report, report
        assert "removed the plain secrets from p1:/network-config" in report, report
        assert vm.check("sudo -n stat -c %a /etc/wpa_supplicant/wpa_supplicant-wlan0.conf") == "600"
        assert f"psk={PSK}" in vm.check("sudo -n cat /etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
        assert 'XKBLAYOUT="de"' in vm.check("cat /etc/default/keyboard")
        # p1 is read with mtools, never mounted.
        assert vm.check("findmnt -rn -o SOURCE | grep -c '^/dev/vda1$' || true") == "0"

        assert ssh_as_alice(key, port, "hostname") == HOSTNAME

        vm.send("sudo -n systemctl reboot")
        seconds = vm.wait_for_login()
        record(f"second boot: login after {seconds:.0f}s")
        vm.login("alice", TEST_PASSWORD)
        assert vm.check("hostname") == HOSTNAME
        assert vm.check("timedatectl show -p Timezone --value") == "Europe/Berlin"
        assert "applied already" in vm.check("sudo -n journalctl -b -u amberpi-firstboot --no-pager")
        assert ssh_as_alice(key, port, "id -un") == "alice"
        vm.send("sudo -n systemctl poweroff")
        vm.wait_exit()
    finally:
        vm.close()

    # The Wi-Fi password is gone from every byte of p1; the rest of p1 is readable.
    offset, length = partition_range(disk, 1)
    with disk.open("rb") as handle:
        handle.seek(offset)
        assert PSK.encode() not in handle.read(length)
    assert "password: ~ ####" in read_p1(disk, "network-config")
    assert read_p1(disk, "user-data") == user_data.read_text()
