"""What a value may be: one :class:`Rule` per setting, shared by the modules and the config schema.

A module declares the rules of its arguments beside its code (``DFAD.RULES``) and checks them
with :func:`check_arguments`; the config schema (:mod:`dfad_lightning.tasks.schema`) takes the
same rules under the config key that holds them (:meth:`Rule.under`), and the configuration
reference of the documentation is generated from the schema. A range is written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dfad_lightning.errors import ConfigError

POSITIVE = 1e-12  # "greater than zero" for numbers


@dataclass(frozen=True)
class Rule:
    """What one value may be, and what it means.

    Args:
        key: The argument's name, or the dotted key in the composed config.
        kind: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``"size"`` (a positive int or a
            ``[height, width]`` pair), ``"numbers"`` (a non-empty list of floats) or
            ``"count_or_fraction"`` (an integer of at least 0, or a float in [0, 1)).
        low: Smallest allowed value (inclusive), or ``None``.
        high: Largest allowed value (exclusive), or ``None``.
        choices: Allowed values, or ``None``.
        also: Values allowed besides those of ``kind`` (``("auto",)``).
        nullable: Whether ``null`` is allowed.
        why: What the bound protects, added to the message.
        doc: What the value does, in a sentence (the configuration reference shows it).
    """

    key: str
    kind: Any
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] | None = None
    also: Sequence[str] = ()
    nullable: bool = False
    why: str = ""
    doc: str = ""

    def under(self, prefix: str) -> Rule:
        """The same rule for the value at ``prefix.key`` of a config."""
        return dataclasses.replace(self, key=f"{prefix}.{self.key}")

    def allowed(self) -> str:
        """What is allowed, in words: ``an integer, at least 2``."""
        if self.choices is not None:
            return "one of " + ", ".join(dict.fromkeys(str(c) for c in self.choices))
        noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                "size": "a positive integer or a [height, width] pair of them",
                "numbers": "a list of numbers",
                "count_or_fraction": "an integer of at least 0 (iterations) or a number in [0, 1) (a fraction of "
                                     "the run)"}[self.kind]  # fmt: skip
        bounds = []
        if self.low is not None:
            bounds.append("above 0" if self.low == POSITIVE else f"at least {self.low:g}")
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
            sizes = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
            return len(sizes) in (1, 2) and all(is_int(s) and s > 0 for s in sizes)
        if self.kind == "numbers":
            return isinstance(value, ListConfig | list | tuple) and len(value) > 0 and all(is_number(v) for v in value)
        if self.kind == "count_or_fraction":
            return (is_int(value) and value >= 0) or (isinstance(value, float) and 0 <= value < 1)
        checks: dict[Any, Callable[[Any], bool]] = {
            int: is_int,
            float: is_number,
            bool: lambda v: isinstance(v, bool),
            str: lambda v: isinstance(v, str),
        }
        if not checks[self.kind](value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value < self.high)

    def check(self, value: Any) -> None:
        """Refuse ``value`` if it is not allowed.

        Raises:
            ConfigError: Naming :attr:`key` (as relative to the caller's place, see
                :meth:`ConfigError.under <dfad_lightning.errors.ConfigError.under>`), the value and what is allowed.
        """
        if not self.fits(value):
            raise ConfigError(self.key, f"must be {self.allowed()}, got {show(value)}", relative=True)


def check_arguments(rules: Sequence[Rule], values: Mapping[str, Any]) -> None:
    """Check each value of ``values`` against the rule of its name (values without a rule pass).

    >>> check_arguments([Rule("steps", int, low=1)], {"steps": 0})
    Traceback (most recent call last):
    ...
    dfad_lightning.errors.ConfigError: steps: must be an integer, at least 1, got 0

    Raises:
        ConfigError: The first value that is not allowed, naming the argument.
    """
    by_name = {rule.key: rule for rule in rules}
    for name, value in values.items():
        if name in by_name:
            by_name[name].check(value)


def show(value: Any) -> str:
    """A value as a user wrote it: a config node as a plain list or dict."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return repr(value)


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an integer or a float (a bool is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
