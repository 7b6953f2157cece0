"""One module per build stage, in build order; the registry below is the order."""

from __future__ import annotations

from amberpi.stages.base import Stage
from amberpi.stages.bootfs import BootfsStage
from amberpi.stages.bootstrap import BootstrapStage
from amberpi.stages.customize import CustomizeStage
from amberpi.stages.disk import DiskStage
from amberpi.stages.firmware import FirmwareStage
from amberpi.stages.iso import IsoStage
from amberpi.stages.packages import PackagesStage
from amberpi.stages.persistence import PersistenceStage
from amberpi.stages.squash import SquashStage

STAGES: list[Stage] = [
    BootstrapStage(),
    PackagesStage(),
    CustomizeStage(),
    SquashStage(),
    FirmwareStage(),
    BootfsStage(),
    IsoStage(),
    PersistenceStage(),
    DiskStage(),
]
