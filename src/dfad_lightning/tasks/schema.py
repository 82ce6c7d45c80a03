"""The types and ranges of every value a user sets, checked before any work.

Hydra composes whatever it is given: ``data.batch_size=abc`` composes fine and fails much later
inside PyTorch with a traceback. :func:`check_types` walks the composed config against
:data:`SCHEMA`, one :class:`~dfad_lightning.rules.Rule` per user-facing key of every config group
(the system's are the module's and its parts' own ``RULES``, :data:`SYSTEM_RULES`), and
raises a :class:`~dfad_lightning.errors.ConfigError` naming the key, the value and what is
allowed. A key absent from a config (an option that has no such value) is skipped; ``???`` is
left to the check of unset values. The configuration reference of the documentation is
generated from :data:`SCHEMA` and the composed defaults (:func:`reference`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast, get_args

from lightning.fabric.connector import (  # type: ignore[attr-defined]
    _PRECISION_INPUT_INT,
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
)
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from dfad_lightning.errors import ConfigError
from dfad_lightning.parts import (
    ContrastivePool,
    DAFLObjective,
    InputPool,
    Inputs,
    MetaGenerator,
    MovingAverage,
    StudentSteps,
)
from dfad_lightning.rules import POSITIVE, Rule, is_int, show
from dfad_lightning.systems import DFAD

_ABSENT = object()
# What Lightning's Trainer accepts as `precision`.
PRECISIONS = tuple(
    value
    for kind in (_PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS, _PRECISION_INPUT_INT)
    for value in get_args(kind)
)
# The rules of the system's own arguments and of each of its parts, under their config nodes
# (DAFL's objective repeats the base objective's rules and adds its own).
SYSTEM_RULES = (
    *(rule.under("system") for rule in DFAD.RULES),
    *(
        rule.under("system.inputs")
        for rule in (*Inputs.RULES, *InputPool.RULES, *MetaGenerator.RULES, *ContrastivePool.RULES)
    ),
    *(rule.under("system.objective") for rule in DAFLObjective.RULES),
    *(rule.under("system.learning") for rule in StudentSteps.RULES),
    *(rule.under("system.average") for rule in MovingAverage.RULES),
)

SCHEMA: list[Rule] = [
    # conf/train.yaml
    Rule("task", str,  # its choices are the tasks' own names (dfad_lightning.tasks.TASKS)
         doc="distill (DFAD), teacher (train the teacher on real data), eval (score teacher and student), "
             "export (TorchScript, torch.export, ONNX)"),
    Rule("seed", int, low=0, doc="seeds the networks' initialisation and the noise stream"),
    Rule("ckpt_path", str, nullable=True,
         doc="resume: last (this run directory's last checkpoint), auto (resume if there is one), or a path"),
    Rule("student_checkpoint", str, nullable=True,
         doc="a student.pt or a run's checkpoint: task=eval scores it, task=export exports it"),
    # data
    Rule("data.batch_size", int, low=2, why="BatchNorm needs 2 samples", doc="samples per step, per process"),
    Rule("data.iterations_per_epoch", int, low=1,
         doc="iterations per epoch (the paper's 50); evaluation, checkpoints and schedules are per epoch"),
    Rule("data.eval_batch_size", int, low=1, doc="batch size of the evaluation on real data"),
    Rule("data.num_workers", int, low=0, doc="data-loader workers of the evaluation split"),
    # system: the module's and its parts' own rules
    *SYSTEM_RULES,
    Rule("system.student_optimizer.lr", float, low=0, doc="the student's learning rate"),
    Rule("system.generator_optimizer.lr", float, low=0, doc="the generator's learning rate"),
    Rule("system.student_optimizer.momentum", float, low=0, high=1, doc="the student's SGD momentum"),
    Rule("system.student_optimizer.weight_decay", float, low=0, doc="the student's weight decay"),
    Rule("system.generator_optimizer.weight_decay", float, low=0, doc="the generator's weight decay"),
    # dataset
    Rule("dataset.name", str, doc="the dataset's name in reports and run directories"),
    Rule("dataset.channels", int, low=1, doc="image channels of the teacher's inputs"),
    Rule("dataset.image_size", "size", doc="the generator's output size, [height, width] (or one side)"),
    Rule("dataset.num_classes", int, low=2, why="a classifier with 1 output has no class to pick between",
         doc="outputs of the teacher per sample (per pixel, for segmentation)"),
    Rule("dataset.mean", "numbers", doc="per-channel mean that normalises the inputs"),
    Rule("dataset.std", "numbers", doc="per-channel standard deviation that normalises the inputs"),
    Rule("dataset.auto_teacher", bool, doc="with no teacher.checkpoint, train the teacher on the fly and cache it"),
    Rule("dataset.download", bool, doc="let torchvision download the dataset first (needs internet)"),
    Rule("dataset.split_seed", int, low=0, doc="seed of the per-class split of a dataset that has none"),
    Rule("dataset.test_fraction", float, low=POSITIVE, high=1, doc="the held-out fraction of such a split"),
    Rule("dataset.short_side", int, low=1, doc="segmentation: images are resized to this short side"),
    Rule("dataset.crop", "size", doc="segmentation: the teacher trains on random crops of this size"),
    # teacher and networks
    Rule("teacher.checkpoint", str, nullable=True, doc="the teacher's weights (a state dict or a checkpoint)"),
    Rule("teacher.mean", "numbers", doc="the normalisation the teacher was trained with (the dataset's by default)"),
    Rule("teacher.std", "numbers", doc="as teacher.mean"),
    Rule("teacher.training.epochs", int, low=1, doc="task=teacher: epochs"),
    Rule("teacher.training.batch_size", int, low=2, why="BatchNorm needs 2 samples", doc="task=teacher: batch size"),
    Rule("teacher.training.seed", int, low=0, doc="task=teacher: seed"),
    Rule("teacher.training.optimizer.lr", float, low=0, doc="task=teacher: learning rate"),
    Rule("generator.nz", int, low=1, doc="the generator's latent size"),
    Rule("generator.ngf", int, low=1, doc="the generator's base width (channels)"),
    # loss
    Rule("loss.discrepancy.temperature", float, low=POSITIVE, doc="loss=kl and kd: the softmax temperature"),
    # trainer
    Rule("trainer.max_epochs", int, low=1, why="0 epochs would train nothing", doc="epochs of the run"),
    Rule("trainer.num_nodes", int, low=1, doc="machines of a multi-node run"),
    Rule("trainer.check_val_every_n_epoch", int, low=1, doc="evaluate on real data every N epochs"),
    Rule("trainer.log_every_n_steps", int, low=1, doc="log the losses every N iterations"),
    Rule("trainer.num_sanity_val_steps", int, low=0, doc="Lightning's sanity evaluation (0: the teacher is "
                                                         "measured on the first full one)"),
    Rule("trainer.enable_progress_bar", bool, doc="Lightning's progress bar"),
    Rule("trainer.deterministic", bool, doc="deterministic kernels (slower on GPUs)"),
    Rule("trainer.sync_batchnorm", bool, doc="synchronise BatchNorm statistics across GPUs"),
    Rule("trainer.precision", str, choices=PRECISIONS, doc="32-true, bf16-mixed (CPU or GPU), 16-mixed (GPU)"),
    Rule("trainer.accelerator", str, choices=("cpu", "gpu", "cuda", "mps", "auto"), doc="where the run computes"),
    # callbacks
    Rule("callbacks.checkpoint.every_n_iterations", int, low=1, nullable=True, why="or null: every epoch only",
         doc="also save last.ckpt every N iterations"),
    Rule("callbacks.datafree.samples_per_snapshot", int, low=1, doc="probes drawn from the generator each epoch"),
    Rule("callbacks.datafree.max_snapshots", int, low=2, doc="most snapshots in the probe pool"),
    Rule("callbacks.datafree.monitor", str, doc="the data-free value that selects datafree-best.ckpt"),
    Rule("callbacks.datafree.mode", str, choices=("min", "max"), doc="whether that value is better low or high"),
]  # fmt: skip


def check_types(cfg: DictConfig, schema: Sequence[Rule] = SCHEMA) -> None:
    """Check every value of ``schema`` present in ``cfg``, and the few that depend on each other.

    Raises:
        ConfigError: The first value that is not allowed, naming its key, value and what is allowed.
    """
    for rule in schema:
        try:
            value = OmegaConf.select(cfg, rule.key, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            continue  # ??? values are reported by the check of unset keys
        except InterpolationResolutionError as err:
            raise ConfigError(rule.key, f"cannot be resolved: {err}") from None
        if value is not _ABSENT and not rule.fits(value):
            raise ConfigError(rule.key, f"must be {rule.allowed()}, got {show(value)}")
    _check_devices(cfg)
    _check_normalisation(cfg)


def reference(cfg: DictConfig, schema: Sequence[Rule] = SCHEMA) -> str:
    """The configuration reference in Markdown: per config section, every key's default, range and meaning.

    Args:
        cfg: The composed default config (``conf/train.yaml`` with its default options): its
            values are shown as written, ``${...}`` interpolations included.
        schema: The rules to document.

    Returns:
        One table per top-level section (``data``, ``system``, ...), in the schema's order.
    """
    raw = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=False))
    sections: dict[str, list[str]] = {}
    for rule in schema:
        section = rule.key.split(".")[0] if "." in rule.key else "top level"
        default = _lookup(raw, rule.key)
        shown = "set by the options that use it" if default is _ABSENT else f"`{_as_yaml(default)}`"
        cells = [f"`{rule.key}`", shown, rule.allowed(), rule.doc]
        sections.setdefault(section, []).append("| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |")
    parts = []
    for section, rows in sections.items():
        title = section if section == "top level" else f"`{section}`"
        parts += [
            f"### {title}",
            "",
            "| key | in `python train.py` | allowed | what it does |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    return "\n".join(parts)


def _as_yaml(value: Any) -> str:
    """A value as YAML writes it in a config: ``null``, ``true``, ``[0.5]``, ``${dataset.mean}``."""
    if isinstance(value, list):
        return "[" + ", ".join(_as_yaml(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return str(value).lower() if value is not None else "null"
    return str(value)


def _lookup(raw: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a plain nested dict, or ``_ABSENT``."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _check_normalisation(cfg: DictConfig) -> None:
    """``teacher.mean`` and ``teacher.std``: one value per image channel (``dataset.channels``), stds above 0.

    Both follow ``dataset.mean`` and ``dataset.std`` unless set, so the error names the key the
    value came from (the one a user changes): the key a ``${...}`` value refers to, else the
    teacher's own.
    """
    channels = OmegaConf.select(cfg, "dataset.channels")
    for key in ("mean", "std"):
        values = OmegaConf.select(cfg, f"teacher.{key}")
        if not isinstance(values, ListConfig):
            continue
        if is_int(channels) and len(values) != channels:
            problem = f"has {len(values)} values for {channels} image channels (dataset.channels): give one per channel"
        elif key == "std" and not all(isinstance(v, int | float) and v > 0 for v in values):
            problem = f"must be standard deviations above 0 (inputs are divided by them), got {show(values)}"
        else:
            continue
        raw = cast(dict[str, Any], OmegaConf.to_container(cfg.teacher, resolve=False))[key]
        source = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
        raise ConfigError(source.group(1) if source else f"teacher.{key}", problem)


def _check_devices(cfg: DictConfig) -> None:
    """``trainer.devices``: a positive count, -1 (all), ``auto``, or a list of device indices."""
    value = OmegaConf.select(cfg, "trainer.devices")
    fine = (
        value is None
        or value == "auto"
        or (is_int(value) and (value >= 1 or value == -1))
        or (isinstance(value, ListConfig) and len(value) > 0 and all(is_int(v) and v >= 0 for v in value))
    )
    if not fine:
        raise ConfigError(
            "trainer.devices", f"must be a positive integer, -1 (all), auto or a list of indices, got {show(value)}"
        )
