"""LightningModules ("systems"): the training logic that runs the networks.

:class:`DFAD` distils any teacher whose outputs the student can match; with an accuracy metric it
is the classification system. Task-specific systems subclass it.
"""

from dfad_lightning.systems.baselines import DAFL, DirectKD
from dfad_lightning.systems.dfad import DFAD
from dfad_lightning.systems.segmentation import SegmentationDFAD
from dfad_lightning.systems.supervised import Supervised

__all__ = ["DAFL", "DFAD", "DirectKD", "SegmentationDFAD", "Supervised"]
