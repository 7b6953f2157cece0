"""Inputs objects of the real stages, filled with small sample values for unit tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from amberpi.config import ConfigTxtSection, Resilience, load_board
from amberpi.identity import ImageIdentity
from amberpi.stages.bootfs import BootfsInputs, BootModes, render_grub_cfg
from amberpi.stages.customize import SystemProfile
from amberpi.stages.iso import DeviceProfile
from amberpi.stages.iso import device_profile as make_device_profile

IMAGE_ID = "1a2b3c4d"
SQUASHFS_BYTES = 250 << 20
DEFAULTS = Resilience()
# The device's reader of first-boot files, which the bootfs stage checks them with.
FIRSTBOOT_READER = Path(__file__).resolve().parent.parent / "amberpi/device/rootfs/usr/lib/amberpi/yaml-flat.awk"


def boot_modes(**changes: Any) -> BootModes:
    modes = BootModes(
        default=DEFAULTS.mode,
        panic_reboot_seconds=DEFAULTS.panic_reboot_seconds,
        jumper="",
        jumper_active=DEFAULTS.jumper_active,
        maintenance_mode=DEFAULTS.maintenance_mode,
        toram_margin_mib=DEFAULTS.toram_margin_mib,
    )
    return dataclasses.replace(modes, **changes)


def bootfs_inputs(*, raspi: bool = False, modes: BootModes | None = None, **changes: Any) -> BootfsInputs:
    inputs = BootfsInputs(
        identity=ImageIdentity(IMAGE_ID),
        board="pi3" if raspi else "qemu",
        firmware="raspi" if raspi else "none",
        serial_console="ttyS1,115200" if raspi else "ttyAMA0,115200",
        uboot="rpi_arm64/u-boot.bin" if raspi else "",
        device_trees=("broadcom/bcm2837-rpi-3-b.dtb",) if raspi else (),
        config_txt=(ConfigTxtSection(filter="pi3", device_tree="bcm2837-rpi-3-b.dtb"),) if raspi else (),
        extra_cmdline="",
        kernel_tries=2,
        timeout=3,
        size_mib=40,
        modes=modes or boot_modes(),
        firstboot=(),
        firstboot_reader=FIRSTBOOT_READER,
        firstboot_dir="",
    )
    return dataclasses.replace(inputs, **changes)


def grub_cfg(factory_version: str = "6.12.1", **changes: Any) -> str:
    return render_grub_cfg(bootfs_inputs(**changes), factory_version, SQUASHFS_BYTES)


def system_profile() -> SystemProfile:
    return SystemProfile(
        ("/var/lib/kiosk",),
        tuple(DEFAULTS.ram_paths),
        DEFAULTS.journal_max_mib,
        DEFAULTS.zram_percent,
        DEFAULTS.zram_algorithm,
        DEFAULTS.watchdog_seconds,
    )


def device_profile(board: str = "pi3") -> DeviceProfile:
    return make_device_profile(DEFAULTS, load_board(board))


def imager_user_data(*, hostname: str, password_hash: str, public_key: str, runcmd: str = "") -> str:
    """The user-data Raspberry Pi Imager 2.x writes (rpi-imager src/customization_generator.cpp)
    for a hostname, a user with a password and an SSH key, a time zone and a keyboard;
    `runcmd` is appended as it is (Imager writes one for Wi-Fi's rfkill, for instance)."""
    return f"""#cloud-config
hostname: {hostname}
manage_etc_hosts: true
packages:
- avahi-daemon

apt:
  conf: |
    Acquire {{
      Check-Date "false";
    }};

timezone: Europe/Berlin
keyboard:
  model: pc105
  layout: "de"
enable_ssh: true
users:
- name: alice
  groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo
  shell: /bin/bash
  lock_passwd: false
  passwd: {password_hash}
  ssh_authorized_keys:
    - {public_key}
  sudo: ALL=(ALL) NOPASSWD:ALL

ssh_pwauth: true
{runcmd}"""


def imager_network_config(ssid_yaml: str, psk: str) -> str:
    """The network-config Imager writes for one Wi-Fi network (`ssid_yaml`: the quoted key as written)."""
    return f"""network:
  version: 2
  wifis:
    wlan0:
      dhcp4: true
      regulatory-domain: "DE"
      access-points:
        {ssid_yaml}:
          password: "{psk}"
      optional: true
"""
