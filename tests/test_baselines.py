"""The paper's baselines: each trains the student through the shared loop, and differs only where it should."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from conftest import SHARED_DATA
from test_dfad import K, make_datamodule, make_system, same, snapshot

from dfad_lightning.data import Digits, TransferDataModule
from dfad_lightning.systems import DAFL, DFAD, DirectKD
from dfad_lightning.tasks import run


def fit(system, datamodule):
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(system, datamodule=datamodule)


def test_the_baselines_share_the_loop():
    assert DirectKD.training_step is DAFL.training_step is DFAD.training_step


def test_random_trains_the_student_on_noise_images_and_no_generator():
    system = make_system(cls=DirectKD, inputs="noise", image_shape=(1, 32, 32))
    student, generator = snapshot(system.student), snapshot(system.generator)
    fit(system, make_datamodule())
    assert not same(student, snapshot(system.student)) and same(generator, snapshot(system.generator))
    assert system.synthesize(torch.zeros(5, 16)).shape == (5, 1, 32, 32)


def test_kd_trains_the_student_on_stacks_of_real_images():
    data = TransferDataModule(
        train_dataset=partial(Digits, split="train"), nz=16, batch_size=8, student_steps=K, iterations_per_epoch=3,
        eval_dataset=partial(Digits, split="test"), mean=[0.3], std=[0.3],
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.shape == (K + 1, 8, 1, 32, 32) and len(data.train_dataloader()) == 3
    system = make_system(cls=DirectKD, inputs="data")
    student, generator = snapshot(system.student), snapshot(system.generator)
    fit(system, data)
    assert not same(student, snapshot(system.student)) and same(generator, snapshot(system.generator))


def test_dafl_trains_the_generator_against_the_teacher_alone():
    system = make_system(cls=DAFL)
    x = system.generator(torch.randn(8, 16))
    student_out = system.student(x)
    loss = system.generator_loss(student_out, system.teacher(x))
    (grad,) = torch.autograd.grad(loss, student_out, allow_unused=True)
    assert grad is None  # the student is no part of DAFL's generator loss
    student, generator = snapshot(system.student), snapshot(system.generator)
    fit(system, make_datamodule())
    assert not same(student, snapshot(system.student)) and not same(generator, snapshot(system.generator))


@pytest.mark.parametrize("method", ["dfad", "random", "kd_ori", "dafl"])
def test_every_method_runs_from_config(make_cfg, method):
    results = run(make_cfg(f"method={method}"))
    assert 0.0 <= results["student"]["final"] <= 1.0 and results["iterations"] == 6


@pytest.mark.shared_data
def test_kd_on_other_data_reads_any_image_folder(make_cfg):
    results = run(make_cfg("method=kd_other", f"method.transfer_root={SHARED_DATA / 'cifar10' / 'test'}"))
    assert 0.0 <= results["student"]["final"] <= 1.0
