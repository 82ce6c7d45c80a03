"""The student a run delivers: the student itself, or a moving average of its weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from dfad_lightning.rules import Rule, check_arguments


class MovingAverage(nn.Module):
    """An exponential moving average of the student's weights and BatchNorm statistics, or none.

    Updated once per iteration, after both stages, with the decay ``min(decay, (1 + n) / (10 + n))``
    after ``n`` updates (the warm-up lets an early average follow the student). Where it is kept,
    the average is the student evaluated, probed, saved in ``student.pt`` and exported.

    Args:
        student: The network whose weights are averaged (copied here once).
        decay: The decay's cap, in [0, 1); ``None``: no average, the student itself is delivered.
    """

    RULES = (
        Rule("decay", float, low=0, high=1, nullable=True, why="or null: no moving average",
             doc="moving average of the student's weights, per iteration; it is then the student delivered"),
    )  # fmt: skip

    def __init__(self, student: nn.Module, decay: float | None = None) -> None:
        super().__init__()
        check_arguments(self.RULES, {"decay": decay})
        self.decay = decay
        self.model = _average(student, decay) if decay is not None else None

    def update(self, student: nn.Module) -> None:
        """Move the average towards the student's current weights (nothing without an average)."""
        if self.model is not None:
            self.model.update_parameters(student)

    def delivered(self, student: nn.Module) -> nn.Module:
        """The student a run delivers: the average where there is one, else ``student`` itself."""
        return student if self.model is None else self.model.module


def _average(student: nn.Module, decay: float) -> AveragedModel:
    """A frozen copy of the student that follows its weights and buffers as a warmed-up EMA."""

    @torch.no_grad()
    def ema(
        averaged: tuple[Tensor, ...] | list[Tensor], current: tuple[Tensor, ...] | list[Tensor], updates: Tensor | int
    ) -> None:
        n = float(updates)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight)
        else:  # BatchNorm's batch counters: follow the student
            torch._foreach_copy_(averaged, current)

    average = AveragedModel(student, multi_avg_fn=ema, use_buffers=True)
    return average.requires_grad_(False)
