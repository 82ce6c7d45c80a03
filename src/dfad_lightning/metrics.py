"""Evaluation metrics that torchmetrics does not provide in the form the paper reports."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from dfad_lightning.errors import ConfigError


def check_class_labels(outputs: Tensor, target: Tensor) -> None:
    """Fail with a message naming ``dataset.num_classes`` if a class label has no output.

    Without this a label beyond the network's outputs stops teacher training with an
    ``IndexError`` deep in the loss, and torchmetrics' accuracy counts it as a miss without a word.
    Only one label per sample (classification) is checked: segmentation datasets map every mask
    value beyond the classes to the void label themselves.

    Args:
        outputs: Logits ``(B, C)``; ``C`` is ``dataset.num_classes``.
        target: Class indices ``(B,)``.

    Raises:
        ConfigError: A label is negative or at least ``C``.
    """
    if outputs.dim() != 2 or target.dim() != 1:
        return
    classes = outputs.shape[1]
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise ConfigError(
            "dataset.num_classes",
            f"is {classes}, but the data has the class label {bad} (labels must be 0 to {classes - 1}); "
            f"set it to the number of classes of the data (the teacher must have as many outputs)",
        )


class MeanIoU(MulticlassConfusionMatrix):
    """Mean intersection over union of predicted masks, over the classes that occur.

    Accumulates a confusion matrix (torchmetrics, synchronised across processes) of predictions
    ``(B, C, H, W)`` (logits) or ``(B, H, W)`` (indices) against targets ``(B, H, W)``; pixels whose
    target is ``ignore_index`` (void) are not counted. A class whose union is empty (absent from
    both the targets and the predictions) has no IoU and is left out of the mean, as in the
    authors' evaluation; :meth:`per_class` gives it as NaN.

    Args:
        num_classes: Classes, void excluded.
        ignore_index: The void label.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, **kwargs)

    def per_class(self) -> Tensor:
        """IoU of every class ``(num_classes,)``; NaN where the class never occurs."""
        confmat = super().compute().double()
        intersection = confmat.diagonal()
        union = confmat.sum(0) + confmat.sum(1) - intersection
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.nan).float()

    def compute(self) -> Tensor:
        """The mean IoU over the classes that occur."""
        return self.per_class().nanmean()
