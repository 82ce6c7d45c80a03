"""A new task needs little code: a toy subclass, and the multi-label example run through the config."""

from __future__ import annotations

import inspect
from collections import Counter
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from torchmetrics.regression import MeanSquaredError

from dfad_lightning.data import DFADDataModule
from dfad_lightning.parts import StudentSteps
from dfad_lightning.systems import DFAD
from dfad_lightning.tasks import run


class VectorRegression(DFAD):
    """A toy task: the networks map 8-vectors to 3 numbers; compared by squared error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    def synthesize(self, z: Tensor) -> Tensor:
        self.calls["synthesize"] += 1
        return torch.tanh(self.generator(z))  # inputs live in [-1, 1]

    def discrepancy(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        self.calls["discrepancy"] += 1
        return F.mse_loss(student_out, teacher_out)

    def generator_loss(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        self.calls["generator_loss"] += 1
        return -self.discrepancy(student_out, teacher_out)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.calls["validation_step"] += 1
        super().validation_step(batch, batch_idx)

    def report(self) -> dict[str, int]:
        return dict(self.calls)


def test_a_new_task_is_a_short_subclass_whose_hooks_run_and_whose_metric_is_logged(tmp_path):
    assert len(inspect.getsource(VectorRegression).splitlines()) <= 40
    L.seed_everything(0, verbose=False)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(64, 8) * 2 - 1
    with torch.no_grad():
        real = TensorDataset(x, teacher(x))  # the "real" evaluation split: the teacher's own answers
    system = VectorRegression(
        teacher,
        nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)),
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)),
        metric=MeanSquaredError(),
        metric_name="mse",
        learning=partial(StudentSteps, steps=2),
    )
    data = DFADDataModule(nz=4, batch_size=16, student_steps=2, iterations_per_epoch=5, eval_dataset=lambda: real)
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0
    )
    trainer.fit(system, datamodule=data)
    iterations = 3 * 5
    assert system.calls["synthesize"] >= iterations * 3  # 2 student steps + 1 generator step
    assert system.calls["generator_loss"] == iterations
    assert system.calls["discrepancy"] == iterations * 3
    assert system.calls["validation_step"] == 3
    assert {"val/mse", "val/mse_best", "val/teacher_mse"} <= set(trainer.callback_metrics)
    assert float(system.teacher_score) == pytest.approx(0.0, abs=1e-10)  # the teacher matches itself
    assert float(system.best_score) <= float(system.last_score)  # lower is better for this metric


EXAMPLE = [f"hydra.searchpath=[file://{ROOT / 'examples' / 'multilabel' / 'conf'}]", "dataset=multidigits"]


def test_the_multilabel_example_runs_through_the_config(make_cfg):
    results = run(make_cfg(*EXAMPLE, "teacher.training.epochs=4"))
    assert results["metric"] == "map" and 0.3 < results["teacher"] <= 1.0  # chance is about 0.19
    assert len(results["per_label_ap"]) == 10 and 0.0 < results["student"]["final"] <= 1.0
    # The per-label precisions are those of the last evaluation: their mean is the macro mAP.
    per_label = torch.tensor(results["per_label_ap"])
    assert per_label.mean().item() == pytest.approx(results["student"]["final"], abs=1e-3)
    # Labels are not exclusive classes: the example opts out of the class-spread warning.
    assert "latest_agreement" in results["datafree"]["final"]
    assert "latest_class_spread" not in results["datafree"]["final"]
