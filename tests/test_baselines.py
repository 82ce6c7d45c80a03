"""The paper's baselines: each trains the student through the shared loop, and differs only where it should."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import SHARED_DATA, K, same, snapshot
from hydra.utils import instantiate

from dfad_lightning.data import Conformed, Digits, TransferDataModule
from dfad_lightning.errors import ConfigError
from dfad_lightning.parts import DAFLObjective, NoiseImages, RealImages
from dfad_lightning.tasks import run


def test_random_trains_the_student_on_noise_images_with_no_generator(tmp_path, make_system, fit):
    system = make_system(inputs=partial(NoiseImages, image_shape=(1, 32, 32)), generator=None)
    student = snapshot(system.student)
    trainer = fit(system, tmp_path, epochs=1)
    assert not same(student, snapshot(system.student)) and len(trainer.optimizers) == 1  # the student's alone
    assert system.synthesize(torch.zeros(5, 16)).shape == (5, 1, 32, 32)
    assert trainer.global_step == 4 * K  # no generation stage: k student steps an iteration


def test_kd_trains_the_student_on_stacks_of_real_images(tmp_path, make_system, fit):
    data = TransferDataModule(
        train_dataset=partial(Digits, split="train"), nz=16, batch_size=8, student_steps=K, iterations_per_epoch=3,
        eval_dataset=partial(Digits, split="test"), mean=[0.3], std=[0.3],
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.shape == (K + 1, 8, 1, 32, 32) and len(data.train_dataloader()) == 3
    system = make_system(inputs=RealImages, generator=None)
    student = snapshot(system.student)
    trainer = fit(system, tmp_path, epochs=1, datamodule=data)
    assert not same(student, snapshot(system.student)) and len(trainer.optimizers) == 1


def test_inputs_without_a_generator_refuse_a_learnt_contrast_and_need_none(make_system):
    with pytest.raises(ConfigError, match=r"^inputs\.input_affine: RealImages inputs have no learnt scale"):
        make_system(inputs=partial(RealImages, input_affine=True), generator=None)
    assert make_system(inputs=partial(RealImages, input_affine="auto"), generator=None).inputs.affine is None
    with pytest.raises(ValueError, match="Generated inputs need a generator"):
        make_system(generator=None)


def test_dafl_trains_the_generator_against_the_teacher_alone(tmp_path, make_system, fit):
    system = make_system(objective=DAFLObjective)
    x = system.generator(torch.randn(8, 16))
    student_out = system.student(x)
    loss = system.generator_loss(student_out, system.teacher(x))
    (grad,) = torch.autograd.grad(loss, student_out, allow_unused=True)
    assert grad is None  # the student is no part of DAFL's generator loss
    student, generator = snapshot(system.student), snapshot(system.generator)
    fit(system, tmp_path, epochs=1)
    assert not same(student, snapshot(system.student)) and not same(generator, snapshot(system.generator))


@pytest.mark.parametrize("method", ["dfad", "random", "kd_ori", "dafl", "dfq"])
def test_every_method_runs_from_config(make_cfg, method):
    results = run(make_cfg(f"method={method}"))
    assert 0.0 <= results["student"]["final"] <= 1.0 and results["iterations"] == 6


@pytest.mark.shared_data
def test_kd_on_other_data_reads_any_image_folder(make_cfg):
    results = run(make_cfg("method=kd_other", f"method.transfer_root={SHARED_DATA / 'cifar10' / 'test'}"))
    assert 0.0 <= results["student"]["final"] <= 1.0


def test_kd_on_other_data_takes_a_dataset_from_the_transfer_group(make_cfg):
    results = run(make_cfg("method=kd_other", "transfer=digits"))
    assert 0.0 <= results["student"]["final"] <= 1.0 and results["iterations"] == 6


@pytest.mark.shared_data
def test_mnist_as_transfer_data_for_an_rgb_teacher_becomes_rgb(make_cfg):
    cfg = make_cfg(
        "method=kd_other",
        "transfer=mnist",
        "dataset=cifar10",
        f"paths.data_dir={SHARED_DATA}",
        "data.eval_dataset=null",
    )
    data = instantiate(cfg.data)
    data.setup("fit")
    assert next(iter(data.train_dataloader())).shape[2:] == (3, 32, 32)
    image, _ = data.train_dataset.dataset[0]  # before normalisation (per channel, so it differs)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_conformed_converts_channels_and_size():
    grey, rgb = torch.rand(1, 8, 8), torch.rand(3, 8, 8)
    as_rgb, _ = Conformed([(grey, 0)], (3, 16, 16), key="transfer")[0]
    as_grey, _ = Conformed([(rgb, 0)], (1, 8, 8), key="transfer")[0]
    assert as_rgb.shape == (3, 16, 16) and torch.equal(as_rgb[0], as_rgb[2])
    weights = torch.tensor([0.2989, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601 luma
    assert torch.allclose(as_grey, (rgb * weights).sum(0, keepdim=True), atol=1e-3)
    with pytest.raises(ConfigError, match=r"transfer.*2 channels"):
        Conformed([(torch.rand(2, 8, 8), 0)], (3, 8, 8), key="transfer")[0]
