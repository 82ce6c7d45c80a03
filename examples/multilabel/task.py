"""A task the paper does not cover: multi-label classification, distilled data-free.

Each image is a 32x32 canvas of four 16x16 cells, each empty or holding a handwritten digit; the
labels say which of the ten digits appear (several may). The teacher (LeNet-5, ten independent
sigmoid outputs) is trained on such canvases made from scikit-learn's digits; the student
(LeNet-5-Half) never sees one. It only learns from the teacher's outputs on generated inputs.

Everything task-specific is here: the data (:class:`MultiDigits`), the teacher's loss
(:func:`bce`), and the system (:class:`MultiLabelDFAD`), which changes three things of DFAD: what
is compared (probabilities, not logits), how the data-free signal counts agreement (per label),
and what is reported (the precision of every label).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchmetrics.classification import MultilabelAveragePrecision

from dfad_lightning.data import Digits
from dfad_lightning.systems import DFAD


class MultiDigits(Dataset[tuple[Tensor, Tensor]]):
    """Canvases of up to four digits with multi-hot labels ``(10,)`` (int64), made with a fixed seed.

    Digits come from the matching split of :class:`~dfad_lightning.data.Digits`, so the train and
    test canvases share no handwriting.

    Args:
        split: ``"train"`` or ``"test"``.
        size: Number of canvases.
        seed: Seed of the layout.
    """

    def __init__(self, split: str = "train", size: int = 4000, seed: int = 0) -> None:
        digits = Digits("test" if split == "test" else "train", image_size=16)
        g = torch.Generator().manual_seed(seed + (split == "test"))
        picks = torch.randint(len(digits), (size, 4), generator=g)
        filled = torch.rand(size, 4, generator=g) < 0.5
        filled[filled.sum(1) == 0, 0] = True  # at least one digit per canvas
        self.images = torch.zeros(size, 1, 32, 32)
        self.targets = torch.zeros(size, 10, dtype=torch.long)
        for cell, (top, left) in enumerate(((0, 0), (0, 16), (16, 0), (16, 16))):
            rows = filled[:, cell].nonzero().flatten()
            index = picks[rows, cell]
            self.images[rows, :, top : top + 16, left : left + 16] = digits.images[index]
            self.targets[rows, digits.targets[index]] = 1

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.targets[index]


def bce(logits: Tensor, target: Tensor) -> Tensor:
    """The teacher's training loss: binary cross-entropy of every label."""
    return F.binary_cross_entropy_with_logits(logits, target.float())


class MultiLabelDFAD(DFAD):
    """DFAD for independent labels: compare probabilities, and report every label's precision.

    Args:
        *args: As :class:`~dfad_lightning.systems.DFAD`.
        **kwargs: As :class:`~dfad_lightning.systems.DFAD`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        num_labels = int(getattr(self.student_metric, "num_labels"))  # noqa: B009 (a Metric's attributes are untyped)
        self.per_label = MultilabelAveragePrecision(num_labels, average=None)

    def discrepancy(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        """Mean absolute error of the label probabilities.

        Labels are independent yes/no answers, so what matters is each sigmoid, not the logit:
        a logit of 8 or of 20 is the same confident "yes", and should not cost the student.
        """
        return F.l1_loss(student_out.sigmoid(), teacher_out.sigmoid())

    def fidelity(self, student_out: Tensor, teacher_out: Tensor) -> dict[str, Tensor]:
        """Data-free agreement per label (both say yes, or both no), not of an argmax."""
        return {
            "agreement": ((student_out > 0) == (teacher_out > 0)).float().mean(),
            "mae": self.discrepancy(student_out, teacher_out),
        }

    def top_classes(self, teacher_out: Tensor) -> None:
        """Labels are not exclusive classes: no class-spread warning for this task."""
        return None

    def on_validation_epoch_start(self) -> None:
        """Start each evaluation's per-label precision afresh (the base metrics reset themselves)."""
        super().on_validation_epoch_start()
        self.per_label.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The base evaluation (mean average precision), plus the precision of every label."""
        super().validation_step(batch, batch_idx)
        x, target = batch
        self.per_label.update(self.final_student(x), target)

    def report(self) -> dict[str, Any]:
        """The student's average precision of every label, on the last evaluation."""
        values = self.per_label.compute()
        return {"per_label_ap": [round(float(v), 4) for v in values]}
