"""The methods: the paper's baselines and the field's methods, each a choice of the loop's parts."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import SHARED_DATA, K, same, snapshot
from hydra.utils import instantiate

from dfad_lightning.data import Conformed, Digits, TransferDataModule
from dfad_lightning.errors import ConfigError
from dfad_lightning.networks import LeNet5
from dfad_lightning.parts import DAFLObjective, MetaGenerator, NoiseImages, RealImages
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


# Every method of the method group; those whose input-maker plays against the student.
METHODS = ["dfad", "dafl", "dfq", "zskt", "deepinversion", "cmi", "fast"]
ADVERSARIAL = ["dfad", "dfq", "zskt", "deepinversion", "cmi", "fast"]
# A CPU-sized synthesis for the optimising methods, so that the tests take seconds.
SMALL = {
    "deepinversion": ["system.inputs.steps=3"],
    "cmi": ["system.inputs.steps=3"],
    "fast": ["system.inputs.steps=2"],
}


def built(make_cfg, method, *overrides):
    """The system a method's config builds (with the embedded digits' teacher), ready to step."""
    from dfad_lightning.tasks.build import build_network, build_system, uses_generator
    from dfad_lightning.tasks.teacher import load_teacher

    cfg = make_cfg(f"method={method}", *SMALL.get(method, []), *overrides)
    teacher, _ = load_teacher(cfg)
    generator = build_network(cfg.generator, "generator") if uses_generator(cfg) else None
    return build_system(cfg, teacher, build_network(cfg.model, "model"), generator)


@pytest.mark.parametrize("method", ADVERSARIAL)
def test_the_input_makers_loss_depends_on_the_student(make_cfg, method):
    """The anchor's bug: a baseline whose student argument was the teacher had no adversarial term at all."""
    # A student of the teacher's architecture and weights: the two agree on every input, so the
    # methods whose adversarial term counts only agreeing samples (CMI, Fast) have one to count.
    system = built(make_cfg, method, "recipe=paper", "model=lenet5")
    system.student.load_state_dict(system.teacher.state_dict())
    assert system.student is not system.teacher and system.objective.adversarial_weight > 0
    x = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(2):
        losses.append(float(system.synthesis_loss(x).detach()))
        with torch.no_grad():  # a small change: the student still agrees with the teacher on most inputs
            for p in system.student.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=noise))
    assert losses[0] != losses[1]  # another student, another loss for the input-maker


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_from_one_word_and_counts_its_iterations(make_cfg, method):
    results = run(make_cfg(f"method={method}", *SMALL.get(method, [])))
    assert 0.0 <= results["student"]["final"] <= 1.0 and results["iterations"] == 6  # 2 epochs of 3
    assert results["method"] in {"DFAD", "DAFL", "DFQ", "ZSKT", "DeepInversion", "CMI", "Fast"}
    assert [p["epoch"] for p in results["curve"]] == [0, 1] and results["curve"][-1]["iterations"] == 6


@pytest.mark.parametrize("method", ["deepinversion", "cmi", "fast"])
def test_a_resumed_run_of_an_optimising_method_ends_as_a_straight_one(make_cfg, tmp_path, method):
    straight = run(make_cfg(f"method={method}", *SMALL[method], output_dir=tmp_path / "a"))
    run(make_cfg(f"method={method}", *SMALL[method], "trainer.max_epochs=1", output_dir=tmp_path / "b"))
    (tmp_path / "b" / "results.json").unlink()  # the first start's end: resume it for one more epoch
    resumed = run(make_cfg(f"method={method}", *SMALL[method], "ckpt_path=last", output_dir=tmp_path / "b"))
    a, b = (torch.load(r["student_weights"], weights_only=True) for r in (straight, resumed))
    assert same(a, b) and resumed["iterations"] == straight["iterations"] == 6


def test_zskt_adds_the_teachers_attention_to_the_students_loss(make_system):
    from dfad_lightning.parts.learning import stage_outputs

    net = LeNet5(1, 10)
    with stage_outputs(net) as stages:
        net(torch.randn(2, 1, 32, 32))
    assert [tuple(s.shape[-2:]) for s in stages] == [(28, 28), (14, 14), (10, 10), (5, 5)]  # 1x1 maps left out
    plain, zskt = make_system(), make_system(learning={"attention": 250.0})
    x = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        teacher_out = plain.teacher(x)
    base, with_attention = plain.learning.loss(plain, x, teacher_out), zskt.learning.loss(zskt, x, teacher_out)
    assert float(with_attention) > float(base) and torch.equal(base, plain.discrepancy(plain.student(x), teacher_out))
    assert not any(m._forward_hooks for m in zskt.student.modules())  # its hooks are gone again


def test_a_pool_of_optimised_inputs_fills_in_the_warmup_and_is_drawn_without_side_effects(make_cfg, tmp_path):
    system = built(make_cfg, "deepinversion")
    fit = run(make_cfg("method=deepinversion", *SMALL["deepinversion"], output_dir=tmp_path / "run"))
    assert fit["iterations"] == 6
    with pytest.raises(RuntimeError, match="pool of inputs is empty"):
        system.synthesize(torch.randn(4, 16))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    pool = state["inputs.pool.samples"]
    assert (
        pool.shape == (4096, 1, 32, 32) and state["inputs.pool._extra_state"]["seen"] == 6 * 16
    )  # a batch an iteration
    low, high = system.inputs.low, system.inputs.high  # within the images the normalisation can come from
    kept = pool[: 6 * 16]
    assert bool((kept >= low - 1e-6).all() and (kept <= high + 1e-6).all())
    system.inputs.prepare_to_load(state, "inputs.", torch.device("cpu"))
    system.load_state_dict(state, strict=False)
    z = torch.randn(8, 16)
    drawn = system.synthesize(z)
    assert torch.equal(drawn, system.synthesize(z)) and system.inputs.pool.drawn == 0  # pure: probes change nothing
    assert not torch.equal(drawn, system.synthesize(torch.randn(8, 16)))


def test_an_optimising_method_needs_a_warmup_to_make_its_first_inputs(make_cfg):
    with pytest.raises(ConfigError, match=r"^system\.objective\.warmup: must be at least 1 with InputPool inputs"):
        run(make_cfg("method=deepinversion", "system.objective.warmup=0"))


def test_the_meta_generator_steps_on_a_copy_and_keeps_no_copy(tmp_path, make_system, fit):
    inputs = partial(MetaGenerator, nz=16, batch_size=8, image_shape=(1, 32, 32), mean=[0.3], std=[0.3], steps=2)
    system = make_system(inputs=inputs, objective={"one_hot": 1.0, "warmup": 1})
    assert system.inputs.optimizer_steps == 3 and system.steps_per_iteration == K + 3  # two copy steps, one meta
    before = snapshot(system.generator)
    trainer = fit(system, tmp_path, epochs=1)  # 4 iterations: the first the warm-up
    assert not same(before, snapshot(system.generator))  # the meta steps moved the generator itself
    assert len(trainer.optimizers) == 3 and system.inputs.pool.seen == 4 * 8
    assert not any("copy" in k for k in system.state_dict())  # the copy is remade from the generator, never saved
    assert system.iterations(trainer.global_step) == 4 and trainer.global_step == 3 + 3 * (K + 3)


def test_cmi_reinitialises_its_generator_and_remembers_each_batchs_features(make_cfg, tmp_path):
    run(make_cfg("method=cmi", *SMALL["cmi"], output_dir=tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state["inputs.bank._extra_state"]["seen"] == 6 * 16  # one batch's features an iteration
    width = state["inputs.bank.samples"].shape[1]
    assert width == 2 * (6 + 6 + 16 + 16)  # local and global: the channel means of the teacher's four stages
    assert "inputs.head.0.weight" in state
