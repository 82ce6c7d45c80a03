"""Errors a user can act on."""

from __future__ import annotations


class ConfigError(ValueError):
    """A mistake in the run's configuration or inputs, reported without a traceback.

    The message names the config key to change and what was found.

    Args:
        key: The config key to change, for example ``"teacher.checkpoint"``.
        message: What is wrong and, where possible, what to do.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")

    def under(self, prefix: str) -> ConfigError:
        """The same error for a config: an argument's name becomes ``prefix.name`` (dotted keys stay)."""
        return self if "." in self.key else ConfigError(f"{prefix}.{self.key}", self.message)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: training stopped rather than go on with broken weights."""


class RunInterrupted(RuntimeError):
    """The run was stopped by a signal after writing its last checkpoint; it can be resumed."""
