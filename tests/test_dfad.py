"""The DFAD loop's invariants, on the module itself (no config)."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from conftest import K, same, snapshot
from torchmetrics.classification import MulticlassAccuracy

from dfad_lightning.errors import ConfigError
from dfad_lightning.networks import GeneratorA, LeNet5, lenet5_half
from dfad_lightning.parts import StudentSteps
from dfad_lightning.systems import DFAD


class Recording(DFAD):
    """DFAD that records, every iteration, what the generation stage changed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator_losses: list[float] = []
        self.student_changed_in_generation: list[bool] = []
        self.generator_changed_in_generation: list[bool] = []
        self.teacher_modes: list[bool] = []

    def generator_loss(self, student_out, teacher_out):
        # Called exactly once per iteration, at the start of the generation stage.
        self._student_before = [p.detach().clone() for p in self.student.parameters()]
        self._generator_before = [p.detach().clone() for p in self.generator.parameters()]
        self.teacher_modes.append(self.teacher.training)
        return super().generator_loss(student_out, teacher_out)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        after_s, after_g = list(self.student.parameters()), list(self.generator.parameters())
        self.student_changed_in_generation.append(
            any(not torch.equal(a, b) for a, b in zip(after_s, self._student_before, strict=True))
        )
        self.generator_changed_in_generation.append(
            any(not torch.equal(a, b) for a, b in zip(after_g, self._generator_before, strict=True))
        )
        self.generator_losses.append(float(self.trainer.callback_metrics["train/loss_generator"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_system, fit):
    system = make_system(Recording)
    before = {name: snapshot(getattr(system, name)) for name in ("teacher", "student", "generator")}
    trainer = fit(system, tmp_path_factory.mktemp("fit"))
    return system, trainer, before


def test_teacher_is_bitwise_unchanged_and_stays_in_eval_mode(trained):
    system, _, before = trained
    assert same(snapshot(system.teacher), before["teacher"])
    assert system.teacher_modes and not any(system.teacher_modes)
    assert not system.teacher.training
    assert not any(p.requires_grad for p in system.teacher.parameters())


def test_student_and_generator_have_changed(trained):
    system, _, before = trained
    assert not same(snapshot(system.student), before["student"])
    assert not same(snapshot(system.generator), before["generator"])


def test_generation_stage_changes_the_generator_and_never_the_student(trained):
    system, _, _ = trained
    assert len(system.generator_changed_in_generation) == 8  # 2 epochs x 4 iterations
    assert all(system.generator_changed_in_generation)
    assert not any(system.student_changed_in_generation)
    # Toggling is undone: the student trains again in the next imitation stage.
    assert all(p.requires_grad for p in system.student.parameters())


def test_generator_loss_is_not_constant(trained):
    system, _, _ = trained
    losses = system.generator_losses
    assert len(set(losses)) > 1
    assert all(loss < 0 for loss in losses)  # -MAE: the generator maximises a positive discrepancy


def test_one_iteration_takes_k_student_steps_and_one_generator_step(trained):
    _, trainer, _ = trained
    assert trainer.global_step == 8 * (K + 1)


def test_evaluation_logs_student_best_and_teacher_scores(trained):
    system, trainer, _ = trained
    metrics = trainer.callback_metrics
    assert {"val/acc", "val/acc_best", "val/teacher_acc"} <= metrics.keys()
    assert float(metrics["val/acc_best"]) >= float(metrics["val/acc"]) - 1e-6
    assert 0.0 <= float(system.teacher_score) <= 1.0
    assert float(system.last_score) == pytest.approx(float(metrics["val/acc"]))


def test_teacher_is_measured_once(tmp_path, make_system, fit):
    system = make_system()
    calls = []
    original = system.teacher.forward
    system.teacher.forward = lambda x: calls.append(torch.is_grad_enabled()) or original(x)  # type: ignore[method-assign]
    fit(system, tmp_path, epochs=3, limit_train_batches=1)
    # Evaluation: 2 teacher batches on the first epoch only. Training: (K + 1) calls per iteration.
    evaluation_calls = len(calls) - 3 * (K + 1)
    assert evaluation_calls == 2


def test_lr_schedules_step_once_per_epoch_not_per_optimizer_step(tmp_path, make_system, fit):
    step_lr = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    system = make_system(student_scheduler=step_lr, generator_scheduler=step_lr)
    fit(system, tmp_path, epochs=2)
    opt_s, opt_g = system.optimizers()
    assert opt_s.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)
    assert opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


def test_checkpoints_leave_the_teacher_out_and_loading_restores_it(tmp_path, make_system, fit):
    system = make_system()
    trainer = fit(system, tmp_path, epochs=1)
    path = tmp_path / "x.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert not any(k.startswith("teacher.") for k in state)
    assert any(k.startswith("student.") for k in state)

    restored = make_system()  # its teacher is rebuilt from the same weights, as a task does
    restored.teacher.load_state_dict(system.teacher.state_dict())
    checkpoint = torch.load(path, weights_only=False)
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])  # strict: every key is there again
    assert same(snapshot(restored.student), snapshot(system.student))
    assert same(snapshot(restored.teacher), snapshot(system.teacher))


def test_checkpoint_teacher_keeps_it(tmp_path, make_system, fit):
    system = make_system(checkpoint_teacher=True)
    trainer = fit(system, tmp_path, epochs=1)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    state = torch.load(tmp_path / "x.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("teacher.") for k in state)


def test_wrong_number_of_noise_batches_is_refused(make_system, make_datamodule):
    system = make_system()
    datamodule = make_datamodule()
    datamodule.student_steps = K + 1
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=f"expected {K + 1} noise batches"):
        trainer.fit(system, datamodule=datamodule)


def test_student_steps_below_one_are_refused_naming_the_part():
    learning = partial(StudentSteps, steps=0)
    with pytest.raises(ConfigError, match=r"^learning\.steps: must be an integer, at least 1, got 0$") as err:
        DFAD(LeNet5(), lenet5_half(), GeneratorA(16, 1, 32, 8), MulticlassAccuracy(10), "acc", learning=learning)
    assert err.value.under("system").key == "system.learning.steps"  # the key a config user changes


def test_channels_last_stores_the_networks_channels_last_and_still_trains(tmp_path, make_system, fit):
    system = make_system(channels_last=True)
    before = snapshot(system.generator)
    fit(system, tmp_path, epochs=1)
    conv = system.generator.block1[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert not same(snapshot(system.generator), before)


def test_hydra_partials_become_plain_partials_of_the_same_function(make_system):
    # Hydra's partials re-check its target policy on every call; the system keeps a plain one.
    from hydra.utils import instantiate

    from dfad_lightning import losses

    kl = instantiate({"_target_": "dfad_lightning.losses.kl", "_partial_": True, "temperature": 4.0})
    negative = instantiate({"_target_": "dfad_lightning.losses.negative", "_partial_": True})
    assert type(kl) is not partial  # what this guards against: Hydra's own subclass
    system = make_system(discrepancy=kl, objective={"adversarial": negative})
    assert type(system._discrepancy) is partial and type(system.objective.adversarial) is partial
    assert system._discrepancy.func is losses.kl and system._discrepancy.keywords == {"temperature": 4.0}
    student_out, teacher_out = torch.randn(4, 10), torch.randn(4, 10)
    assert torch.equal(system.discrepancy(student_out, teacher_out), kl(student_out, teacher_out))
    plain = make_system(discrepancy=losses.mae)
    assert plain._discrepancy is losses.mae
