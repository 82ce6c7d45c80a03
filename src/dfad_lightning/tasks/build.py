"""Every object a task needs, built from the config (all ``instantiate`` calls live here)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, cast

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning import Callback, Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import Metric

from dfad_lightning.callbacks.summary import NetworkSummary
from dfad_lightning.data import DFADDataModule, SupervisedDataModule
from dfad_lightning.errors import ConfigError
from dfad_lightning.networks.generators import as_size
from dfad_lightning.networks.modes import eval_mode
from dfad_lightning.systems import DFAD, Supervised


def _no_tip(record: logging.LogRecord) -> bool:
    return "Tip: " not in record.getMessage()


def quiet_lightning() -> None:
    """Silence two messages of Lightning that are not the user's to act on (idempotent).

    An advertisement at every Trainer start, and a deprecation inside Lightning 2.6 that torch
    2.14 reports at every fit. Done on importing this module; scripts that build their own
    Trainer (the benchmarks) call it too, which adds nothing twice.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tip)
    deprecation = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
    warnings.filterwarnings("ignore", message=deprecation, category=FutureWarning)


quiet_lightning()


def build_network(node: DictConfig, key: str) -> nn.Module:
    """Instantiate a network config, naming ``key`` if it fails."""
    try:
        return cast(nn.Module, instantiate(node))
    except Exception as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if isinstance(cause, ConfigError):  # the network named its own key
            raise cause from None
        raise ConfigError(key, f"cannot build the network: {cause}") from err


def build_metric(cfg: DictConfig) -> Metric:
    """The dataset's evaluation metric."""
    return cast(Metric, instantiate(cfg.dataset.metric))


def uses_generator(cfg: DictConfig) -> bool:
    """Whether the system's inputs are made by a generator (noise or real images are not)."""
    return bool(getattr(get_class(cfg.system.inputs._target_), "uses_generator", False))


def build_datamodule(cfg: DictConfig) -> DFADDataModule:
    """The noise stream and the real evaluation split; the split is built now to fail early."""
    datamodule = cast(DFADDataModule, instantiate(cfg.data))
    datamodule.setup("fit")
    return datamodule


def build_system(
    cfg: DictConfig, teacher: nn.Module, student: nn.Module, generator: nn.Module | None, **kwargs: Any
) -> DFAD:
    """The DFAD LightningModule (or the subclass named by ``system._target_``).

    Raises:
        ConfigError: The system refuses its settings, naming the key (``system.<argument>``), else ``system``.
    """
    try:
        return cast(DFAD, instantiate(cfg.system, teacher=teacher, student=student, generator=generator, **kwargs))
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause.under("system") from None
        if isinstance(cause, ValueError):
            raise ConfigError("system", str(cause)) from err
        raise


def build_supervised(cfg: DictConfig, net: nn.Module) -> tuple[Supervised, SupervisedDataModule]:
    """A teacher-training system for ``net`` and its labelled data, from ``teacher.training``."""
    for split in ("train", "test"):
        if cfg.dataset.get(split) is None:
            raise ConfigError(
                f"dataset.{split}",
                f"dataset={cfg.dataset.name} has no {split} split: no teacher can be trained or measured here "
                "(bring a trained one with teacher.checkpoint=PATH)",
            )
    recipe = cfg.teacher.training
    datamodule = SupervisedDataModule(
        train_dataset=instantiate(cfg.dataset.train),
        eval_dataset=instantiate(cfg.dataset.test),
        mean=cfg.teacher.mean,
        std=cfg.teacher.std,
        batch_size=recipe.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        seed=recipe.seed,
    )
    datamodule.setup("fit")
    loss = instantiate(recipe.loss) if recipe.get("loss") else None
    system = Supervised(
        net,
        metric=build_metric(cfg),
        metric_name=cfg.dataset.metric_name,
        optimizer=instantiate(recipe.optimizer),
        scheduler=instantiate(recipe.scheduler) if recipe.get("scheduler") else None,
        **({"loss": loss} if loss is not None else {}),
    )
    return system, datamodule


def build_callbacks(cfg: DictConfig, names: list[str] | None = None) -> list[Callback]:
    """The callbacks of ``cfg.callbacks`` (all, or those named); ``null`` entries are skipped.

    Raises:
        ConfigError: A callback refuses its settings, or the data-free selection is on without its probe.
    """
    configured = cfg.get("callbacks") or {}
    chosen = {k: v for k, v in configured.items() if names is None or k in names}
    if chosen.get("datafree_best") is not None and configured.get("datafree") is None:
        raise ConfigError(
            "callbacks.datafree_best",
            "keeps the student the data-free probe selects, and the probe is off (callbacks.datafree=null): "
            "set callbacks.datafree_best=null too",
        )
    callbacks = []
    for name, node in chosen.items():
        if node is None:
            continue
        try:
            callbacks.append(instantiate(node))
        except InstantiationException as err:
            raise ConfigError(f"callbacks.{name}", str(err.__cause__ or err)) from err
    return callbacks


def build_trainer(cfg: DictConfig, out: Path, **overrides: Any) -> Trainer:
    """The Lightning Trainer of ``cfg.trainer``, logging CSV metrics into the run directory.

    Raises:
        ConfigError: The trainer config asks for hardware or precision the machine lacks.
    """
    check_precision(cfg)
    kwargs: dict[str, Any] = {"default_root_dir": str(out)}
    if "logger" not in overrides:
        kwargs["logger"] = instantiate(cfg.logger) if cfg.get("logger") else False
    kwargs.update(overrides)
    if cfg.trainer.get("enable_model_summary", True):  # Lightning's own would print FLOPs it cannot count
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), NetworkSummary()]
    trainer = _instantiate_trainer(cfg, kwargs)
    if _plain_ddp(trainer):
        if str(cfg.trainer.get("strategy", "auto")) != "auto":
            raise ConfigError(
                "trainer.strategy",
                f"{cfg.trainer.strategy} fails with DFAD's two optimizers (each stage leaves one network without "
                "gradients); use ddp_find_unused_parameters_true, or leave it out: it is then chosen for you",
            )
        # Several devices or nodes with the automatic strategy: Lightning picks plain DDP, which
        # fails at the first step here; its find-unused-parameters variant averages every step.
        trainer = _instantiate_trainer(cfg, {**kwargs, "strategy": "ddp_find_unused_parameters_true"})
    return trainer


def _instantiate_trainer(cfg: DictConfig, kwargs: dict[str, Any]) -> Trainer:
    try:
        return cast(Trainer, instantiate(cfg.trainer, **kwargs))
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, MisconfigurationException | RuntimeError | ValueError):
            key = "trainer.precision" if "precision" in str(cause) else "trainer"
            raise ConfigError(key, f"{cause} (this machine cannot run it; e.g. trainer=cpu)") from err
        raise


def _plain_ddp(trainer: Trainer) -> bool:
    """Whether the trainer runs DDP without looking for unused parameters (which DFAD's stages need)."""
    strategy = trainer.strategy
    return isinstance(strategy, DDPStrategy) and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters")


def check_precision(cfg: DictConfig) -> None:
    """Refuse a precision (or SyncBatchNorm) the machine cannot run, before Lightning fails late or quietly.

    Raises:
        ConfigError: fp16 mixed precision or SyncBatchNorm without a CUDA GPU, or bf16 on a GPU without it.
    """
    precision = str(cfg.trainer.get("precision", "32-true"))
    on_gpu = cfg.trainer.get("accelerator") in ("gpu", "cuda") or (
        cfg.trainer.get("accelerator") == "auto" and torch.cuda.is_available()
    )
    if cfg.trainer.get("sync_batchnorm") and not on_gpu:
        raise ConfigError("trainer.sync_batchnorm", "SyncBatchNorm works only on CUDA GPUs (PyTorch); set it to false")
    if precision.startswith("16") and not on_gpu:
        raise ConfigError("trainer.precision", f"{precision} needs a CUDA GPU; on a CPU use bf16-mixed or 32-true")
    if precision.startswith("bf16") and on_gpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision", f"this GPU cannot run {precision}; use 16-mixed or 32-true")


def check_networks(cfg: DictConfig, teacher: nn.Module, student: nn.Module, generator: nn.Module | None) -> None:
    """Run two samples through generator (if any), teacher and student to check that their shapes agree.

    Runs in eval mode and without gradients, so nothing about training changes.

    Raises:
        ConfigError: Naming the key whose setting does not fit.
    """
    expected = (int(cfg.dataset.channels), *as_size(OmegaConf.to_object(cfg.dataset.image_size)))  # type: ignore[arg-type]
    networks = [net for net in (teacher, student, generator) if net is not None]
    with torch.no_grad(), eval_mode(*networks):
        # Without a generator the inputs are noise or real images of the dataset's shape.
        x = torch.zeros(2, *expected) if generator is None else generator(torch.randn(2, cfg.generator.nz))
        if tuple(x.shape[1:]) != expected:
            raise ConfigError("generator", f"makes inputs of shape {tuple(x.shape[1:])}, the dataset's are {expected}")
        outputs = {}
        for key, net in (("teacher", teacher), ("model", student)):
            try:
                outputs[key] = net(x)
            except RuntimeError as err:
                raise ConfigError(key, f"cannot take inputs of shape {expected} (dataset.image_size): {err}") from err
    classes = outputs["teacher"].shape[1]
    if classes != cfg.dataset.num_classes:
        raise ConfigError(
            "dataset.num_classes", f"is {cfg.dataset.num_classes}, but the teacher has {classes} outputs per sample"
        )
    if outputs["model"].shape != outputs["teacher"].shape:
        raise ConfigError(
            "model",
            f"the student's outputs {tuple(outputs['model'].shape)} differ from the teacher's "
            f"{tuple(outputs['teacher'].shape)}",
        )
