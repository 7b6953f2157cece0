"""ISO9660 (Rock Ridge) images from a folder, with pycdlib.

ISO9660 names are the short uppercase form; Rock Ridge carries the real names,
which is what Linux, GRUB and xorriso show.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import struct_time
from types import ModuleType
from typing import Any

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.pycdlib

ROCK_RIDGE = "1.09"


def _short_name(name: str, taken: set[str], is_dir: bool) -> str:
    """A unique ISO9660 level-3 name (d-characters, 8.3 for files)."""
    stem, dot, ext = name.rpartition(".") if "." in name and not is_dir else (name, "", "")
    clean_stem = re.sub(r"[^A-Z0-9_]", "_", stem.upper())[:8] or "_"
    clean_ext = re.sub(r"[^A-Z0-9_]", "_", ext.upper())[:3]
    for counter in range(10000):
        candidate_stem = clean_stem if counter == 0 else f"{clean_stem[: 8 - len(str(counter)) - 1]}_{counter}"
        candidate = candidate_stem + (f".{clean_ext}" if clean_ext else "")
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    raise ValueError(f"too many names like {name}")


class _FixedClock:
    """The `time` module as pycdlib sees it: now is the build's epoch, local time is UTC."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def time(self) -> float:
        return float(self.epoch)

    def localtime(self, seconds: float | None = None) -> struct_time:
        return time.gmtime(self.epoch if seconds is None else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


# pycdlib stamps every record with the clock and the local zone; these modules read them.
_PYCDLIB_CLOCK_USERS: tuple[ModuleType, ...] = (pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates)


@contextmanager
def _pycdlib_clock(epoch: int) -> Iterator[None]:
    saved = [module.time for module in _PYCDLIB_CLOCK_USERS]
    for module in _PYCDLIB_CLOCK_USERS:
        # Assigning to a module's attribute is opaque to mypy (ModuleType has no `time`): justified.
        module.time = _FixedClock(epoch)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(_PYCDLIB_CLOCK_USERS, saved, strict=True):
            module.time = original  # type: ignore[attr-defined]  # as above


def iso_identity(epoch: int) -> str:
    """The identity GRUB shows for an image make_iso wrote (`probe --fs-uuid`): its volume date.

    The device's amberpi-kernel gives each write of the kernel partition a new one the same way
    (xorriso -volume_date uuid), and grubenv names the one the partition should hold.
    """
    return time.strftime("%Y-%m-%d-%H-%M-%S-00", time.gmtime(epoch))


def make_iso(source: Path, target: Path, *, volume_id: str, epoch: int) -> None:
    """Write `source`'s tree as a Rock Ridge ISO9660 image at `target`, every date set to epoch.

    Same tree, same epoch: the same bytes (reproducible builds).
    """
    with _pycdlib_clock(epoch):
        iso = pycdlib.pycdlib.PyCdlib()
        iso.new(interchange_level=3, rock_ridge=ROCK_RIDGE, vol_ident=volume_id, sys_ident="LINUX", app_ident_str="AMBERPI")
        _add_dir(iso, source, "/", "/")
        iso.write(str(target))
        iso.close()


def _add_dir(iso: pycdlib.pycdlib.PyCdlib, folder: Path, iso_dir: str, rr_dir: str) -> None:
    taken: set[str] = set()
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        short = _short_name(item.name, taken, item.is_dir())
        iso_path = f"{iso_dir.rstrip('/')}/{short}"
        if item.is_symlink():
            continue
        if item.is_dir():
            iso.add_directory(iso_path, rr_name=item.name)
            _add_dir(iso, item, iso_path, f"{rr_dir.rstrip('/')}/{item.name}")
        else:
            iso.add_file(str(item), iso_path=f"{iso_path};1", rr_name=item.name)


def list_iso(path: Path) -> dict[str, int]:
    """Rock Ridge path → size for every file in an ISO (used to read images back)."""
    iso = pycdlib.pycdlib.PyCdlib()
    iso.open(str(path))
    files: dict[str, int] = {}
    try:
        for dirpath, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                full = f"{dirpath.rstrip('/')}/{name}"
                record = iso.get_record(rr_path=full)
                files[full] = record.get_data_length()
    finally:
        iso.close()
    return files


def read_iso_file(path: Path, rr_path: str) -> bytes:
    import io

    iso = pycdlib.pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        buffer = io.BytesIO()
        iso.get_file_from_iso_fp(buffer, rr_path=rr_path)
        return buffer.getvalue()
    finally:
        iso.close()


def volume_id(path: Path) -> str:
    iso = pycdlib.pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        return str(iso.pvd.volume_identifier.decode().strip())
    finally:
        iso.close()
