"""Several processes (DDP over gloo on the CPU), and mixed precision on the CPU (bf16)."""

from __future__ import annotations

import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import ROOT

from dfad_lightning.errors import ConfigError
from dfad_lightning.tasks import run

# Two processes on the CPU with the default trainer: only the number of devices is given, and
# the strategy that works with the two-optimizer loop is chosen for it. The first two iterations
# are a generator warm-up (generator steps alone, with the student's gradients absent).
DDP = [
    "trainer.devices=2",
    "data.batch_size=16",
    "data.iterations_per_epoch=3",
    "trainer.max_epochs=2",
    "generator.ngf=8",
    "trainer.enable_progress_bar=false",
    "system.objective.warmup=2",
]


def ddp_run(tmp_path, *extra):
    """``train.py`` with ``extra`` in two processes; each writes its noise and student (RankDump)."""
    dump = tmp_path / "ranks"
    cmd = [
        sys.executable,
        "train.py",
        *DDP,
        *extra,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "+callbacks.dump._target_=helpers.rank_dump.RankDump",
        f"+callbacks.dump.dirpath={dump}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize(
    "sync_batchnorm", [False, pytest.param(True, marks=pytest.mark.gpu)]
)  # PyTorch's SyncBatchNorm needs CUDA
@pytest.mark.slow
def test_two_processes_draw_different_noise_and_end_with_the_same_weights(tmp_path, sync_batchnorm):
    extra = ["trainer.accelerator=gpu"] if sync_batchnorm else []
    ranks = ddp_run(tmp_path, f"trainer.sync_batchnorm={str(sync_batchnorm).lower()}", *extra)
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["noise"].shape == ranks[1]["noise"].shape == (6, 16, 256)  # k + 1 draws of the per-process batch
    assert not torch.equal(ranks[0]["noise"], ranks[1]["noise"])  # each process draws its own noise
    for name, weight in ranks[0]["student"].items():
        other = ranks[1]["student"][name]
        if name.endswith(("running_mean", "running_var")) and not sync_batchnorm:
            continue  # BatchNorm statistics are per process unless synchronised
        assert torch.equal(weight, other), name  # gradients were averaged: one student


def test_a_plain_ddp_strategy_is_refused_and_the_automatic_one_is_chosen(make_cfg, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    from dfad_lightning.tasks.build import build_trainer

    with pytest.raises(ConfigError, match=r"^trainer\.strategy: ddp fails with DFAD's two optimizers"):
        build_trainer(make_cfg("trainer.devices=2", "trainer.strategy=ddp"), tmp_path)
    trainer = build_trainer(make_cfg("trainer.devices=3"), tmp_path)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy._ddp_kwargs == {
        "find_unused_parameters": True
    }
    assert not isinstance(build_trainer(make_cfg(), tmp_path).strategy, DDPStrategy)  # one device: no DDP


def test_sync_batchnorm_on_the_cpu_is_refused_naming_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"^trainer\.sync_batchnorm: SyncBatchNorm works only on CUDA"):
        run(make_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"))


def test_bf16_mixed_precision_runs_the_loop_under_lightnings_autocast_on_the_cpu(
    tmp_path, make_system, make_datamodule
):
    dtypes = []

    def recording_mae(student_out, teacher_out):
        dtypes.append((student_out.dtype, teacher_out.dtype))
        return torch.nn.functional.l1_loss(student_out.float(), teacher_out.float())

    system = make_system(discrepancy=recording_mae)
    before = [p.detach().clone() for p in system.student.parameters()]
    trainer = L.Trainer(
        max_epochs=1, precision="bf16-mixed", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(system, datamodule=make_datamodule(iterations=2))
    # The student and generator steps ran under the precision plugin's autocast, not a hand-written one.
    assert dtypes and all(d == (torch.bfloat16, torch.bfloat16) for d in dtypes)
    assert all(p.dtype == torch.float32 for p in system.student.parameters())  # weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, system.student.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in system.generator.parameters())
