"""How long a run is expected to take, said early in the run from its first iterations' speed."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


class ExpectedTime(Callback):
    """Log one line with the run's expected remaining time once the first iterations are timed.

    The warm-up's iterations (a generator step alone) and the game's cost differently, so each
    phase is timed on its own: after ``timed`` iterations of the warm-up, one line says how long
    the warm-up will take; after ``timed`` iterations of the game, one line says how long the
    rest of the run will take. The first iteration of each phase is not timed (its kernels and
    buffers are being set up).

    Args:
        timed: Iterations of each phase that the estimate is made from.
    """

    def __init__(self, timed: int = 3) -> None:
        self.timed = timed
        self._times: dict[str, list[float]] = {"warm-up": [], "game": []}
        self._said: set[str] = set()
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Start the iteration's clock."""
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Time the iteration; say the expected time once a phase's first iterations are timed."""
        seconds = time.perf_counter() - self._start
        done = trainer.current_epoch * trainer.num_training_batches + batch_idx + 1  # iterations of this start
        warmup = int(getattr(pl_module, "warmup_iterations", 0))
        phase = "warm-up" if done <= warmup else "game"
        times = self._times[phase]
        times.append(seconds)
        if phase in self._said or len(times) < self.timed + 1:
            return
        self._said.add(phase)
        each = statistics.median(times[1:])  # the first one sets things up
        total = int(trainer.max_epochs or 0) * int(trainer.num_training_batches)
        left = (warmup if phase == "warm-up" else total) - done
        what = "the warm-up ends" if phase == "warm-up" else "the run ends"
        self._say(f"{what} in about {_duration(left * each)} ({left} more iterations of {each:.2f} s)")

    @rank_zero_only
    def _say(self, line: str) -> None:
        log.info("Expected: %s", line)


def _duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``3.2 min``, ``1.5 h``.

    >>> _duration(45.2), _duration(190), _duration(5400)
    ('45 s', '3.2 min', '1.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400 - 1:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
