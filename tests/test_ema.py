"""The moving average of the student: it follows the student, and it is the student a run delivers."""

from __future__ import annotations

import pytest
import torch
from conftest import same, snapshot
from torch import nn

from dfad_lightning.parts.average import _average
from dfad_lightning.tasks import run


def test_the_average_follows_the_student_and_is_what_a_run_delivers(tmp_path, make_system, fit):
    system = make_system(average={"decay": 0.5})
    assert system.final_student is system.average.model.module
    fit(system, tmp_path, epochs=1)
    averaged, trained = snapshot(system.final_student), snapshot(system.student)
    assert averaged.keys() == trained.keys() and not same(averaged, trained)
    assert int(system.average.model.n_averaged) == 4  # once per iteration
    assert not any(p.requires_grad for p in system.average.model.parameters())
    x = torch.randn(4, 1, 32, 32)
    system.eval()
    assert torch.equal(system(x), system.final_student(x))  # evaluated, probed and exported: the average


def test_the_average_is_a_warmed_up_exponential_average():
    student = nn.Linear(1, 1, bias=False)
    average = _average(student, decay=0.9)
    seen = []
    for value in (1.0, 2.0, 3.0):
        student.weight.data.fill_(value)
        average.update_parameters(student)
        seen.append(float(average.module.weight))
    # First update copies; then decay min(0.9, (1 + n) / (10 + n)): 2/11 then 3/12 of the old value.
    assert seen[0] == 1.0
    assert seen[1] == pytest.approx(2 / 11 * 1.0 + 9 / 11 * 2.0)
    assert seen[2] == pytest.approx(3 / 12 * seen[1] + 9 / 12 * 3.0)


def test_without_average_the_student_is_delivered(tmp_path, make_system):
    system = make_system()
    assert system.average.model is None and system.final_student is system.student


def test_student_pt_holds_the_averaged_weights(make_cfg):
    results = run(make_cfg("system.average.decay=0.9"))
    saved = torch.load(results["student_weights"], weights_only=True)
    checkpoint = torch.load(results["output_dir"] + "/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    averaged = {
        k.removeprefix("average.model.module."): v for k, v in checkpoint.items() if "average.model.module." in k
    }
    raw = {k.removeprefix("student."): v for k, v in checkpoint.items() if k.startswith("student.")}
    assert same(saved, averaged) and not same(saved, raw)
