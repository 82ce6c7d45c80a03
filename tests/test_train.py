"""End to end through the function ``train.py`` calls, and through ``train.py`` itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from dfad_lightning.errors import ConfigError, RunInterrupted
from dfad_lightning.networks import lenet5_half
from dfad_lightning.tasks import run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    from conftest import compose_config

    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = compose_config(TINY, out, cache_dir)
    return run(cfg), out


def test_results_json_has_the_run_summary(tiny_run):
    results, out = tiny_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    assert on_disk["task"] == "distill" and on_disk["dataset"] == "digits" and on_disk["metric"] == "acc"
    assert 0 < on_disk["teacher"] <= 1
    assert set(on_disk["student"]) >= {"final", "best"}
    assert on_disk["student"]["best"] >= on_disk["student"]["final"]
    assert on_disk["ratio"] == pytest.approx(on_disk["student"]["final"] / on_disk["teacher"], abs=1e-5)
    assert on_disk["iterations"] == 6  # 2 epochs x 3 iterations
    assert on_disk["wall_time_s"] > 0


def test_run_writes_weights_checkpoint_pictures_and_metrics(tiny_run):
    _, out = tiny_run
    student = lenet5_half(1, 10)  # a plain state dict: loadable without this package
    student.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    header = (out / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/acc", "val/teacher_acc", "train/loss_student", "train/loss_generator"} <= set(header)
    assert (out / ".hydra" / "config.yaml").is_file()


def test_a_finished_run_is_never_overwritten(tiny_run, make_cfg):
    _, out = tiny_run
    before = (out / "results.json").read_bytes()
    with pytest.raises(ConfigError, match=r"hydra\.run\.dir.*already holds a finished run"):
        run(make_cfg(output_dir=out))
    assert (out / "results.json").read_bytes() == before


def test_an_unfinished_run_is_reused_only_to_resume(make_cfg, tmp_path):
    out = tmp_path / "killed"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match="ckpt_path=last"):
        run(make_cfg(output_dir=out))


def test_teacher_task_writes_a_checkpoint_that_distillation_loads(make_cfg, tmp_path):
    teacher = run(make_cfg("task=teacher", output_dir=tmp_path / "teacher"))
    assert teacher["task"] == "teacher" and teacher["teacher"] > 0.5
    cfg = make_cfg(
        f"teacher.checkpoint={teacher['checkpoint']}", "dataset.auto_teacher=false", output_dir=tmp_path / "student"
    )
    results = run(cfg)
    assert results["teacher_checkpoint"] == str(Path(teacher["checkpoint"]).resolve())
    assert results["teacher"] == pytest.approx(teacher["teacher"])  # same weights, same split


def test_the_embedded_teacher_is_the_same_whatever_the_thread_count(tmp_path):
    from conftest import compose_config

    from dfad_lightning.tasks.teacher import cached_teacher

    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (2, 1):  # each into its own cache; 3 epochs are enough for 2 threads to differ
            torch.set_num_threads(threads)
            overrides = [*TINY, "teacher.training.epochs=3"]
            cfg = compose_config(overrides, tmp_path / f"run{threads}", tmp_path / f"{threads}")
            weights.append(torch.load(cached_teacher(cfg), weights_only=True))
            assert torch.get_num_threads() == threads  # the caller's settings are left as they were
            assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
    assert len(list(tmp_path.glob("*/teachers/*.pt"))) == 2  # trained twice, not read back from a cache
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_stop_while_the_embedded_teacher_trains_says_to_start_over(tmp_path, monkeypatch):
    """Its training folder is temporary and keeps no checkpoint: "Resume with ... ckpt_path=last" would fail."""
    from conftest import compose_config

    from dfad_lightning.tasks import teacher

    def stopped(cfg, out, **kwargs):
        raise RunInterrupted(f"stopped by a signal after saving {out}/checkpoints/last.ckpt. Resume with: ...")

    monkeypatch.setattr(teacher, "fit_teacher", stopped)
    cfg = compose_config(TINY, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(RunInterrupted, match=r"^stopped by a signal while training the digits teacher .*start over$"):
        teacher.cached_teacher(cfg)
    assert list((tmp_path / "cache" / "teachers").iterdir()) == []  # no teacher cached, no folder left behind


@pytest.mark.parametrize("task", ["teacher", "distill"])  # distill: the embedded default trains its teacher first
def test_a_teacher_batch_larger_than_its_data_is_refused_not_left_untrained(make_cfg, task):
    """It used to save an untrained teacher (scored nan) and, for the embedded default, cache it."""
    from dfad_lightning.tasks.teacher import teacher_fingerprint

    cfg = make_cfg(f"task={task}", "teacher.training.batch_size=5000")
    with pytest.raises(ConfigError, match=r"^teacher\.training\.batch_size: is 5000, but the training split holds"):
        run(cfg)
    cached = Path(cfg.paths.cache_dir) / "teachers" / f"digits-{teacher_fingerprint(cfg)}.pt"
    assert not cached.exists() and not list(Path(cfg.paths.output_dir).rglob("*.pt"))


def test_a_cache_dir_that_cannot_be_made_names_paths_cache_dir(tmp_path):
    from conftest import compose_config

    from dfad_lightning.tasks.teacher import cached_teacher

    (tmp_path / "a-file").write_text("")
    cfg = compose_config(TINY, tmp_path / "run", tmp_path / "a-file" / "cache")  # a path through a file
    with pytest.raises(ConfigError, match=r"^paths\.cache_dir: cannot create .*a-file/cache/teachers .*writable"):
        cached_teacher(cfg)


def test_missing_teacher_says_which_key_to_set_and_how_to_train_one(make_cfg):
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint.*python train\.py task=teacher dataset=digits"):
        run(make_cfg("dataset.auto_teacher=false"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.batch_size=1", "data.batch_size"),
        ("system.learning.steps=0", "system.learning.steps"),
        ("system.student_optimizer.lr=-0.1", "system.student_optimizer.lr"),
        ("system.generator_optimizer.lr=-1", "system.generator_optimizer.lr"),
        ("task=nonsense", "task"),
        ("system.learning.replay_size=-5", "system.learning.replay_size"),
        ("system.objective.balance=-1", "system.objective.balance"),
        ("system.objective.bn_prior=-0.5", "system.objective.bn_prior"),
    ],
)
def test_impossible_settings_fail_before_training_naming_the_key(make_cfg, override, key):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(override))
    assert str(err.value).startswith(f"{key}:")


@pytest.mark.slow
def test_train_py_puts_everything_in_hydra_run_dir(tmp_path, cache_dir):
    out = tmp_path / "cli"
    env = {"DFAD_CACHE_DIR": str(cache_dir), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={out}", *TINY],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert {"results.json", "student.pt", "csv", "checkpoints", "samples", ".hydra"} <= {p.name for p in out.iterdir()}
    # Lightning's advertisement and its own deprecation warning are not shown to users.
    assert "Tip:" not in done.stdout + done.stderr and "LeafSpec" not in done.stdout + done.stderr
    assert "DFAD, robust recipe on digits" in done.stdout  # the report names the method and recipe that ran


def test_the_teacher_hint_repeats_every_dataset_override(make_cfg):
    from dfad_lightning.tasks.teacher import teacher_command_args

    files = [f"dataset.files.{k}=/data/{k}.gz" for k in ("train_images", "train_labels", "test_images", "test_labels")]
    cfg = make_cfg("dataset=idx", "dataset.num_classes=10", *files, "teacher.checkpoint=/t.pt", "teacher.mean=[0.2]")
    args = teacher_command_args(cfg).split()
    assert args[0] == "dataset=idx" and "dataset.num_classes=10" in args and set(files) <= set(args)
    assert "teacher.mean=[0.2]" in args  # the teacher's normalisation decides its training too
    assert not any(a.startswith(("data.", "trainer.", "teacher.checkpoint", "teacher.training")) for a in args)


def test_eval_task_scores_the_teacher_and_a_student(tiny_run, make_cfg, tmp_path):
    trained, out = tiny_run
    results = run(make_cfg("task=eval", f"student_checkpoint={out / 'student.pt'}", output_dir=tmp_path / "eval"))
    assert results["task"] == "eval" and results["samples"] == 360
    assert results["teacher"] == pytest.approx(trained["teacher"])
    assert results["student"] == pytest.approx(trained["student"]["final"])
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == results


def test_eval_and_export_take_the_delivered_student_from_a_runs_lightning_checkpoints(tiny_run, make_cfg, tmp_path):
    """The moving average (what student.pt holds), not the raw student beside it; it used to find no weights."""
    from dfad_lightning.systems.dfad import FINAL_STUDENT_PREFIXES
    from dfad_lightning.weights import load_weights

    trained, out = tiny_run
    student = lenet5_half(1, 10)
    load_weights(student, out / "checkpoints" / "last.ckpt", "student_checkpoint", "model", FINAL_STUDENT_PREFIXES)
    delivered = torch.load(out / "student.pt", weights_only=True)
    assert all(torch.equal(v, delivered[k]) for k, v in student.state_dict().items())
    selected = trained["datafree"]
    scored = run(make_cfg("task=eval", f"student_checkpoint={selected['selected_checkpoint']}", output_dir=tmp_path))
    assert scored["student"] == pytest.approx(selected["selected_real_score"], abs=1e-6)  # eval rounds to 6 places


def test_unset_mandatory_values_are_named(make_cfg):
    with pytest.raises(ConfigError, match=r"^dataset\.root: must be set"):
        run(make_cfg("dataset=image_folder"))


def test_tensorboard_logs_scores_and_the_sample_pictures(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(make_cfg("logger=tensorboard"))
    (events,) = (tmp_path / "run" / "tensorboard").glob("version_0/events.out.tfevents.*")
    log = EventAccumulator(str(events), size_guidance={"images": 0})
    log.Reload()
    assert "samples" in log.Tags()["images"] and "val/acc" in log.Tags()["scalars"]


@pytest.mark.slow
def test_wandb_logs_offline_with_the_sample_pictures(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(make_cfg("logger=wandb"))
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list((offline / "files" / "media" / "images").glob("samples_*.png"))


def test_the_model_summary_lists_the_networks_without_flops_it_cannot_count(make_cfg, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="dfad_lightning.callbacks.summary"):
        run(make_cfg())
    (summary,) = [r.getMessage() for r in caplog.records if r.name == "dfad_lightning.callbacks.summary"]
    assert "student" in summary and "generator" in summary and "Total params" in summary
    assert "FLOPs" not in summary
    with caplog.at_level(logging.INFO, logger="dfad_lightning.callbacks.summary"):
        caplog.clear()
        run(make_cfg("+trainer.enable_model_summary=false", output_dir=make_cfg().paths.output_dir + "2"))
    assert not [r for r in caplog.records if r.name == "dfad_lightning.callbacks.summary"]


def test_a_teacher_too_large_to_train_here_is_refused_with_the_time_and_the_way_out(make_cfg, tmp_path):
    # The embedded digits train their own teacher; a ResNet-34-8x's 200 epochs would take hours on a CPU.
    cfg = make_cfg("teacher=resnet34_8x", "teacher.training.epochs=200", output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^teacher\.checkpoint: is not set, and training this teacher here") as err:
        run(cfg)
    message = str(err.value)
    assert "hours" in message and "task=teacher dataset=digits teacher=resnet34_8x" in message
    assert not list((tmp_path / "run").glob("*.pt")) and not list(Path(cfg.paths.cache_dir).glob("teachers/*34*"))


def test_the_estimate_of_a_teachers_training_is_one_steps_time_per_sample_times_samples_and_epochs(
    make_cfg, monkeypatch
):
    import itertools

    from dfad_lightning.tasks import teacher

    ticks = itertools.count()  # every timed step takes exactly 1 s
    monkeypatch.setattr(teacher.time, "perf_counter", lambda: float(next(ticks)))
    cfg = make_cfg("teacher.training.epochs=4")
    assert teacher.training_seconds(cfg) == 1 / teacher.TIMED_SAMPLES * 1437 * 4  # the digits' 1,437 training images


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "key"), [("hydra.run.dir", "hydra.run.dir"), ("-m hydra.sweep.dir", "hydra.sweep.dir")]
)
def test_a_run_directory_that_cannot_be_made_is_one_line_naming_the_key(tmp_path, override, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = [*override.split()[:-1], f"{override.split()[-1]}={blocker / 'run'}"]
    done = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        == f"Error: {key}: cannot create {blocker / 'run'} (Not a directory); set it to a folder that can be written"
    )


def test_the_run_says_early_how_long_each_phase_will_take(tmp_path, make_system, fit, caplog):
    import logging

    from dfad_lightning.callbacks import ExpectedTime

    system = make_system(objective={"warmup": 5, "balance": 1.0})
    with caplog.at_level(logging.INFO, logger="dfad_lightning.callbacks.eta"):
        fit(system, tmp_path, epochs=2, callbacks=[ExpectedTime(timed=2)])  # 8 iterations, the first 5 the warm-up
    lines = [r.getMessage() for r in caplog.records if r.name == "dfad_lightning.callbacks.eta"]
    assert len(lines) == 2 and lines[0].startswith("Expected: the warm-up ends in about ")
    assert "(2 more iterations of " in lines[0]  # said after 3 of the warm-up's 5
    assert lines[1].startswith("Expected: the run ends in about ") and "(0 more iterations of " in lines[1]
