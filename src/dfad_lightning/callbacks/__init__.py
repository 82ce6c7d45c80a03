"""Lightning callbacks of dfad-lightning."""

from dfad_lightning.callbacks.checkpoint import LastCheckpoint
from dfad_lightning.callbacks.eta import ExpectedTime
from dfad_lightning.callbacks.masks import MaskGrid
from dfad_lightning.callbacks.probe import DataFreeProbe
from dfad_lightning.callbacks.samples import SampleGrid
from dfad_lightning.callbacks.summary import NetworkSummary

__all__ = ["DataFreeProbe", "ExpectedTime", "LastCheckpoint", "MaskGrid", "NetworkSummary", "SampleGrid"]
