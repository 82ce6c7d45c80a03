"""Tasks: what ``train.py`` runs, selected by ``task=``; each returns its results as a dict."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dfad_lightning.errors import ConfigError, NonFiniteLossError, RunInterrupted
from dfad_lightning.tasks.distill import distill
from dfad_lightning.tasks.evaluate import evaluate
from dfad_lightning.tasks.export import export
from dfad_lightning.tasks.schema import check_types
from dfad_lightning.tasks.teacher import train_teacher

log = logging.getLogger(__name__)

# Exit statuses of train.py: a user error, a numerical fault, a stop by signal (128 + SIGTERM).
EXIT_CODES = {ConfigError: 2, NonFiniteLossError: 3, RunInterrupted: 143}
# The batch size that decides a task's memory, named when it runs out.
BATCH_KEYS = {"distill": "data.batch_size", "teacher": "teacher.training.batch_size", "eval": "data.eval_batch_size"}

TASKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "distill": distill,
    "teacher": train_teacher,
    "eval": evaluate,
    "export": export,
}


def unset_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """The keys still ``???`` in a config (interpolations are not resolved)."""
    keys = []
    for key in map(str, node):
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            keys.append(full)
        elif not OmegaConf.is_interpolation(node, key) and isinstance(child := node[key], DictConfig):
            keys += unset_keys(child, f"{full}.")
    return keys


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the task named by ``cfg.task`` and return its results.

    Raises:
        ConfigError: The config cannot run.
    """
    missing = unset_keys(cfg)
    if missing:
        raise ConfigError(missing[0], f"must be set (it is ??? in the config; also unset: {missing[1:]})")
    if cfg.task not in TASKS:
        raise ConfigError("task", f"must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    check_types(cfg)
    try:
        return TASKS[cfg.task](cfg)
    except RuntimeError as err:  # torch.OutOfMemoryError (CUDA) is one too
        if not out_of_memory(err):
            raise
        key = BATCH_KEYS.get(cfg.task, "data.batch_size")
        raise ConfigError(
            key,
            f"the run ran out of memory with it at {OmegaConf.select(cfg, key)} ({str(err).splitlines()[0]}): lower it",
        ) from err


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: on a GPU, or of the CPU allocator."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def main(cfg: DictConfig) -> float | None:
    """Entry point of ``train.py``: run the task, report user errors without a traceback.

    Returns:
        The task's objective (the final student metric), for sweepers that optimise it.
    """
    try:
        results = run(cfg)
    except (ConfigError, NonFiniteLossError, RunInterrupted) as err:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("%s", err)
            raise  # the sweep records this job as failed and goes on with the others
        label = "Interrupted" if isinstance(err, RunInterrupted) else "Error"
        print(f"{label}: {err}", file=sys.stderr)
        sys.exit(EXIT_CODES[type(err)])
    objective = results.get("objective")
    return float(objective) if objective is not None else None
