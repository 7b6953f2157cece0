"""firmware: the Raspberry Pi boot firmware and U-Boot, fetched as arm64 .debs by host apt.

Fetched with a private apt state folder, so the host's apt configuration and
the image's rootfs are both left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amberpi.archive import Suite, archive_state
from amberpi.context import ARCH, BuildContext
from amberpi.render import write_rendered
from amberpi.run import run
from amberpi.stages.base import Artefact, Stage
from amberpi.stages.bootstrap import KEYRING

RASPI_PACKAGES = ("raspi-firmware", "u-boot-rpi")
FIRMWARE_DIR = "usr/lib/raspi-firmware"
UBOOT_DIR = "usr/lib/u-boot"
# The components firmware.sources.list.j2 names.
FIRMWARE_COMPONENTS = ("main", "non-free-firmware")


def private_apt_options(root: Path) -> list[str]:
    settings = {
        "Dir::Etc::SourceList": root / "sources.list",
        "Dir::Etc::SourceParts": root / "sources.list.d",
        "Dir::Etc::Preferences": root / "preferences",
        "Dir::Etc::PreferencesParts": root / "preferences.d",
        "Dir::State": root / "state",
        "Dir::State::status": root / "state" / "status",
        "Dir::Cache": root / "cache",
        "APT::Architecture": ARCH,
        "APT::Architectures::": ARCH,
        "Debug::NoLocking": "1",
        "Acquire::Retries": "3",
    }
    options: list[str] = []
    for key, value in settings.items():
        options += ["-o", f"{key}={value}"]
    return options


@dataclass(frozen=True)
class FirmwareInputs:
    firmware: str
    suite: str
    mirror: str
    packages: tuple[str, ...]
    # The suite's Packages indexes as the mirror serves them now (amberpi/archive.py): a new firmware refetches.
    archive: tuple[str, ...] = ()


class FirmwareStage(Stage[FirmwareInputs]):
    name = "firmware"
    cached = True
    tools = ("apt-get", "dpkg-deb", KEYRING)

    def inputs(self, build: BuildContext) -> FirmwareInputs:
        if build.board.firmware == "none":
            return FirmwareInputs("none", "", "", ())
        c = build.config
        archive = archive_state(build.cache, self.name, (Suite(c.mirror, c.suite, FIRMWARE_COMPONENTS),), ARCH)
        return FirmwareInputs(build.board.firmware, c.suite, c.mirror, RASPI_PACKAGES, archive)

    def title(self, inputs: FirmwareInputs) -> str:
        return "Fetching Raspberry Pi firmware and U-Boot" if inputs.packages else "Fetching no firmware (UEFI board)"

    def run(self, inputs: FirmwareInputs, upstream: Mapping[str, Artefact], out: Path) -> Artefact:
        files = out / "files"
        files.mkdir(parents=True)
        if not inputs.packages:
            return Artefact(out, {"packages": []})
        apt_root = out / "apt"
        for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial", "debs"):
            (apt_root / sub).mkdir(parents=True, exist_ok=True)
        (apt_root / "state" / "status").write_text("")
        write_rendered(
            apt_root / "sources.list",
            "firmware.sources.list.j2",
            arch=ARCH,
            keyring=KEYRING,
            mirror=inputs.mirror,
            suite=inputs.suite,
        )
        (apt_root / "apt.conf.d").mkdir()
        write_rendered(apt_root / "apt.conf", "firmware.apt.conf.j2", main=apt_root / "apt.conf", parts=apt_root / "apt.conf.d")
        options = private_apt_options(apt_root)
        env = {"APT_CONFIG": str(apt_root / "apt.conf")}
        run(["apt-get", *options, "update"], env=env, label="apt", where="stage firmware", hint="check that --mirror is reachable")
        run(["apt-get", *options, "download", *inputs.packages], env=env, cwd=apt_root / "debs", label="apt")
        debs = sorted((apt_root / "debs").glob("*.deb"))
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(files)], label="dpkg-deb")
        return Artefact(out, {"packages": [d.name for d in debs]})
