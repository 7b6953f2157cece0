"""BuildContext: what every stage may read. Data only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amberpi.cache import Cache
from amberpi.config import REPO_ROOT, Board, Config

ARCH = "arm64"


@dataclass(frozen=True)
class Layout:
    """Where the project's own inputs live."""

    repo: Path = REPO_ROOT

    @property
    def hooks(self) -> Path:
        return self.repo / "hooks"

    @property
    def includes(self) -> Path:
        return self.repo / "includes"

    @property
    def package_lists(self) -> Path:
        return self.repo / "package-lists"

    @property
    def templates(self) -> Path:
        return self.repo / "amberpi" / "templates"

    @property
    def device(self) -> Path:
        return self.repo / "amberpi" / "device"


@dataclass(frozen=True)
class BuildContext:
    config: Config
    board: Board
    workspace: Path
    cache: Cache
    output_dir: Path
    layout: Layout = Layout()
    debug_shell: bool = False

    @property
    def apt_cache(self) -> Path:
        """Host-side .deb cache shared by every build of this suite."""
        return self.cache.root / "debs" / f"{self.config.suite}-{ARCH}"

    @property
    def image_id(self) -> str:
        return self.config.image_id

    @property
    def system_label(self) -> str:
        """ISO9660 volume id of p2 (d-characters only)."""
        return f"AMBERPI_SYS_{self.image_id.upper()}"

    @property
    def kernel_label(self) -> str:
        return f"AMBERPI_KRN_{self.image_id.upper()}"

    @property
    def persistence_label(self) -> str:
        """ext4 label of p4 (16 characters at most)."""
        return f"amberpi-{self.image_id}"
