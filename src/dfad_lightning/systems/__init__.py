"""LightningModules ("systems"): the training logic that runs the networks.

:class:`DFAD` distils any teacher whose outputs the student can match; with an accuracy metric it
is the classification system, and its parts (:mod:`dfad_lightning.parts`) make the paper's
baselines and the field's other methods. Task-specific systems subclass it.
"""

from dfad_lightning.systems.dfad import DFAD
from dfad_lightning.systems.segmentation import SegmentationDFAD
from dfad_lightning.systems.supervised import Supervised

__all__ = ["DFAD", "SegmentationDFAD", "Supervised"]
