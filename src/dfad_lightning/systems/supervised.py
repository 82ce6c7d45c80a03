"""Supervised training on real labelled data: how teachers are made."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import Metric

from dfad_lightning.metrics import check_class_labels
from dfad_lightning.systems.dfad import OptimizerFactory, SchedulerFactory


class Supervised(LightningModule):
    """Train a network on labelled batches ``(x, target)``; evaluate it with a metric.

    Used by ``task=teacher`` and by the default run, which trains its own teacher on the
    embedded digits, and (with ``trainer.validate``) by ``task=eval``. The evaluation split is
    the same real split DFAD evaluates on. ``score`` holds the metric of the last evaluation.

    Args:
        net: The network to train.
        metric: Evaluation metric of outputs against targets (logged as ``val/<metric_name>``).
        metric_name: Short name of the metric.
        optimizer: Builds the optimizer from the network's parameters (not needed to evaluate).
        scheduler: Builds the LR schedule (stepped per epoch), or ``None``.
        loss: Training loss of ``(outputs, targets)``; cross-entropy by default.
    """

    def __init__(
        self,
        net: nn.Module,
        metric: Metric,
        metric_name: str,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ) -> None:
        super().__init__()
        self.net = net
        self.metric = metric
        self.metric_name = metric_name
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss = loss
        self.score: float = float("nan")

    def forward(self, x: Tensor) -> Tensor:
        """The network's outputs."""
        out: Tensor = self.net(x)
        return out

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy (or the configured loss) on one labelled batch."""
        x, target = batch
        outputs = self.net(x)
        if self.current_epoch == 0:  # the first pass sees every label (later ones the same again)
            check_class_labels(outputs, target)
        loss = self.loss(outputs, target)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Update the metric with one real batch."""
        x, target = batch
        outputs = self.net(x)
        if self.current_epoch == 0:  # as in training: once is enough, and each check waits for the device
            check_class_labels(outputs, target)
        self.metric.update(outputs, target)

    def on_validation_epoch_end(self) -> None:
        """Log the metric over the whole evaluation split."""
        score = self.metric.compute()
        self.metric.reset()
        if not self.trainer.sanity_checking:
            self.score = float(score)
            self.log(f"val/{self.metric_name}", score, prog_bar=True)

    def configure_optimizers(self) -> Any:
        """The configured optimizer and, if any, its per-epoch schedule."""
        if self.optimizer is None:
            raise ValueError("Supervised needs an optimizer factory to train")
        optimizer = self.optimizer(self.net.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "epoch"}}
