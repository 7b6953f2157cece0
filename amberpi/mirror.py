"""Find the Debian mirror this host already uses, so no mirror host is hard-coded."""

from __future__ import annotations

import re
from pathlib import Path

APT_DIR = Path("/etc/apt")


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        parts = line.split()[1:]
        if parts and parts[0].startswith("["):
            while parts and not parts[0].endswith("]"):
                parts.pop(0)
            parts = parts[1:]
        if len(parts) >= 2:
            entries.append((parts[0], [parts[1]]))
    return entries


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "deb").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append((uri, fields.get("suites", "").split()))
    return entries


def read_apt_sources(apt_dir: Path = APT_DIR) -> list[tuple[str, list[str]]]:
    """(URI, suites) for every enabled deb source on the host."""
    entries: list[tuple[str, list[str]]] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            entries += _deb822_entries(text)
        elif path.suffix == ".list" or path.name == "sources.list":
            entries += _one_line_entries(text)
    return entries


def detect_host_mirrors(apt_dir: Path = APT_DIR) -> tuple[str, str]:
    """(archive mirror, security mirror) of the host; "" where none is configured.

    An empty archive mirror lets debootstrap use its own default.
    """
    archive = security = ""
    for uri, suites in read_apt_sources(apt_dir):
        uri = uri.rstrip("/")
        is_security = any(s.endswith("-security") or s.endswith("/updates") for s in suites)
        if is_security and uri.endswith("/debian-security") and not security:
            security = uri
        elif not is_security and uri.endswith("/debian") and not archive:
            archive = uri
    return archive, security


def debootstrap_default_mirror(script: Path = Path("/usr/sbin/debootstrap")) -> str:
    """The mirror debootstrap itself falls back to (its DEF_MIRROR), or ""."""
    try:
        text = script.read_text()
    except OSError:
        return ""
    match = re.search(r'^DEF_MIRROR="([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else ""
