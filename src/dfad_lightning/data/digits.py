"""The embedded default: scikit-learn's handwritten digits, upsampled to 32x32.

scikit-learn ships the 1,797 8x8 digits of the UCI "optdigits" test set inside its wheel, so
this dataset needs no download and no data folder. It stands in for MNIST wherever a run must
work anywhere (the default run, the tests).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


class Digits(Dataset[tuple[Tensor, int]]):
    """scikit-learn's digits as ``(1, size, size)`` images in ``[0, 1]`` with labels 0..9.

    The split is stratified and seeded, so train and test are disjoint and the same on every
    machine: with the defaults, 1,437 training and 360 test images.

    Args:
        split: ``"train"`` (for training a teacher) or ``"test"`` (held out, for evaluation).
        image_size: Output side; the 8x8 originals are upsampled bilinearly.
        test_fraction: Fraction of the 1,797 images held out for testing.
        split_seed: Seed of the stratified split.
    """

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        image_size: int = 32,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        pixels, labels = load_digits(return_X_y=True)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=split_seed
        )
        idx = train_idx if split == "train" else test_idx
        images = torch.from_numpy(pixels[idx]).float().view(-1, 1, 8, 8) / 16.0
        self.images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.targets = torch.from_numpy(labels[idx]).long()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])
