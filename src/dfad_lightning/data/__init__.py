"""Data: the noise that trains, the real splits that evaluate (and train teachers)."""

from dfad_lightning.data.datamodule import (
    Conformed,
    DFADDataModule,
    Normalized,
    SupervisedDataModule,
    TransferDataModule,
)
from dfad_lightning.data.digits import Digits
from dfad_lightning.data.noise import NoiseStream, noise_seed

__all__ = [
    "Conformed",
    "DFADDataModule",
    "Digits",
    "NoiseStream",
    "Normalized",
    "SupervisedDataModule",
    "TransferDataModule",
    "noise_seed",
]
