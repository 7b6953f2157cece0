"""Raspberry Pi Imager's "custom repository" list: the os_list entries of released images.

The format is rpi-imager's doc/json-schema/os-list-schema.json (tests/data/ holds a copy,
and the unit tests validate what is written here against it). Imager offers its
OS-customisation dialog for an entry whose `init_format` names a format it writes; see
INIT_FORMAT. A board is listed under the device tags of its board file (`imager_devices`);
a board without any (qemu) is not listed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from amberpi.errors import UsageError

# rpi-imager doc/os_customisation_formats.md: "cloudinit" makes Imager write cloud-init
# NoCloud files (user-data, network-config, meta-data) on the FAT partition, in Imager 1.x
# and 2.x alike. "cloudinit-rpi" (Raspberry Pi OS trixie) writes the same files plus
# settings for Raspberry Pi OS's own cc_raspberry_pi module, which Debian's cloud-init does
# not carry; and Imager 1.x, which does not know that value, falls back to its systemd
# firstrun.sh, which this image (booted through U-Boot and GRUB, no cmdline.txt) never runs.
INIT_FORMAT = "cloudinit"
# One of the icons Imager ships (src/icons/): "icons/..." is its documented form for them.
ICON = "icons/cat_other_general_purpose_operating_systems.png"
# Imager's name for 64-bit Arm (its schema: armel, armhf, armv8).
ARCHITECTURE = "armv8"
# A board's list is <name>.rpi-imager.json; the release verb combines them into this one.
SUFFIX = ".rpi-imager.json"
COMBINED = "amberpi" + SUFFIX


def download_url(base: str, file_name: str) -> str:
    """Where `file_name` will be downloaded from: under `base` (release_url), or the bare name."""
    return f"{base.rstrip('/')}/{file_name}" if base else file_name


def release_date(epoch: int) -> str:
    """The build's timestamp as the day Imager shows (UTC): the same inputs, the same list."""
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


def os_entry(
    *,
    name: str,
    description: str,
    devices: list[str],
    url: str,
    extract_size: int,
    extract_sha256: str,
    download_size: int,
    download_sha256: str,
    date: str,
    bmap_url: str | None = None,
) -> dict[str, Any]:
    """One image in Imager's list (an `os_list` item)."""
    entry: dict[str, Any] = {
        "name": name,
        "description": description,
        "icon": ICON,
        "url": url,
        "extract_size": extract_size,
        "extract_sha256": extract_sha256,
        "image_download_size": download_size,
        "image_download_sha256": download_sha256,
        "release_date": date,
        "init_format": INIT_FORMAT,
        "devices": list(devices),
        "architecture": ARCHITECTURE,
    }
    if bmap_url is not None:
        entry["bmap_url"] = bmap_url
    return entry


def os_list_text(entries: list[dict[str, Any]]) -> str:
    """The list document, entries in name order: the same entries, the same bytes."""
    return json.dumps({"os_list": sorted(entries, key=lambda entry: str(entry["name"]))}, indent=2) + "\n"


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The os_list entries of a list AmberPi wrote."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the Imager list {path}: {exc}", hint="build the board again to rewrite it") from None
    entries = data.get("os_list") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise UsageError(f"{path} is not an Imager list (no os_list of entries)", hint="build the board again to rewrite it")
    return entries


def combine(folder: Path, sources: list[Path]) -> Path:
    """One list of every entry in `sources` (each board's list), written as `folder`/COMBINED."""
    entries = [entry for source in sources for entry in read_entries(source)]
    urls = [entry.get("url") for entry in entries]
    duplicates = sorted({str(url) for url in urls if urls.count(url) > 1})
    if duplicates:
        raise UsageError(f"the Imager lists name the same download twice: {', '.join(duplicates)}", where=str(folder))
    target = folder / COMBINED
    partial = folder / f".{COMBINED}.partial"
    partial.write_text(os_list_text(entries))
    partial.replace(target)
    return target


def board_lists(folder: Path) -> list[Path]:
    """Every board's list in `folder` (not the combined one)."""
    return sorted(path for path in folder.glob(f"*{SUFFIX}") if path.name != COMBINED)
