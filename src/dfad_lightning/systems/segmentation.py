"""DFAD for semantic segmentation: the base loop on per-pixel logits, scored by mean IoU."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from dfad_lightning import losses
from dfad_lightning.metrics import MeanIoU
from dfad_lightning.parts import Objective
from dfad_lightning.systems.dfad import DFAD


class SegmentationDFAD(DFAD):
    """DFAD for networks that output class logits per pixel, ``(B, C, H, W)``.

    The loop is the base class's: the discrepancy (mean absolute error by default) is averaged
    over classes and pixels, and the generator's loss defaults to ``-log(1 + D)``, as in the
    authors' segmentation code. Evaluation uses a :class:`~dfad_lightning.metrics.MeanIoU` metric
    (void pixels ignored); this class adds the IoU of every class, logged as ``val/iou/<class>``
    and reported in ``results.json`` for the teacher and the final student.

    Args:
        *args: As :class:`DFAD`.
        class_names: Name of every class, in label order.
        **kwargs: As :class:`DFAD`; ``metric`` must be a :class:`MeanIoU`, and the objective's
            adversarial term defaults to ``-log(1 + D)``.
    """

    teacher_iou: Tensor
    student_iou: Tensor

    def __init__(
        self,
        *args: Any,
        class_names: Sequence[str],
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("objective", partial(Objective, adversarial=losses.negative_log1p))
        super().__init__(*args, **kwargs)
        if not isinstance(self.student_metric, MeanIoU):
            raise TypeError(f"SegmentationDFAD needs a MeanIoU metric, got {type(self.student_metric).__name__}")
        self.class_names = list(class_names)
        self.register_buffer("teacher_iou", torch.full((len(self.class_names),), float("nan")))
        self.register_buffer("student_iou", torch.full((len(self.class_names),), float("nan")))

    def on_validation_epoch_end(self) -> None:
        """Keep and log the per-class IoU, then let the base class log the mean and reset the metrics."""
        if not self.trainer.sanity_checking:
            self.student_iou.copy_(self.student_metric.per_class())  # type: ignore[operator]
            if self._measure_teacher:
                self.teacher_iou.copy_(self.teacher_metric.per_class())  # type: ignore[operator]
            self.log_dict(
                {f"val/iou/{name}": iou for name, iou in zip(self.class_names, self.student_iou, strict=True)}
            )
        super().on_validation_epoch_end()

    def fidelity(self, student_out: Tensor, teacher_out: Tensor) -> dict[str, Tensor]:
        """The base values (pixel agreement, output MAE) and ``miou`` of the two networks' masks.

        ``miou`` is the mean IoU of the student's masks against the teacher's, over the classes
        that either predicts.
        """
        values = super().fidelity(student_out, teacher_out)
        student, teacher = student_out.argmax(1).flatten(), teacher_out.argmax(1).flatten()
        classes = student_out.shape[1]
        pairs = torch.bincount(teacher * classes + student, minlength=classes * classes).view(classes, classes)
        intersection = pairs.diagonal().float()
        union = pairs.sum(0) + pairs.sum(1) - intersection
        values["miou"] = (intersection / union.clamp(min=1))[union > 0].mean()
        return values

    def report(self) -> dict[str, Any]:
        """The IoU of every class, for the teacher and the final student."""
        return {
            "per_class_iou": {
                name: {"teacher": _number(t), "student": _number(s)}
                for name, t, s in zip(self.class_names, self.teacher_iou, self.student_iou, strict=True)
            }
        }


def _number(value: Tensor) -> float | None:
    """A JSON number, or ``None`` for a class that never occurred (NaN)."""
    return None if bool(torch.isnan(value)) else round(float(value), 6)
