"""Teachers: ``task=teacher`` trains one; a distillation run loads one (or, where allowed, trains and caches one)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dfad_lightning.errors import ConfigError, RunInterrupted
from dfad_lightning.files import save_atomic, write_json_atomic
from dfad_lightning.tasks.build import build_callbacks, build_network, build_supervised, build_trainer
from dfad_lightning.tasks.outputs import RESULTS, fit_resumable, prepare_output_dir, resolve_ckpt_path
from dfad_lightning.weights import load_weights

log = logging.getLogger(__name__)

TEACHER_FILE = "teacher.pt"
# The longest teacher training a distillation starts by itself (dataset.auto_teacher); a longer one
# is for task=teacher, on a machine that runs it in reasonable time.
AUTO_TEACHER_LIMIT_S = 20 * 60
TIMED_SAMPLES = 8  # the samples of the one training step timed to estimate a teacher's training


def fit_teacher(
    cfg: DictConfig, out: Path, callbacks: list[Callback], ckpt_path: Path | None = None, **trainer_overrides: Any
) -> tuple[nn.Module, float]:
    """Train ``teacher.net`` on the dataset's training split with the ``teacher.training`` recipe.

    Returns:
        The trained network and its score on the evaluation split.
    """
    recipe = cfg.teacher.training
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    net = build_network(cfg.teacher.net, "teacher.net")
    system, datamodule = build_supervised(cfg, net)
    trainer = build_trainer(cfg, out, max_epochs=recipe.epochs, callbacks=callbacks, **trainer_overrides)
    fit_resumable(trainer, system, datamodule, ckpt_path, out)
    return net, system.score


def train_teacher(cfg: DictConfig) -> dict[str, Any]:
    """``task=teacher``: train the configured teacher and write ``teacher.pt`` and ``results.json``."""
    start = time.perf_counter()
    ckpt_path = resolve_ckpt_path(cfg, Path(cfg.paths.output_dir).resolve(), ("net",))  # reads only
    out = prepare_output_dir(cfg)
    net, score = fit_teacher(cfg, out, build_callbacks(cfg, ["checkpoint"]), ckpt_path)
    results = {
        "task": "teacher",
        "dataset": cfg.dataset.name,
        "metric": cfg.dataset.metric_name,
        "teacher": round(score, 6),
        "checkpoint": str(out / TEACHER_FILE),
        "epochs": cfg.teacher.training.epochs,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "output_dir": str(out),
        "objective": round(score, 6),
    }
    save_atomic(net.state_dict(), out / TEACHER_FILE)
    write_json_atomic(results, out / RESULTS)
    print(
        f"\nTeacher {cfg.dataset.metric_name} on the {cfg.dataset.name} evaluation split: {score:.4f}"
        f"\nWall time {results['wall_time_s']:.1f} s. Weights: {out / TEACHER_FILE}"
        f"\nDistil it with: python train.py {teacher_command_args(cfg)} teacher.checkpoint={out / TEACHER_FILE}"
    )
    return results


def teacher_fingerprint(cfg: DictConfig) -> str:
    """A short hash of everything that determines a trained teacher: network, recipe, data."""
    spec = {
        key: OmegaConf.to_container(node, resolve=True)
        for key, node in (("net", cfg.teacher.net), ("training", cfg.teacher.training), ("data", cfg.dataset.train))
    }
    spec["normalization"] = [list(cfg.teacher.mean), list(cfg.teacher.std)]
    spec["training_mode"] = "one thread, deterministic"  # caches trained otherwise depended on the machine
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cached_teacher(cfg: DictConfig) -> Path:
    """Return the cached teacher for this config, training it first if the cache lacks it.

    Only datasets that set ``dataset.auto_teacher`` (the embedded digits) train a teacher on
    their own: it takes seconds there. The cache key covers the network, the recipe and the
    data, so a changed config never reuses a stale teacher.
    """
    path = Path(cfg.paths.cache_dir).expanduser() / "teachers" / f"{cfg.dataset.name}-{teacher_fingerprint(cfg)}.pt"
    if path.exists():
        log.info("Using the cached teacher %s", path)
        return path
    with torch_threads(1):
        seconds = training_seconds(cfg)
    if seconds > AUTO_TEACHER_LIMIT_S:
        raise ConfigError(
            "teacher.checkpoint",
            f"is not set, and training this teacher here first would take about {seconds / 3600:.1f} hours "
            f"({cfg.teacher.training.epochs} epochs, estimated from one timed step); train it where that is fast, "
            f"`python train.py task=teacher {teacher_command_args(cfg)} trainer=gpu`, and pass the {TEACHER_FILE} "
            "it writes as teacher.checkpoint=PATH",
        )
    log.info(
        "No teacher checkpoint set: training the %s teacher first, about %.0f s (cached at %s)",
        cfg.dataset.name,
        seconds,
        path,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a read-only checkout, or a path through a file
        raise ConfigError(
            "paths.cache_dir",
            f"cannot create {path.parent} ({err.strerror}); set it (or DFAD_CACHE_DIR) to a writable folder",
        ) from None
    # One thread and deterministic kernels: the same teacher on every machine, whatever its cores
    # (with several threads, reductions split differently and the teacher, and every run on it,
    # changed with the machine). It is small: seconds either way.
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with torch_threads(1), tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            net, score = fit_teacher(
                cfg, Path(tmp), callbacks=[], logger=False, enable_checkpointing=False, deterministic=True
            )
    except RunInterrupted:  # its folder is temporary and keeps no checkpoint: nothing to resume
        raise RunInterrupted(
            f"stopped by a signal while training the {cfg.dataset.name} teacher to cache (nothing was saved); "
            "run the same command again to start over"
        ) from None
    finally:  # the distillation after it runs as its own config says
        torch.use_deterministic_algorithms(deterministic)
    log.info("Teacher trained: %s %.4f on the evaluation split", cfg.dataset.metric_name, score)
    save_atomic(net.state_dict(), path)
    return path


def training_seconds(cfg: DictConfig) -> float:
    """About how long ``teacher.training`` would take on this machine, from one timed step.

    One forward and backward pass of the teacher on the first ``TIMED_SAMPLES`` images of the
    training split is timed (after one untimed pass) and scaled to the recipe's epochs over the
    split. It is a lower bound: data loading and evaluation are left out. A teacher that cannot
    take those images gets 0 here, and the training that follows says why.
    """
    net = build_network(cfg.teacher.net, "teacher.net")
    train = instantiate(cfg.dataset.train)()
    x = torch.stack([train[i][0] for i in range(min(TIMED_SAMPLES, len(train)))])
    timings = []
    try:
        for _ in range(2):
            start = time.perf_counter()
            net(x).float().square().mean().backward()
            timings.append(time.perf_counter() - start)
    except RuntimeError:
        return 0.0
    return timings[-1] / len(x) * len(train) * int(cfg.teacher.training.epochs)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with ``threads`` CPU threads, then restore the number before it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def teacher_command_args(cfg: DictConfig) -> str:
    """The overrides of this run that decide its teacher and its data.

    The dataset (with every ``dataset.*`` value given, such as IDX file paths), the teacher's
    network and normalisation, the data root and the experiment.
    """
    args = [f"dataset={cfg.dataset.name}"]
    with contextlib.suppress(ValueError):  # outside a Hydra run there are no overrides to read
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            wanted = key in ("teacher", "paths.data_dir", "experiment") or key.startswith(("dataset.", "teacher."))
            if wanted and not key.startswith(("teacher.checkpoint", "teacher.training")):
                args.append(override)
    return " ".join(args)


def load_teacher(cfg: DictConfig) -> tuple[nn.Module, Path]:
    """Build the teacher network and load its weights.

    Raises:
        ConfigError: No checkpoint is set (and the dataset cannot train its own teacher), or the
            checkpoint does not fit the network.
    """
    teacher = build_network(cfg.teacher.net, "teacher.net")
    if cfg.teacher.checkpoint is not None:
        path = Path(str(cfg.teacher.checkpoint))
    elif cfg.dataset.get("auto_teacher", False):
        path = cached_teacher(cfg)
    else:
        raise ConfigError(
            "teacher.checkpoint",
            f"no teacher checkpoint is set for dataset={cfg.dataset.name}. Train one with "
            f"`python train.py task=teacher {teacher_command_args(cfg)}`, then pass the {TEACHER_FILE} it "
            f"writes as teacher.checkpoint=PATH",
        )
    load_weights(teacher, path, "teacher.checkpoint", "teacher")
    return teacher, path
