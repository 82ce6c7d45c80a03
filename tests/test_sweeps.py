"""Sweeps: one directory per job, failures isolated, cluster launchers and the Optuna search."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CONF, ROOT
from hydra import compose, initialize_config_dir

TINY = ["data.iterations_per_epoch=2", "trainer.max_epochs=1", "generator.ngf=8", "trainer.enable_progress_bar=false"]


def multirun(tmp_path, cache_dir, *overrides):
    cmd = [sys.executable, "train.py", "-m", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}",
           f"paths.cache_dir={cache_dir}", *overrides]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def results(tmp_path, job):
    return json.loads((tmp_path / "sweep" / str(job) / "results.json").read_text())


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_others_and_each_job_has_its_directory(tmp_path, cache_dir):
    done = multirun(tmp_path, cache_dir, "data.batch_size=1,16")
    assert done.returncode != 0 and "data.batch_size: must be an integer, at least 2" in done.stderr  # job 0 fails...
    assert not (tmp_path / "sweep" / "0" / "results.json").exists()
    assert results(tmp_path, 1)["task"] == "distill"  # ...and job 1 still runs, in its own directory


@pytest.mark.slow
def test_the_submitit_local_launcher_runs_a_sweep_in_separate_processes(tmp_path, cache_dir):
    done = multirun(tmp_path, cache_dir, "hydra/launcher=submitit_local", "seed=0,1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [results(tmp_path, job)["seed"] for job in (0, 1)] == [0, 1]


def test_the_slurm_launcher_config_composes_for_submitit():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min > 0


@pytest.mark.slow
@pytest.mark.parametrize("trials", [2])
def test_the_optuna_search_maximises_the_final_student_metric(tmp_path, cache_dir, trials):
    done = multirun(tmp_path, cache_dir, "hydra/sweeper=search", f"hydra.sweeper.n_trials={trials}")
    assert done.returncode == 0, done.stderr[-2000:]
    found = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    best = max(results(tmp_path, job)["student"]["final"] for job in range(trials))
    assert "system.learning.steps" in found and f"best_value: {best}" in found
