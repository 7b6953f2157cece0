"""The package manifest of a rootfs: every package with its version, architecture, source and licences.

dpkg's database names each package's source package and version; the licences come
from the package's /usr/share/doc/<package>/copyright when it is in Debian's
machine-readable format (DEP-5, copyright-format 1.0), and are null otherwise: a
free-form copyright file names its licences in prose that no program reads reliably.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from amberpi.run import run
from amberpi.trees import resolve_inside

# One line per package; dpkg fills in the source fields from the binary's when they are absent.
QUERY_FIELDS = ("Package", "Version", "Architecture", "source:Package", "source:Version")
QUERY_FORMAT = "\t".join(f"${{{name}}}" for name in QUERY_FIELDS) + "\\n"
# The Format: field of a machine-readable copyright file (the 1.0 URL, and the drafts' dep5 URLs).
DEP5_FORMAT = re.compile(r"copyright-format/1\.0|/dep5", re.IGNORECASE)


def query_packages(tree: Path) -> list[dict[str, Any]]:
    """Every package in the rootfs `tree`'s dpkg database, sorted by name and architecture."""
    output = run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", QUERY_FORMAT], capture=True, label="dpkg-query")
    packages = []
    for line in output.splitlines():
        if not line.strip():
            continue
        name, version, architecture, source, source_version = (line.split("\t") + [""] * 5)[:5]
        packages.append(
            {
                "name": name,
                "version": version,
                "architecture": architecture,
                "source": source or name,
                "source_version": source_version or version,
                "licenses": package_licences(tree, name),
            }
        )
    return sorted(packages, key=lambda p: (p["name"], p["architecture"], p["version"]))


def package_lines(packages: list[dict[str, Any]]) -> list[str]:
    """The manifest as `name version` lines (the .packages file)."""
    return sorted(f"{p['name']} {p['version']}" for p in packages)


def package_licences(tree: Path, package: str) -> list[str] | None:
    copyright_file = resolve_inside(tree, f"usr/share/doc/{package}/copyright")
    if not copyright_file.is_file():
        return None
    return copyright_licences(copyright_file.read_bytes().decode("utf-8", errors="replace"))


def deb822_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a deb822 text: field name (lowercase) → value, continuation lines joined with newlines."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                current[last] += "\n" + line.strip()
            continue
        if line.startswith("#"):
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        last = name.strip().lower()
        current[last] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def copyright_licences(text: str) -> list[str] | None:
    """The licence names of a machine-readable copyright file (each Files paragraph's and the
    header's License field, first line), sorted and unique; None when the file is not DEP-5."""
    paragraphs = deb822_paragraphs(text)
    if not paragraphs or not DEP5_FORMAT.search(paragraphs[0].get("format", "")):
        return None
    named = [paragraphs[0], *(p for p in paragraphs[1:] if "files" in p)]
    first_lines = (p.get("license", "").split("\n", 1)[0].strip() for p in named)
    return sorted({line for line in first_lines if line})
