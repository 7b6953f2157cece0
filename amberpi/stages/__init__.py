"""One module per build stage; the registry below is the build order, top to bottom."""

from __future__ import annotations

from typing import Any

from amberpi.stages.base import Stage
from amberpi.stages.bootfiles import BootfilesStage
from amberpi.stages.bootfs import BootfsStage
from amberpi.stages.bootstrap import BootstrapStage
from amberpi.stages.customize import CustomizeStage
from amberpi.stages.disk import DiskStage
from amberpi.stages.epoch import EpochStage
from amberpi.stages.firmware import FirmwareStage
from amberpi.stages.iso import IsoStage
from amberpi.stages.packages import PackagesStage
from amberpi.stages.persistence import PersistenceStage
from amberpi.stages.release import ReleaseStage
from amberpi.stages.squash import SquashStage

STAGES: list[Stage[Any]] = [
    BootstrapStage(),
    PackagesStage(),
    EpochStage(),
    CustomizeStage(),
    SquashStage(),
    BootfilesStage(),
    FirmwareStage(),
    BootfsStage(),
    IsoStage(),
    PersistenceStage(),
    DiskStage(),
    ReleaseStage(),
]
