"""Lightning callbacks of dfad-lightning."""

from dfad_lightning.callbacks.checkpoint import LastCheckpoint
from dfad_lightning.callbacks.samples import SampleGrid

__all__ = ["LastCheckpoint", "SampleGrid"]
