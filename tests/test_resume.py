"""A run killed at any point resumes from its last checkpoint and ends exactly where a straight run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

pytestmark = pytest.mark.slow  # real processes, killed and resumed

# 3 epochs of 4 iterations, a checkpoint after every iteration, LR schedules stepped per epoch,
# deterministic CPU kernels, and every stabiliser that carries state: the student's moving average
# (then the student a run delivers, in student.pt), the replay memory, and a generator warm-up
# over the first WARMUP iterations (one optimizer step each; then 5 student steps of 2 minibatches
# + 1 generator step).
WARMUP = 3
STEP_LR = "{_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
RUN = [
    *TINY,
    "data.iterations_per_epoch=4",
    "trainer.max_epochs=3",
    "callbacks.checkpoint.every_n_iterations=1",
    "trainer.deterministic=true",
    "schedule=constant",  # replaced by the step schedules below
    f"system.student_scheduler={STEP_LR}",
    f"system.generator_scheduler={STEP_LR}",
    "system.average.decay=0.9",
    "system.learning.replay_size=40",
    "system.objective.balance=1",
    f"system.objective.warmup={WARMUP}",
    "system.learning.minibatches=2",
    "system.inputs.input_affine=true",
]
STEPS_PER_ITERATION = 5 * 2 + 1


def train(out: Path, cache_dir: Path, *extra: str, wait: bool = True) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DFAD_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", f"hydra.run.dir={out}", *RUN, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if wait:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    return proc


def progress(checkpoint: Path) -> tuple[int, bool]:
    """Iterations recorded in a checkpoint, and whether it was taken after the epoch's evaluation."""
    try:
        state = torch.load(checkpoint, weights_only=True)
    except Exception:  # not written yet
        return 0, False
    evaluations = state["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["total"]["completed"]
    steps = int(state["global_step"])
    iterations = min(steps, WARMUP) + max(0, steps - WARMUP) // STEPS_PER_ITERATION
    return iterations, evaluations > 0 and iterations % 4 == 0 and state["epoch"] == iterations // 4 - 1


def iterations_in(checkpoint: Path) -> int:
    return progress(checkpoint)[0]


def wait_for(proc: subprocess.Popen[bytes], checkpoint: Path, iterations: int, after_evaluation: bool = False) -> None:
    deadline = time.monotonic() + 240
    while True:
        done, evaluated = progress(checkpoint)
        if done > iterations or (done == iterations and evaluated >= after_evaluation):
            return
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def student(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "student.pt", weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("straight") / "run"
    train(out, cache_dir)
    return out


def assert_same_student(a: Path, b: Path) -> None:
    sa, sb = student(a), student(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "the resumed run diverged from the straight one"
    # The whole state too: the student itself, the generator, the average and the replay memory.
    ca, cb = (torch.load(p / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for p in (a, b))
    assert ca.keys() == cb.keys() and "learning.memory.samples" in ca and "average.model.n_averaged" in ca
    assert all(torch.equal(ca[k], cb[k]) for k in ca if isinstance(ca[k], torch.Tensor))
    assert ca["learning.memory._extra_state"] == cb["learning.memory._extra_state"]


@pytest.mark.parametrize(
    ("kill_after", "after_evaluation"),
    # In the warm-up, and the last iteration of an epoch after its evaluation (the SIGTERM/SIGINT
    # tests below stop mid-epoch after the warm-up, through the save-on-signal path).
    [(1, False), (8, True)],
)
def test_sigkill_then_resume_matches_the_straight_run_bitwise(
    straight, tmp_path, cache_dir, kill_after, after_evaluation
):
    out = tmp_path / "killed"
    proc = train(out, cache_dir, wait=False)
    wait_for(proc, out / "checkpoints" / "last.ckpt", kill_after, after_evaluation)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    train(out, cache_dir, "ckpt_path=last")
    assert_same_student(straight, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_then_stop_and_the_run_resumes_exactly(straight, tmp_path, cache_dir, sig):
    out = tmp_path / "stopped"
    proc = train(out, cache_dir, wait=False)
    wait_for(proc, out / "checkpoints" / "last.ckpt", 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert "Interrupted: stopped by a signal" in err.decode() and "ckpt_path=last" in err.decode()
    assert iterations_in(out / "checkpoints" / "last.ckpt") < 12
    train(out, cache_dir, "ckpt_path=last")
    assert_same_student(straight, out)
