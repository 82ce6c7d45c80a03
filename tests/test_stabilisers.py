"""The stabilisers of the shared loop: each changes what it should, and nothing else."""

from __future__ import annotations

import re
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from test_dfad import K, fit, make_system, same, snapshot
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from dfad_lightning import losses
from dfad_lightning.errors import ConfigError
from dfad_lightning.systems import DAFL, DFAD
from dfad_lightning.systems.augment import random_shift
from dfad_lightning.systems.dfad import INPUT_AFFINE_LR_FACTOR
from dfad_lightning.systems.memory import ReplayMemory
from dfad_lightning.tasks import main, run

# ---------------------------------------------------------------------------------------------
# Moving average of the student
# ---------------------------------------------------------------------------------------------


def test_the_average_follows_the_student_and_is_what_a_run_delivers(tmp_path):
    system = make_system(ema_decay=0.5)
    assert system.final_student is system.student_ema.module
    fit(system, tmp_path, epochs=1)
    averaged, trained = snapshot(system.final_student), snapshot(system.student)
    assert averaged.keys() == trained.keys() and not same(averaged, trained)
    assert int(system.student_ema.n_averaged) == 4  # once per iteration
    assert not any(p.requires_grad for p in system.student_ema.parameters())
    x = torch.randn(4, 1, 32, 32)
    system.eval()
    assert torch.equal(system(x), system.final_student(x))  # evaluated, probed and exported: the average


def test_the_average_is_a_warmed_up_exponential_average():
    student = nn.Linear(1, 1, bias=False)
    average = DFAD._average(student, decay=0.9)
    seen = []
    for value in (1.0, 2.0, 3.0):
        student.weight.data.fill_(value)
        average.update_parameters(student)
        seen.append(float(average.module.weight))
    # First update copies; then decay min(0.9, (1 + n) / (10 + n)): 2/11 then 3/12 of the old value.
    assert seen[0] == 1.0
    assert seen[1] == pytest.approx(2 / 11 * 1.0 + 9 / 11 * 2.0)
    assert seen[2] == pytest.approx(3 / 12 * seen[1] + 9 / 12 * 3.0)


def test_without_average_the_student_is_delivered(tmp_path):
    system = make_system()
    assert system.student_ema is None and system.final_student is system.student


def test_student_pt_holds_the_averaged_weights(make_cfg):
    results = run(make_cfg("system.ema_decay=0.9"))
    saved = torch.load(results["student_weights"], weights_only=True)
    checkpoint = torch.load(results["output_dir"] + "/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    averaged = {k.removeprefix("student_ema.module."): v for k, v in checkpoint.items() if "student_ema.module." in k}
    raw = {k.removeprefix("student."): v for k, v in checkpoint.items() if k.startswith("student.")}
    assert same(saved, averaged) and not same(saved, raw)


# ---------------------------------------------------------------------------------------------
# Replay memory
# ---------------------------------------------------------------------------------------------


def test_the_memory_keeps_a_uniform_sample_of_everything_pushed():
    memory = ReplayMemory(100, (1,), (1,))
    for start in range(0, 10_000, 50):
        batch = torch.arange(start, start + 50, dtype=torch.float32).view(50, 1)
        memory.push(batch, -batch)
    assert memory.seen == 10_000 and len(memory) == 100
    kept = memory.samples.flatten()
    assert len(kept.unique()) == 100  # no sample twice
    assert torch.equal(memory.outputs.flatten(), -kept)  # each sample kept with its own output
    # Uniform over the history: about a tenth from each tenth of the stream (binomial, n=100, p=0.1).
    per_tenth = torch.bincount((kept // 1000).long(), minlength=10)
    assert per_tenth.max() <= 25 and kept.mean().item() == pytest.approx(5000, rel=0.3)


def test_every_draw_is_new_and_returns_the_outputs_of_its_samples():
    memory = ReplayMemory(64, (1,), (2,))
    batch = torch.arange(64.0).view(64, 1)
    memory.push(batch, torch.cat([batch, 2 * batch], 1))
    (x1, out1), (x2, out2) = memory.sample(16), memory.sample(16)
    assert not torch.equal(x1, x2)  # two draws between pushes differ
    for x, out in ((x1, out1), (x2, out2)):
        assert torch.equal(out, torch.cat([x, 2 * x], 1))


def test_the_memory_is_deterministic_and_travels_in_the_state_dict():
    a, b = ReplayMemory(8, (2,), (1,)), ReplayMemory(8, (2,), (1,))
    for memory in (a, b):
        for i in range(5):
            memory.push(torch.full((4, 2), float(i)), torch.full((4, 1), float(i)))
        memory.sample(3)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.sample(6)[0], b.sample(6)[0])
    restored = ReplayMemory(8, (2,), (1,))
    restored.load_state_dict(a.state_dict())
    assert (restored.seen, restored.drawn) == (20, 2) and torch.equal(restored.samples, a.samples)
    assert torch.equal(restored.outputs, a.outputs) and torch.equal(restored.sample(5)[0], a.sample(5)[0])
    a.push(torch.ones(3, 2), torch.ones(3, 1))
    restored.push(torch.ones(3, 2), torch.ones(3, 1))
    assert torch.equal(a.samples, restored.samples)


def test_an_empty_memory_cannot_be_sampled():
    with pytest.raises(RuntimeError, match="empty"):
        ReplayMemory(4, (1,), (1,)).sample(1)


class SeesInputs(DFAD):
    """Records the batch size of every student step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []

    def discrepancy(self, student_out, teacher_out):
        if torch.is_grad_enabled() and not teacher_out.requires_grad:  # a student step
            self.sizes.append(len(student_out))
        return super().discrepancy(student_out, teacher_out)


def test_student_steps_add_past_samples_after_the_first(tmp_path):
    system = make_system(cls=SeesInputs, replay_size=32, replay_fraction=0.5)
    fit(system, tmp_path, epochs=1)
    assert system.sizes[0] == 8 and set(system.sizes[1:]) == {12}  # batch 8, plus 4 from the memory
    assert system.memory is not None and system.memory.seen == 4 * K * 8
    state = system.state_dict()
    assert "memory.samples" in state and state["memory.outputs"].shape == (32, 10)
    assert state["memory._extra_state"] == {"seen": 4 * K * 8, "drawn": 4 * K - 1}  # a draw in every step but the first
    restored = make_system(replay_size=32)
    restored.on_load_checkpoint({"state_dict": state})  # makes the memory the checkpoint holds
    restored.load_state_dict(state)
    assert restored.memory is not None and torch.equal(restored.memory.samples, system.memory.samples)
    assert torch.equal(restored.memory.outputs, system.memory.outputs)


# ---------------------------------------------------------------------------------------------
# Several student updates on each sample
# ---------------------------------------------------------------------------------------------


class CountsImitation(SeesInputs):
    """Also counts the teacher's forward passes without gradients (the imitation stage's labels)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = 0
        self.teacher.register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        if not torch.is_grad_enabled() and self.training:
            self.labels += 1


def fit_counting_student_updates(system: DFAD, tmp_path) -> tuple[L.Trainer, int]:
    """One epoch (4 iterations) of ``system``, and how many steps the student's optimizer (SGD) took."""
    updates = []
    hook = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: updates.append(1) if isinstance(opt, torch.optim.SGD) else None
    )
    try:
        trainer = fit(system, tmp_path, epochs=1)
    finally:
        hook.remove()
    return trainer, len(updates)


def test_student_reuse_updates_the_student_r_times_on_each_sample_made_and_labelled_once(tmp_path):
    system = make_system(cls=CountsImitation, student_reuse=3, replay_size=32)
    _, student_updates = fit_counting_student_updates(system, tmp_path)
    assert system.labels == 4 * K  # one fresh sample per student step, labelled once (replay brings its own)
    assert len(system.sizes) == student_updates == 4 * K * 3  # and three updates on each
    assert system.sizes[:3] == [8, 8, 8] and set(system.sizes[3:]) == {12}  # replay from the second step on
    assert system.memory is not None and system.memory.seen == 4 * K * 8  # the memory sees each sample once
    assert system.memory.drawn == (4 * K - 1) * 3  # a new replay draw for each update


class SeesReplay(DFAD):
    """Records the inputs of every student update and the teacher outputs they are trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _replayed(self, x, teacher_out):
        x, teacher_out = super()._replayed(x, teacher_out)
        self.updates.append((x.clone(), teacher_out.clone()))
        return x, teacher_out


def test_replayed_samples_are_drawn_anew_for_each_update_with_the_teachers_outputs(tmp_path):
    system = make_system(cls=SeesReplay, student_reuse=2, replay_size=32)
    fit(system, tmp_path, epochs=1)
    (x1, _), (x2, _) = system.updates[2:4]  # the second step's two updates
    assert torch.equal(x1[:8], x2[:8]) and not torch.equal(x1[8:], x2[8:])  # same fresh half, new past half
    system.eval()
    with torch.no_grad():
        for x, out in system.updates[2:]:  # what the memory gives is what the frozen teacher says
            assert torch.allclose(out, system.teacher(x), atol=1e-5)


@pytest.mark.parametrize("option", ["student_reuse", "student_minibatches"])
def test_one_update_or_part_per_sample_is_the_papers_loop_and_two_change_the_student(tmp_path, option):
    paper, one = make_system(), make_system(**{option: 1})
    fit(paper, tmp_path / "a", epochs=1)
    fit(one, tmp_path / "b", epochs=1)
    assert same(snapshot(paper.student), snapshot(one.student))
    two = make_system(**{option: 2})
    fit(two, tmp_path / "c", epochs=1)
    assert not same(snapshot(paper.student), snapshot(two.student))


def test_student_minibatches_split_each_sample_into_parts_one_update_each(tmp_path):
    system = make_system(cls=CountsImitation, student_reuse=2, student_minibatches=2, replay_size=32)
    trainer, student_updates = fit_counting_student_updates(system, tmp_path)
    assert system.labels == 4 * K  # each sample still made and labelled once
    assert len(system.sizes) == student_updates == 4 * K * 2 * 2  # two passes of two parts on each
    assert system.sizes[:4] == [4] * 4 and set(system.sizes[4:]) == {6}  # halves, with half as many replayed
    assert system.memory is not None and system.memory.seen == 4 * K * 8  # the whole sample is remembered once
    assert trainer.global_step == 4 * system.steps_per_iteration and system.steps_per_iteration == K * 4 + 1
    assert system.iterations(trainer.global_step) == 4


def test_student_minibatches_take_the_whole_sample_between_them():
    system = make_system(student_minibatches=3)
    x, out = torch.randn(8, 1, 4, 4), torch.randn(8, 10)
    parts = system._minibatches(x, out)
    assert [len(p) for p, _ in parts] == [3, 3, 2]
    sixteen = make_system(student_minibatches=6)._minibatches(torch.randn(16, 1, 4, 4), torch.randn(16, 10))
    assert [len(p) for p, _ in sixteen] == [3, 3, 3, 3, 2, 2]  # sizes within one of each other, none of 1
    assert torch.equal(torch.cat([p for p, _ in parts]), x) and torch.equal(torch.cat([o for _, o in parts]), out)
    assert make_system()._minibatches(x, out) == [(x, out)]  # one: the whole batch, as the paper


def test_minibatches_too_small_for_batchnorm_are_refused_at_the_first_iteration_not_after_the_warmup(tmp_path):
    # The tests' batch of 8 in 5 parts: some of 1 sample.
    system = make_system(student_minibatches=5, generator_warmup=0.5, balance=5.0)
    with pytest.raises(ConfigError, match=r"^system\.student_minibatches: 5 minibatches of a batch of 8 .*batch_size"):
        fit(system, tmp_path, epochs=1)
    assert system.trainer.global_step == 0  # not one warm-up step was spent first


def with_batchnorm(**kwargs) -> DFAD:
    """The tests' system with a teacher that has BatchNorm layers (a ResNet-8)."""
    from dfad_lightning.networks import GeneratorA, cifar_resnet, lenet5_half

    L.seed_everything(0, verbose=False)
    return DFAD(
        cifar_resnet(8, 1, 10).eval(), lenet5_half(1, 10), GeneratorA(16, 1, 32, 8),
        make_system().student_metric, "acc", student_steps=K, **kwargs,
    )  # fmt: skip


def test_automatic_minibatches_are_finer_only_where_the_batchnorm_prior_acts():
    from dfad_lightning.systems.dfad import AUTO_MINIBATCHES

    auto = {"student_minibatches": "auto"}
    assert AUTO_MINIBATCHES > 1 and with_batchnorm(bn_prior=1.0, **auto).student_minibatches == AUTO_MINIBATCHES
    assert with_batchnorm(bn_prior=0.0, **auto).student_minibatches == 1  # no prior to anchor the samples
    assert make_system(bn_prior=1.0, student_minibatches="auto").student_minibatches == 1  # LeNet-5: no BatchNorm
    assert make_system(student_minibatches="auto").steps_per_iteration == K + 1


def test_automatic_minibatches_take_no_part_smaller_than_the_measured_ones(tmp_path):
    # The tests' batches of 8 would make four parts of 2: "auto" takes them whole, where 4 must fail.
    from dfad_lightning.systems.dfad import AUTO_MIN_PART, AUTO_MINIBATCHES, auto_minibatches

    assert auto_minibatches(AUTO_MINIBATCHES * AUTO_MIN_PART) == AUTO_MINIBATCHES == auto_minibatches(1024)
    assert auto_minibatches(2 * AUTO_MIN_PART) == 2 and auto_minibatches(2 * AUTO_MIN_PART - 1) == 1

    auto = with_batchnorm(bn_prior=1.0, student_minibatches="auto")
    trainer, student_updates = fit_counting_student_updates(auto, tmp_path)
    assert auto.student_minibatches == 1 and student_updates == 4 * K  # one update per student step
    assert auto.iterations(trainer.global_step) == 4
    with pytest.raises(ConfigError, match=r"system\.student_minibatches: 5 minibatches of a batch of 8"):
        fit(with_batchnorm(bn_prior=1.0, student_minibatches=5), tmp_path, epochs=1)


def test_input_affine_scales_and_shifts_every_generated_input_and_learns_faster(tmp_path):
    from dfad_lightning.systems.dfad import INPUT_AFFINE_LR_FACTOR

    plain = make_system()
    assert plain.input_affine is None and len(plain.configure_optimizers()[0][1].param_groups) == 1
    system = make_system(input_affine=True)
    assert system.input_affine is not None
    z = torch.randn(4, 16)
    with torch.no_grad():
        system.input_affine.scale.fill_(0.5)
        system.input_affine.shift.fill_(0.25)
        assert torch.allclose(system.synthesize(z), 0.5 * system.generator(z) + 0.25)
        system.input_affine.scale.fill_(1.0)
        system.input_affine.shift.fill_(0.0)
    (_, opt_g), _ = system.configure_optimizers()
    assert [len(g["params"]) for g in opt_g.param_groups][1:] == [2]
    assert opt_g.param_groups[1]["lr"] == INPUT_AFFINE_LR_FACTOR * opt_g.param_groups[0]["lr"]
    before = snapshot(system.generator)
    fit(system, tmp_path, epochs=1)
    assert system.input_affine.scale.item() != 1.0 and system.input_affine.shift.item() != 0.0  # trained with G
    assert not same(before, snapshot(system.generator))


def test_resuming_with_input_affine_changed_names_the_key():
    without, with_ = make_system().state_dict(), make_system(input_affine=True).state_dict()
    with pytest.raises(ConfigError, match=r"^system\.input_affine: .* trained without .*input_affine=false$"):
        make_system(input_affine=True).on_load_checkpoint({"state_dict": without})
    with pytest.raises(ConfigError, match=r"^system\.input_affine: .* trained with .*input_affine=true$"):
        make_system().on_load_checkpoint({"state_dict": with_})
    restored = make_system(input_affine=True)
    restored.on_load_checkpoint({"state_dict": with_})
    restored.load_state_dict(with_)  # the same setting loads


def test_automatic_input_affine_only_where_the_batchnorm_prior_acts():
    from dfad_lightning.networks import ScaleShift

    assert isinstance(with_batchnorm(bn_prior=1.0, input_affine="auto").input_affine, ScaleShift)
    assert with_batchnorm(bn_prior=0.0, input_affine="auto").input_affine is None  # nothing tells the contrast
    assert make_system(bn_prior=1.0, input_affine="auto").input_affine is None  # LeNet-5: no BatchNorm
    with pytest.raises(ConfigError, match=r"^system\.input_affine: must be true, false or auto, got 'yes'$"):
        make_system(input_affine="yes")


def test_minibatches_too_small_for_batchnorm_are_refused_naming_the_key(make_cfg, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(make_cfg("system.student_minibatches=9"))  # batches of 16: parts of 1 or 2
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: system.student_minibatches: 9 minibatches of a batch of 16 leave fewer than 2")
    assert "data.batch_size" in err and len(err.splitlines()) == 1


def test_a_half_size_memory_stores_bfloat16_and_the_student_steps_still_run(tmp_path):
    system = make_system(cls=SeesInputs, replay_size=32, replay_fraction=0.5, replay_dtype="bfloat16")
    fit(system, tmp_path, epochs=1)
    assert system.memory is not None and system.memory.samples.dtype == system.memory.outputs.dtype == torch.bfloat16
    assert set(system.sizes[1:]) == {12} and system.memory.samples.abs().sum() > 0
    memory = ReplayMemory(4, (2,), (1,), torch.float16)
    memory.push(torch.full((3, 2), 1 / 3), torch.ones(3, 1))
    x, out = memory.sample(2)
    assert x.dtype == out.dtype == torch.float16 and float(x[0, 0]) == pytest.approx(1 / 3, abs=1e-3)


def test_a_replay_memory_too_large_to_ignore_warns_with_the_keys_to_change(tmp_path, monkeypatch):
    monkeypatch.setattr("dfad_lightning.systems.dfad.REPLAY_WARN_BYTES", 32 * (64 + 10) * 4 - 1)  # 32 of 1x8x8 and 10
    system = make_system(replay_size=32)
    expected = r"32 samples of 1x8x8 .* in float32.*system\.replay_size.*replay_dtype=bfloat16"
    with pytest.warns(UserWarning, match=expected):
        system._new_memory((1, 8, 8), (10,), torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_system(replay_size=32, replay_dtype="bfloat16")._new_memory((1, 8, 8), (10,), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# Priors in the generator's loss
# ---------------------------------------------------------------------------------------------


def test_class_balance_is_zero_for_balanced_batches_and_grows_with_imbalance():
    balanced = torch.eye(10) * 20
    one_class = torch.zeros(10, 10)
    one_class[:, 3] = 20
    assert float(losses.class_balance(balanced)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.class_balance(one_class)) == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=1e-4)
    dense = torch.zeros(2, 3, 4, 4)  # segmentation: classes in dimension 1
    assert float(losses.class_balance(dense)) == pytest.approx(0.0, abs=1e-6)


def test_the_batchnorm_prior_records_only_passes_with_gradients():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).eval()
    prior = losses.BatchNormPrior(net)
    assert len(prior) == 2
    with torch.no_grad():
        net(torch.randn(8, 1, 8, 8))
    assert float(prior.loss()) == 0.0  # nothing recorded without gradients
    x = torch.randn(8, 1, 8, 8, requires_grad=True)
    net(x)
    loss = prior.loss()
    loss.backward()
    assert float(loss.detach()) > 0 and x.grad is not None and x.grad.abs().sum() > 0
    assert float(prior.loss()) == 0.0  # consumed


def test_the_batchnorm_prior_is_zero_on_data_with_the_layers_statistics():
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    prior = losses.BatchNormPrior(bn)
    torch.manual_seed(0)
    x = (torch.randn(512, 2, 16, 16) * 2 + 1).requires_grad_()
    bn(x)
    assert float(prior.loss().detach()) < 0.05
    bn(torch.randn(512, 2, 16, 16, requires_grad=True))
    assert float(prior.loss().detach()) > 2.0


@pytest.mark.parametrize(
    ("layer", "shape", "channels_last"),
    [
        (nn.BatchNorm2d(3), (16, 3, 8, 8), False),
        (nn.BatchNorm2d(3), (16, 3, 8, 8), True),
        (nn.BatchNorm1d(3), (16, 3), False),
    ],
)
def test_the_batchnorm_prior_is_the_distance_of_the_batchs_statistics_in_any_layout(layer, shape, channels_last):
    torch.manual_seed(0)
    layer.eval().running_mean.uniform_(-1, 1)
    layer.running_var.uniform_(0.5, 2)
    prior = losses.BatchNormPrior(layer)
    x = torch.randn(*shape) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer(x.requires_grad_())
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x.detach(), dim=dims, unbiased=False)
    expected = torch.linalg.vector_norm(mean - layer.running_mean) + torch.linalg.vector_norm(var - layer.running_var)
    assert torch.allclose(prior.loss(), expected, rtol=1e-5)


def test_the_batchnorm_prior_is_nothing_on_a_teacher_without_batchnorm():
    # make_system's teacher is a LeNet-5: the prior finds no layer and the generator's loss is the paper's.
    plain, primed = make_system(), make_system(bn_prior=1.0)
    x = primed.generator(torch.randn(8, 16))
    s, t = primed.student(x), primed.teacher(x)
    assert torch.equal(primed.generator_loss(s, t), plain.generator_loss(s, t))


def test_priors_add_to_the_generators_loss_and_only_there():
    plain, primed = make_system(), make_system(balance=2.0, one_hot=0.5)
    x = plain.generator(torch.randn(8, 16))
    s, t = plain.student(x), plain.teacher(x)
    expected = losses.negative(losses.mae(s, t)) + 2.0 * losses.class_balance(t) + 0.5 * losses.one_hot(t)
    assert torch.allclose(primed.generator_loss(s, t), expected)
    assert torch.equal(primed.discrepancy(s, t), plain.discrepancy(s, t))  # the student's loss is the paper's
    assert torch.equal(plain.generator_loss(s, t), losses.negative(losses.mae(s, t)))


def test_the_agreement_mask_keeps_the_adversarial_term_where_student_and_teacher_agree():
    system = make_system(adversarial_agreement=True)
    t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]], requires_grad=True)
    s = torch.tensor([[1.0, 0.5, 0.0], [0.0, 3.0, 0.0], [4.0, 0.0, 0.0]], requires_grad=True)  # the last disagrees
    loss = system.generator_loss(s, t)
    assert torch.allclose(loss, -losses.mae(s[:2], t[:2]))  # the mean over the two that agree
    grad_s, grad_t = torch.autograd.grad(loss, [s, t])
    assert not grad_s[2].any() and not grad_t[2].any() and grad_s[:2].any()
    assert torch.equal(system.discrepancy(s, t), losses.mae(s, t))  # the student's loss keeps every sample
    assert torch.equal(make_system().generator_loss(s, t), -losses.mae(s, t))  # off: the paper's


def test_the_agreement_mask_is_zero_when_none_agree_and_per_pixel_for_dense_outputs():
    system = make_system(adversarial_agreement=True)
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(system.generator_loss(s, t)) == 0.0
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)  # segmentation: (B, classes, H, W)
    agree = s.argmax(1) == t.argmax(1)
    expected = -(s - t).abs().mean(1)[agree].mean()
    assert 0 < int(agree.sum()) < agree.numel()
    assert torch.allclose(system.generator_loss(s, t), expected)


def test_the_batchnorm_prior_shapes_the_generators_gradient(tmp_path):
    from dfad_lightning.networks import GeneratorA, cifar_resnet, lenet5_half

    def build(bn_prior):
        torch.manual_seed(0)
        return DFAD(
            cifar_resnet(8, 1, 10).eval(), lenet5_half(1, 10), GeneratorA(16, 1, 32, 8),
            make_system().student_metric, "acc", bn_prior=bn_prior,
        )  # fmt: skip

    grads = []
    for weight in (0.0, 1.0):
        system = build(weight)
        x = system.generator(torch.randn(8, 16))
        system.generator_loss(system.student(x), system.teacher(x)).backward()
        grads.append(system.generator.project.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
    assert build(1.0).bn_prior is not None and len(build(1.0).bn_prior) == 7


def test_dafl_is_the_priors_plus_its_activation_loss():
    system = make_system(cls=DAFL)
    assert system.prior_weights == {"balance": 5.0, "one_hot": 1.0, "bn_prior": 0.0}
    x = system.generator(torch.randn(8, 16))
    t = system.teacher(x)
    features = system._features
    expected = 5.0 * losses.class_balance(t) + losses.one_hot(t) - 0.1 * features.abs().mean()
    assert torch.allclose(system.generator_loss(system.student(x), t), expected)


# ---------------------------------------------------------------------------------------------
# Random translations of the generated samples
# ---------------------------------------------------------------------------------------------


def translation(image: torch.Tensor, shifted: torch.Tensor, largest: int) -> tuple[int, int] | None:
    """The (down, right) translation, within ``largest`` pixels, that turns ``image`` into ``shifted``."""
    height, width = image.shape[-2:]
    padded = F.pad(image[None], (largest,) * 4, mode="replicate")[0]
    for dy in range(-largest, largest + 1):
        for dx in range(-largest, largest + 1):
            crop = padded[..., largest - dy : largest - dy + height, largest - dx : largest - dx + width]
            if torch.equal(crop, shifted):
                return dy, dx
    return None


def test_random_shift_translates_each_image_by_its_own_whole_pixels_within_the_bound():
    x = torch.randn(64, 3, 16, 16, requires_grad=True)
    y = random_shift(x, 0.125, torch.Generator().manual_seed(0))  # up to 2 pixels of 16
    moves = [translation(x[i].detach(), y[i].detach(), 2) for i in range(64)]
    assert None not in moves  # every image is its input translated, the border repeated
    assert len(set(moves)) > 10  # each image its own translation
    assert max(max(abs(dy), abs(dx)) for dy, dx in moves) == 2
    (grad,) = torch.autograd.grad(y.sum(), x)  # differentiable: every output pixel comes from one input pixel
    assert grad.sum() == y.numel() and (grad >= 0).all()
    assert random_shift(x, 0.0) is x
    again = random_shift(x, 0.125, torch.Generator().manual_seed(0))
    assert torch.equal(again, y)  # the same stream, the same translations


class SeesTeacherInputs(DFAD):
    """Records, for every training batch, what synthesize made and what the teacher was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.teacher.register_forward_hook(self._seen)

    def synthesize(self, z):
        self._made = super().synthesize(z)
        return self._made

    def _seen(self, module, inputs, output):
        if self.training and hasattr(self, "_made"):
            self.pairs.append((self._made.detach().clone(), inputs[0].detach().clone()))
            del self._made


@pytest.mark.parametrize("shift", [0.0, 0.125])
def test_the_shift_translates_the_samples_of_every_stage_before_the_teacher_labels_them(tmp_path, shift):
    system = make_system(cls=SeesTeacherInputs, shift=shift, generator_warmup=2, balance=1.0)
    fit(system, tmp_path, epochs=1)  # 4 iterations: 2 of the warm-up, then 2 of K student steps and a generator step
    assert len(system.pairs) == 2 + 2 * (K + 1)
    for made, seen in system.pairs:
        if shift == 0.0:
            assert torch.equal(made, seen)  # off: the paper's samples as they are
        else:
            moves = [translation(m, s, 4) for m, s in zip(made, seen, strict=True)]  # up to 4 pixels of 32
            assert None not in moves and any(move != (0, 0) for move in moves)


def test_the_shift_leaves_evaluation_and_probes_alone():
    system = make_system(shift=0.125)
    z = torch.randn(8, 16)
    system.generator.eval()
    assert torch.equal(system.synthesize(z), system.generator(z))  # probes and pictures call synthesize


# ---------------------------------------------------------------------------------------------
# Generator warm-up
# ---------------------------------------------------------------------------------------------


class WatchesIterations(DFAD):
    """Records, per iteration, whether the student and the generator changed, and the discrepancy's calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.changed: list[tuple[bool, bool]] = []
        self.discrepancies: list[int] = []

    def on_train_batch_start(self, batch, batch_idx):
        self._before = snapshot(self.student), snapshot(self.generator)
        self._calls = 0

    def discrepancy(self, student_out, teacher_out):
        self._calls += 1
        return super().discrepancy(student_out, teacher_out)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        student, generator = self._before
        self.changed.append((not same(snapshot(self.student), student), not same(snapshot(self.generator), generator)))
        self.discrepancies.append(self._calls)


def test_in_the_warmup_only_the_generator_trains_and_on_its_priors_alone(tmp_path):
    # 2 epochs of 4 iterations; the warm-up crosses the first epoch's end.
    system = make_system(cls=WatchesIterations, generator_warmup=5, balance=1.0, ema_decay=0.5)
    trainer = fit(system, tmp_path, epochs=2)
    assert system.changed == [(False, True)] * 5 + [(True, True)] * 3
    assert system.discrepancies == [0] * 5 + [K + 1] * 3  # no student, no adversarial term in the warm-up
    assert int(system.student_ema.n_averaged) == 3  # the average follows the student's updates only
    assert trainer.global_step == 5 + 3 * (K + 1)  # a warm-up iteration is one optimizer step
    assert system.iterations(trainer.global_step) == 8 and system.iterations(3) == 3


def test_a_fractional_warmup_is_that_share_of_the_runs_iterations(tmp_path):
    system = make_system(cls=WatchesIterations, generator_warmup=0.4, balance=1.0)
    trainer = fit(system, tmp_path, epochs=2)  # 8 iterations: round(0.4 * 8) = 3 in the warm-up
    assert system.warmup_iterations == 3
    assert system.changed == [(False, True)] * 3 + [(True, True)] * 5
    assert system.iterations(trainer.global_step) == 8


def test_a_fractional_warmup_of_a_run_without_an_end_is_refused_naming_the_key(tmp_path):
    system = make_system(generator_warmup=0.4, balance=1.0)
    with pytest.raises(ConfigError, match=r"^system\.generator_warmup: a fraction of the run \(0\.4\) needs a run"):
        fit(system, tmp_path, epochs=-1, max_steps=8)  # no epoch limit: the run's length is not known


def test_a_run_with_a_warmup_counts_its_iterations(make_cfg, tmp_path):
    for warmup in ("4", "0.5"):  # 2 epochs of 3 iterations: 4, or half of them, in the warm-up
        cfg = make_cfg(f"system.generator_warmup={warmup}", "system.balance=1", output_dir=tmp_path / warmup)
        results = run(cfg)
        assert results["iterations"] == 6 and results["student"]["final"] is not None


def test_the_warmup_steps_the_generator_at_its_scaled_rate_and_the_game_at_its_own(tmp_path):
    system = make_system(generator_warmup=3, generator_warmup_lr_scale=10.0, balance=1.0, input_affine=True)
    rates: list[list[float]] = []  # at each generator (Adam) step: the rate of every parameter group
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: (
            rates.append([g["lr"] for g in opt.param_groups]) if isinstance(opt, torch.optim.Adam) else None
        )
    )
    try:
        trainer = fit(system, tmp_path, epochs=2)  # 8 iterations, the first 3 the warm-up
    finally:
        hook.remove()
    base = [1e-3, 1e-3 * INPUT_AFFINE_LR_FACTOR]  # the generator's groups: its weights, the input's scale and shift
    assert rates == [[10 * lr for lr in base]] * 3 + [base] * 5
    assert [g["lr"] for g in trainer.optimizers[1].param_groups] == base  # restored exactly after each step


def test_the_warmup_needs_a_prior_to_train_on():
    with pytest.raises(ValueError, match=r"set system\.balance or system\.one_hot"):
        make_system(generator_warmup=2)
    with pytest.raises(ValueError, match="BatchNorm"):  # LeNet-5 has none: the prior cannot train anything
        make_system(generator_warmup=2, bn_prior=1.0)
    for bad in (-1, 1.0, 1.5):  # a count below 0; a fraction of the run of 1 or more
        with pytest.raises(ConfigError, match=r"^system\.generator_warmup: must be an integer >= 0"):
            make_system(generator_warmup=bad, balance=1.0)
    for bad in (0.0, -2.0):
        with pytest.raises(ConfigError, match=r"^system\.generator_warmup_lr_scale: must be above 0"):
            make_system(generator_warmup=2, generator_warmup_lr_scale=bad, balance=1.0)


def test_a_warmup_without_a_prior_is_one_line_naming_the_key(make_cfg, capsys):

    with pytest.raises(SystemExit) as done:
        main(make_cfg("system.generator_warmup=2", "system.balance=0", "system.one_hot=0", "system.bn_prior=1"))
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith("Error: system.generator_warmup: trains the generator on its priors alone")


def test_a_warmup_as_long_as_the_run_is_refused_naming_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"^system\.generator_warmup: 6 warm-up iterations leave the student none"):
        run(make_cfg("system.generator_warmup=6"))  # 2 epochs of 3 iterations
    assert run(make_cfg("system.generator_warmup=5"))["iterations"] == 6  # one student iteration is enough


@pytest.mark.parametrize(
    "option",
    [
        "system.ema_decay=0.9",
        "system.replay_size=64",
        "system.balance=1",
        "system.one_hot=1",
        "system.student_reuse=2",
        "system.student_minibatches=2",
        "system.adversarial_agreement=true",
        "system.shift=0.125",
    ],
)
def test_each_stabiliser_runs_through_the_config(make_cfg, option):
    results = run(make_cfg(option))
    assert results["student"]["final"] is not None


@pytest.mark.parametrize(
    ("option", "key"),
    [
        ({"ema_decay": 1.0}, "system.ema_decay"),
        ({"replay_size": -1}, "system.replay_size"),
        ({"replay_fraction": 0.0}, "system.replay_fraction"),
        ({"student_reuse": 0}, "system.student_reuse"),
        ({"student_minibatches": 0}, "system.student_minibatches"),
        ({"student_minibatches": "some"}, "system.student_minibatches"),
        ({"nonfinite": "ignore"}, "system.nonfinite"),
        ({"replay_dtype": "int8"}, "system.replay_dtype"),
        ({"shift": 0.5}, "system.shift"),
        ({"shift": -0.1}, "system.shift"),
    ],
)
def test_bad_loop_values_are_refused_naming_their_key(option, key):
    (value,) = option.values()
    with pytest.raises(ConfigError, match=rf"^{key}: must be .*, got {re.escape(repr(value))}$") as error:
        make_system(**option)
    assert error.value.key == key
