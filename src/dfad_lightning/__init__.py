"""dfad-lightning: Data-Free Adversarial Distillation (Fang et al. 2019) with PyTorch Lightning and Hydra."""

from dfad_lightning.data import DFADDataModule, NoiseStream
from dfad_lightning.systems import DFAD

__version__ = "0.1.0"

__all__ = ["DFAD", "DFADDataModule", "NoiseStream", "__version__"]
