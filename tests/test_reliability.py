"""Numerical faults, bad input, checkpoint hygiene, and the deployable student."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil

import pytest
import torch
from conftest import TINY, same, snapshot
from hydra.errors import ConfigCompositionException

from dfad_lightning import tasks
from dfad_lightning.callbacks import LastCheckpoint
from dfad_lightning.errors import ConfigError, NonFiniteLossError
from dfad_lightning.metrics import check_class_labels
from dfad_lightning.networks import LeNet5, cifar_resnet
from dfad_lightning.systems import DFAD
from dfad_lightning.tasks import run


class NaNAfter:
    """A discrepancy that turns NaN from its n-th call on (a fault injected into the loop)."""

    def __init__(self, n: int) -> None:
        self.calls, self.n = 0, n

    def __call__(self, s, t):
        self.calls += 1
        loss = torch.nn.functional.l1_loss(s, t)
        return loss * float("nan") if self.calls >= self.n else loss


@pytest.fixture
def fit_saving(fit):
    """Train ``system`` for ``epochs``, saving ``tmp_path/ckpt/last.ckpt`` after every iteration."""

    def saving(system, tmp_path, epochs=2):
        return fit(system, tmp_path, epochs, callbacks=[LastCheckpoint(tmp_path / "ckpt", every_n_iterations=1)])

    return saving


def test_a_nan_loss_stops_the_run_naming_the_iteration_and_the_last_good_checkpoint(tmp_path, make_system, fit_saving):
    # K = 3 student steps + 1 generator step = 4 discrepancy calls per iteration: call 10 is in iteration 3.
    system = make_system(discrepancy=NaNAfter(10))
    with pytest.raises(NonFiniteLossError) as err:
        fit_saving(system, tmp_path)
    message = str(err.value)
    assert "student loss (student step 2 of 3)" in message and "in iteration 3 " in message
    assert str(tmp_path / "ckpt" / "last.ckpt") in message
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 * 4  # the two good iterations, nothing after
    weights = {k: v for k, v in saved["state_dict"].items() if k.startswith(("student.", "generator."))}
    assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_with_student_reuse_the_nan_names_the_update_and_iterations_still_count(tmp_path, make_system, fit_saving):
    # K = 3 steps x 2 updates + 1 generator step = 7 discrepancy calls per iteration: call 18 is in
    # iteration 3, its 4th update: student step 2, update 2.
    system = make_system(discrepancy=NaNAfter(18), learning={"reuse": 2})
    with pytest.raises(NonFiniteLossError) as err:
        fit_saving(system, tmp_path)
    message = str(err.value)
    assert "student loss (student step 2 of 3, update 2 of 2)" in message and "in iteration 3 " in message
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 * 7 and system.steps_per_iteration == 7


def test_with_student_minibatches_the_nan_names_the_update(tmp_path, make_system, fit_saving):
    # K = 3 steps x 2 minibatches + 1 generator step = 7 discrepancy calls per iteration, as above.
    system = make_system(discrepancy=NaNAfter(18), learning={"minibatches": 2})
    with pytest.raises(
        NonFiniteLossError, match=r"student loss \(student step 2 of 3, update 2 of 2\) is nan in iteration 3 "
    ):
        fit_saving(system, tmp_path)


def test_skip_mode_skips_and_counts_nonfinite_steps(tmp_path, make_system, fit_saving):
    system = make_system(discrepancy=NaNAfter(10), nonfinite="skip")
    fit_saving(system, tmp_path, epochs=1)  # 4 iterations: from call 10 on, every step is skipped
    assert int(system.skipped_steps) == 16 - 9
    assert all(torch.isfinite(p).all() for p in system.student.parameters())


@pytest.mark.parametrize(
    ("overrides", "key", "text"),
    [
        (["dataset.image_size=[30,30]"], "generator", "multiples of 4"),
        (["dataset.image_size=[16,16]"], "teacher", "cannot take inputs of shape (1, 16, 16)"),
        (["trainer.precision=16-mixed"], "trainer.precision", "16-mixed"),
        (["callbacks.checkpoint.every_n_iterations=0"], "callbacks.checkpoint.every_n_iterations", "at least 1"),
    ],
)
def test_bad_input_fails_before_training_naming_the_key(make_cfg, overrides, key, text):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(*overrides))
    assert str(err.value).startswith(f"{key}") and text in str(err.value)


def test_class_labels_beyond_the_outputs_name_num_classes():
    logits = torch.zeros(3, 7)
    check_class_labels(logits, torch.tensor([0, 3, 6]))  # every label has an output
    check_class_labels(torch.zeros(2, 7, 4, 4), torch.full((2, 4, 4), 7))  # masks: void is the datasets' job
    for labels, bad in (([0, 7, 2], 7), ([0, -1, 2], -1)):
        with pytest.raises(ConfigError, match=rf"^dataset\.num_classes: is 7, but the data has the class label {bad}"):
            check_class_labels(logits, torch.tensor(labels))


def test_training_a_teacher_with_too_few_classes_names_num_classes(make_cfg):
    """It used to stop in the cross-entropy with ``IndexError: Target 9 is out of bounds``."""
    with pytest.raises(ConfigError, match=r"^dataset\.num_classes: is 7, but the data has the class label [789]"):
        run(make_cfg("task=teacher", "dataset.num_classes=7"))


def test_evaluating_on_labels_the_teacher_has_no_output_for_names_num_classes(make_cfg, tmp_path):
    """A 7-class teacher on 10-class data: torchmetrics would count the extra labels as misses silently."""
    teacher = tmp_path / "seven.pt"
    torch.save(LeNet5(1, 7).state_dict(), teacher)
    with pytest.raises(ConfigError, match=r"^dataset\.num_classes: is 7, but the data has the class label [789]"):
        run(make_cfg(f"teacher.checkpoint={teacher}", "dataset.num_classes=7"))


@pytest.mark.parametrize(
    ("task", "key", "value"),
    [
        ("distill", "data.batch_size", 16),
        ("teacher", "teacher.training.batch_size", 64),
        ("eval", "data.eval_batch_size", 256),
    ],
)
@pytest.mark.parametrize(
    "fault",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to..."),
    ],
)
def test_out_of_memory_names_the_batch_size_of_the_task(make_cfg, monkeypatch, task, key, value, fault):
    def runs_out(cfg):
        raise fault

    monkeypatch.setitem(tasks.TASKS, task, runs_out)
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(key)}: the run ran out of memory with it at {value} \(.*\): lower it"
    ):
        run(make_cfg(f"task={task}", "teacher.checkpoint=/t.pt"))


def test_other_runtime_errors_are_not_taken_for_memory(make_cfg, monkeypatch):
    def fails(cfg):
        raise RuntimeError("expected scalar type Float but found Half")

    monkeypatch.setitem(tasks.TASKS, "distill", fails)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        run(make_cfg())


@pytest.mark.parametrize("override", ["loss=nonsense", "dataset=nonsense", "model=nonsense"])
def test_unknown_option_names_are_hydras_errors_listing_the_options(make_cfg, override):
    with pytest.raises(ConfigCompositionException, match="Available options"):
        make_cfg(override)


def another_teacher(tmp_path) -> list[str]:
    other = tmp_path / "other-teacher.pt"
    torch.save(LeNet5(1, 10).state_dict(), other)
    return [f"teacher.checkpoint={other}"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (another_teacher, r"^teacher\.checkpoint: the checkpoint to resume was trained against"),
        (
            lambda _: ["system.inputs.input_affine=true"],
            r"^system\.inputs\.input_affine: the checkpoint to resume was trained without .*input_affine=false$",
        ),
    ],
    ids=["another teacher", "input_affine"],
)
def test_a_run_refuses_to_resume_with_another_teacher_or_input_affine(make_cfg, tmp_path, change, message):
    first = tmp_path / "first"
    results = run(make_cfg(output_dir=first))
    # A copy of the run without its results, as a killed run would leave it.
    killed = tmp_path / "killed"
    shutil.copytree(first / "checkpoints", killed / "checkpoints")
    with pytest.raises(ConfigError, match=message):
        run(make_cfg("ckpt_path=last", *change(tmp_path), output_dir=killed))
    checkpoint = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["dfad_teacher"]["path"] == results["teacher_checkpoint"]


@pytest.mark.parametrize(
    ("change", "detail"),
    [("generator.ngf=4", "size mismatch for generator"), ("recipe=paper", 'Unexpected key.*"learning.memory')],
)
def test_resuming_with_other_networks_or_options_names_the_options_of_the_first_start(
    make_cfg, tmp_path, change, detail
):
    """It used to end in torch's load_state_dict traceback."""
    first = tmp_path / "first"
    run(make_cfg("seed=3", output_dir=first))
    killed = tmp_path / "killed"  # as a killed run leaves it: its checkpoints and its record of the config
    for folder in ("checkpoints", ".hydra"):
        shutil.copytree(first / folder, killed / folder)
    message = rf"^ckpt_path: .*last\.ckpt was saved by a run with other networks or options \({detail}"
    with pytest.raises(ConfigError, match=message) as err:
        run(make_cfg("ckpt_path=last", change, output_dir=killed))
    assert str(err.value).endswith(": " + " ".join([*TINY, "seed=3"]))  # the overrides of the first start


def test_ckpt_path_auto_starts_fresh_then_resumes(make_cfg, tmp_path):
    out = tmp_path / "auto"
    results = run(make_cfg("ckpt_path=auto", output_dir=out))
    assert results["iterations"] == 6
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(make_cfg("ckpt_path=auto", output_dir=out))


def test_ckpt_path_last_without_a_checkpoint_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^ckpt_path: no checkpoint to resume"):
        run(make_cfg("ckpt_path=last"))


@pytest.fixture(scope="module")
def digits_student(tmp_path_factory, cache_dir):
    from conftest import TINY, compose_config

    out = tmp_path_factory.mktemp("student") / "run"
    run(compose_config(TINY, out, cache_dir))
    return out / "student.pt"


def tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        (lambda run, f: f.write_text("not a checkpoint"), "is not a readable PyTorch checkpoint"),
        (lambda run, f: shutil.copy(run / "student.pt", f), "is not a Lightning checkpoint"),
        (lambda run, f: f.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:5000]), "not a readable"),
        (
            lambda run, f: torch.save(
                {"state_dict": {"net.w": torch.zeros(1)}, "global_step": 3, "optimizer_states": [], "loops": {}}, f
            ),
            "is a checkpoint of another task: it has no weights for student, generator",
        ),
        (
            lambda run, f: torch.save({"state_dict": {"student.w": torch.zeros(1)}, "global_step": 3}, f),
            "holds weights only",
        ),
    ],
    ids=["text", "bare-weights", "truncated", "other-task", "weights-only"],
)
def test_resuming_from_a_bad_file_names_ckpt_path_and_changes_nothing(
    make_cfg, tmp_path, digits_student, make_file, message
):
    bad = tmp_path / "bad.ckpt"
    make_file(digits_student.parent, bad)
    killed = tmp_path / "killed"  # an unfinished run whose directory must survive the mistake
    shutil.copytree(digits_student.parent / "checkpoints", killed / "checkpoints")
    before = tree(killed)
    with pytest.raises(ConfigError, match=rf"^ckpt_path: {bad}.*{message}"):
        run(make_cfg(f"ckpt_path={bad}", output_dir=killed))
    assert tree(killed) == before


@pytest.mark.parametrize("setting", ["digits", "cifar"])
def test_export_writes_state_dict_torchscript_and_onnx_that_match_the_module(
    make_cfg, tmp_path, setting, digits_student, caplog
):
    caplog.set_level(logging.INFO)  # as Hydra's logging shows it to users
    if setting == "digits":
        checkpoint, overrides = digits_student, []
    else:  # a network with BatchNorm and option-A shortcuts, on 3x32x32 inputs
        checkpoint = tmp_path / "resnet20.pt"
        torch.save(cifar_resnet(20).state_dict(), checkpoint)
        overrides = ["dataset=cifar10", "model=cifar_resnet20"]
    results = run(make_cfg("task=export", f"student_checkpoint={checkpoint}", *overrides, output_dir=tmp_path / "x"))
    assert set(results["files"]) == {"state_dict", "exported_program", "torchscript", "onnx"}
    for difference in results["max_abs_difference"].values():
        assert math.isfinite(difference) and difference <= 1e-4
    assert json.loads((tmp_path / "x" / "results.json").read_text())["task"] == "export"
    assert not [r for r in caplog.records if r.name.startswith(("onnx_ir", "onnxscript"))]  # the exporter is quiet


def test_export_needs_a_student(make_cfg):
    with pytest.raises(ConfigError, match=r"^student_checkpoint: set it"):
        run(make_cfg("task=export"))


def test_export_of_a_student_of_another_architecture_names_model(make_cfg, tmp_path):
    checkpoint = tmp_path / "resnet20.pt"
    torch.save(cifar_resnet(20).state_dict(), checkpoint)
    with pytest.raises(ConfigError, match=r"^student_checkpoint: .*Set model= to the architecture .*conf/model/"):
        run(make_cfg("task=export", f"student_checkpoint={checkpoint}"))


def test_resume_picks_the_newest_of_last_and_slurm_requeue_checkpoints(tmp_path):
    import os

    from dfad_lightning.tasks.outputs import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # what Lightning writes on SLURM's requeue signal
    last.write_bytes(b"x")
    hpc.write_bytes(b"x")
    os.utime(last, (1, 1))
    assert latest_checkpoint(tmp_path) == hpc
    os.utime(hpc, (0, 0))
    assert latest_checkpoint(tmp_path) == last


def test_on_slurm_the_trainer_requeues_through_lightning(make_cfg, tmp_path, monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from dfad_lightning.tasks.build import build_trainer

    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "dfad",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODELIST": "node1",
        "SLURM_JOB_ID": "42",
    }.items():
        monkeypatch.setenv(key, value)
    trainer = build_trainer(make_cfg(), tmp_path)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue


class NaNPriorsAfter(DFAD):
    """The generator's priors turn NaN from their n-th call on (a fault in the warm-up)."""

    def __init__(self, *args, nan_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.nan_after = 0, nan_after

    def priors(self, teacher_out):
        self.calls += 1
        loss = super().priors(teacher_out)
        return loss * float("nan") if self.calls >= self.nan_after else loss


def test_a_nan_in_the_warmup_stops_the_run_too(tmp_path, make_system, fit_saving):
    system = make_system(cls=NaNPriorsAfter, nan_after=3, objective={"warmup": 4, "balance": 1.0})
    with pytest.raises(NonFiniteLossError, match=r"the generator loss \(warm-up\) is nan in iteration 3 "):
        fit_saving(system, tmp_path)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2  # the two good warm-up iterations, nothing after


def test_skip_mode_skips_nonfinite_warmup_steps(tmp_path, make_system, fit_saving):
    system = make_system(cls=NaNPriorsAfter, nan_after=2, nonfinite="skip", objective={"warmup": 3, "balance": 1.0})
    fit_saving(system, tmp_path, epochs=1)  # 4 iterations: 3 in the warm-up, the last two of them NaN
    # skipped: those two warm-up steps and the generator step of the one iteration after them
    assert int(system.skipped_steps) == 2 + 1
    assert all(torch.isfinite(p).all() for p in system.generator.parameters())


def test_a_checkpoint_written_before_the_parts_loads_and_a_newer_one_is_refused(tmp_path, make_system, fit):
    from dfad_lightning.systems.dfad import CHECKPOINT_FORMAT, FORMAT_1_NAMES

    options = {"learning": {"replay_size": 32}, "average": {"decay": 0.9}, "inputs": {"input_affine": True}}
    system = make_system(**options)
    trainer = fit(system, tmp_path, epochs=1)
    trainer.save_checkpoint(tmp_path / "now.ckpt")
    checkpoint = torch.load(tmp_path / "now.ckpt", weights_only=False)
    assert checkpoint["dfad_format"] == CHECKPOINT_FORMAT
    # The same checkpoint as format 1 wrote it: no format entry, the parts' state under their old names.
    old = {v: k for k, v in FORMAT_1_NAMES.items()}
    renamed = {}
    for key, value in checkpoint["state_dict"].items():
        new = next((n for n in old if key.startswith(n)), None)
        renamed[old[new] + key.removeprefix(new) if new else key] = value
    assert "memory.samples" in renamed and "student_ema.n_averaged" in renamed and "input_affine.scale" in renamed
    format_1 = {**checkpoint, "state_dict": renamed}
    del format_1["dfad_format"]
    restored = make_system(**options)
    restored.on_load_checkpoint(format_1)
    restored.load_state_dict(format_1["state_dict"])  # strict: every entry found its part
    assert same(snapshot(restored), snapshot(system))
    with pytest.raises(ConfigError, match=r"^ckpt_path: the checkpoint was written by a newer dfad-lightning"):
        make_system(**options).on_load_checkpoint({**checkpoint, "dfad_format": CHECKPOINT_FORMAT + 1})
