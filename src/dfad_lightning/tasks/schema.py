"""The types and ranges of every value a user sets, checked before any work.

Hydra composes whatever it is given: ``data.batch_size=abc`` composes fine and fails much later
inside PyTorch with a traceback. :func:`check_types` walks the composed config against
:data:`SCHEMA`, one :class:`Rule` per user-facing key of every config group, and raises a
:class:`~dfad_lightning.errors.ConfigError` naming the key, the value and what is allowed. A key
absent from a config (an option that has no such value) is skipped; ``???`` is left to the
check of unset values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast, get_args

from lightning.fabric.connector import (  # type: ignore[attr-defined]
    _PRECISION_INPUT_INT,
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
)
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from dfad_lightning.errors import ConfigError
from dfad_lightning.systems.dfad import REPLAY_DTYPES


@dataclass(frozen=True)
class Rule:
    """What one config value may be.

    Args:
        key: Dotted key in the composed config.
        kind: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``"size"`` (a positive int or a
            ``[height, width]`` pair) or ``"numbers"`` (a non-empty list of floats).
        low: Smallest allowed value (inclusive), or ``None``.
        high: Largest allowed value (exclusive), or ``None``.
        choices: Allowed values, or ``None``.
        also: Values allowed besides those of ``kind`` (``("auto",)``).
        nullable: Whether ``null`` is allowed.
        why: What the bound protects, added to the message.
    """

    key: str
    kind: Any
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] | None = None
    also: Sequence[str] = ()
    nullable: bool = False
    why: str = ""

    def allowed(self) -> str:
        """What is allowed, in words: ``an integer of at least 2``."""
        if self.choices is not None:
            return "one of " + ", ".join(dict.fromkeys(str(c) for c in self.choices))
        noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                "size": "a positive integer or a [height, width] pair of them",
                "numbers": "a list of numbers"}[self.kind]  # fmt: skip
        bounds = []
        if self.low is not None:
            bounds.append(f"at least {self.low:g}")
        if self.high is not None:
            bounds.append(f"below {self.high:g}")
        text = noun + (", " + " and ".join(bounds) if bounds else "") + "".join(f", or {a}" for a in self.also)
        notes = [n for n in ("or null" if self.nullable and not self.why else "", self.why) if n]
        return text + "".join(f" ({n})" for n in notes)

    def fits(self, value: Any) -> bool:
        """Whether ``value`` is allowed."""
        if value is None:
            return self.nullable
        if isinstance(value, str) and value in self.also:
            return True
        if self.choices is not None:
            return value in self.choices
        if self.kind == "size":
            sizes = list(value) if isinstance(value, ListConfig | list) else [value]
            return len(sizes) in (1, 2) and all(_is_int(s) and s > 0 for s in sizes)
        if self.kind == "numbers":
            return isinstance(value, ListConfig | list) and len(value) > 0 and all(_is_number(v) for v in value)
        checks: dict[Any, Callable[[Any], bool]] = {
            int: _is_int,
            float: _is_number,
            bool: lambda v: isinstance(v, bool),
            str: lambda v: isinstance(v, str),
        }
        if not checks[self.kind](value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value < self.high)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_ABSENT = object()
POSITIVE = 1e-12  # "greater than zero" for numbers
# What Lightning's Trainer accepts as `precision`.
PRECISIONS = tuple(
    value
    for kind in (_PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS, _PRECISION_INPUT_INT)
    for value in get_args(kind)
)

SCHEMA: list[Rule] = [
    # conf/train.yaml
    Rule("seed", int, low=0),
    Rule("ckpt_path", str, nullable=True),
    Rule("student_checkpoint", str, nullable=True),
    # data
    Rule("data.batch_size", int, low=2, why="BatchNorm needs 2 samples"),
    Rule("data.iterations_per_epoch", int, low=1),
    Rule("data.eval_batch_size", int, low=1),
    Rule("data.num_workers", int, low=0),
    # system
    Rule("system.student_steps", int, low=1),
    Rule("system.student_reuse", int, low=1),
    Rule("system.student_minibatches", int, low=1, also=("auto",)),
    Rule("system.input_affine", bool, also=("auto",)),
    Rule("system.student_optimizer.lr", float, low=0),
    Rule("system.generator_optimizer.lr", float, low=0),
    Rule("system.student_optimizer.momentum", float, low=0, high=1),
    Rule("system.student_optimizer.weight_decay", float, low=0),
    Rule("system.generator_optimizer.weight_decay", float, low=0),
    Rule("system.checkpoint_teacher", bool),
    Rule("system.channels_last", bool),
    Rule("system.nonfinite", str, choices=("stop", "skip")),
    Rule("system.ema_decay", float, low=0, high=1, nullable=True, why="or null: no moving average"),
    Rule("system.replay_size", int, low=0, why="0: no replay"),
    Rule("system.replay_fraction", float, low=POSITIVE),
    Rule("system.replay_dtype", str, choices=REPLAY_DTYPES),
    Rule("system.balance", float, low=0),
    Rule("system.one_hot", float, low=0),
    Rule("system.bn_prior", float, low=0),
    Rule("system.generator_warmup", float, low=0),
    Rule("system.generator_warmup_lr_scale", float, low=POSITIVE),
    Rule("system.adversarial_agreement", bool),
    Rule("system.shift", float, low=0, high=0.5),
    Rule("system.activation", float, low=0),
    Rule("system.inputs", str, choices=("data", "noise")),
    # dataset
    Rule("dataset.name", str),
    Rule("dataset.channels", int, low=1),
    Rule("dataset.image_size", "size"),
    Rule("dataset.num_classes", int, low=1),
    Rule("dataset.mean", "numbers"),
    Rule("dataset.std", "numbers"),
    Rule("dataset.auto_teacher", bool),
    Rule("dataset.download", bool),
    Rule("dataset.split_seed", int, low=0),
    Rule("dataset.test_fraction", float, low=POSITIVE, high=1),
    Rule("dataset.short_side", int, low=1),
    Rule("dataset.crop", "size"),
    # teacher and networks
    Rule("teacher.checkpoint", str, nullable=True),
    Rule("teacher.mean", "numbers"),
    Rule("teacher.std", "numbers"),
    Rule("teacher.training.epochs", int, low=1),
    Rule("teacher.training.batch_size", int, low=2, why="BatchNorm needs 2 samples"),
    Rule("teacher.training.seed", int, low=0),
    Rule("teacher.training.optimizer.lr", float, low=0),
    Rule("generator.nz", int, low=1),
    Rule("generator.ngf", int, low=1),
    # loss
    Rule("loss.discrepancy.temperature", float, low=POSITIVE),
    # trainer
    Rule("trainer.max_epochs", int, low=1, why="0 epochs would train nothing"),
    Rule("trainer.num_nodes", int, low=1),
    Rule("trainer.check_val_every_n_epoch", int, low=1),
    Rule("trainer.log_every_n_steps", int, low=1),
    Rule("trainer.num_sanity_val_steps", int, low=0),
    Rule("trainer.enable_progress_bar", bool),
    Rule("trainer.deterministic", bool),
    Rule("trainer.sync_batchnorm", bool),
    Rule("trainer.precision", str, choices=PRECISIONS),
    Rule("trainer.accelerator", str, choices=("cpu", "gpu", "cuda", "mps", "auto")),
    # callbacks
    Rule("callbacks.checkpoint.every_n_iterations", int, low=1, nullable=True, why="or null: every epoch only"),
    Rule("callbacks.datafree.samples_per_snapshot", int, low=1),
    Rule("callbacks.datafree.max_snapshots", int, low=2),
    Rule("callbacks.datafree.mode", str, choices=("min", "max")),
]


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
            raise ConfigError(rule.key, f"must be {rule.allowed()}, got {_show(value)}")
    _check_devices(cfg)
    _check_normalisation(cfg)


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
        if _is_int(channels) and len(values) != channels:
            problem = f"has {len(values)} values for {channels} image channels (dataset.channels): give one per channel"
        elif key == "std" and not all(isinstance(v, int | float) and v > 0 for v in values):
            problem = f"must be standard deviations above 0 (inputs are divided by them), got {_show(values)}"
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
        or (_is_int(value) and (value >= 1 or value == -1))
        or (isinstance(value, ListConfig) and len(value) > 0 and all(_is_int(v) and v >= 0 for v in value))
    )
    if not fine:
        raise ConfigError(
            "trainer.devices", f"must be a positive integer, -1 (all), auto or a list of indices, got {_show(value)}"
        )


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return repr(value)
