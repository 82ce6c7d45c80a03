"""Errors a user can act on."""

from __future__ import annotations


class ConfigError(ValueError):
    """A mistake in the run's configuration or inputs, reported without a traceback.

    The message names the config key to change and what was found.

    Args:
        key: The config key to change, for example ``"teacher.checkpoint"``, or, with
            ``relative``, an argument's name that the caller places in the config (:meth:`under`).
        message: What is wrong and, where possible, what to do.
        relative: Whether ``key`` names an argument rather than a whole config key.
    """

    def __init__(self, key: str, message: str, relative: bool = False) -> None:
        self.key, self.message, self.relative = key, message, relative
        super().__init__(f"{key}: {message}")

    def under(self, prefix: str) -> ConfigError:
        """The same error one level up: an argument's name ``name`` becomes ``prefix.name`` (whole keys stay)."""
        return ConfigError(f"{prefix}.{self.key}", self.message, relative=True) if self.relative else self


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: training stopped rather than go on with broken weights."""


class RunInterrupted(RuntimeError):
    """The run was stopped by a signal after writing its last checkpoint; it can be resumed."""
