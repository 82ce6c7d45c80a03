"""The run's one checkpoint, ``last.ckpt``: kept current so that a killed run loses little."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` after every epoch, every N iterations, and when stopped by a signal.

    DFAD selects nothing on the test split, so one checkpoint, the latest, is all a run keeps;
    resuming from it (``ckpt_path=last``) continues the same trajectory. Lightning writes every
    checkpoint to a temporary file and renames it, so a kill never leaves half a ``last.ckpt``.

    On SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C), the run finishes the iteration in
    progress, writes ``last.ckpt`` and stops; a second Ctrl-C stops at once. SIGINT is routed to
    Lightning's own SIGTERM handling, which under DDP stops every process at the same iteration.

    Args:
        dirpath: Folder of ``last.ckpt``.
        every_n_iterations: Also save every N iterations (Lightning's ``global_step`` counts
            ``student_steps + 1`` optimizer steps per DFAD iteration; this counts iterations);
            ``None``: every epoch only.
    """

    def __init__(self, dirpath: str | Path, every_n_iterations: int | None = None) -> None:
        if every_n_iterations is not None and every_n_iterations < 1:
            raise ValueError(f"every_n_iterations must be at least 1, got {every_n_iterations}")
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_iterations = every_n_iterations
        self._previous_sigint: Any = None
        self._saved_at_step = -1

    @staticmethod
    def iterations(trainer: Trainer, pl_module: LightningModule) -> int:
        """Iterations completed (a module without the DFAD loop's count: one per optimizer step)."""
        count = getattr(pl_module, "iterations", None)
        return int(count(trainer.global_step)) if callable(count) else trainer.global_step

    def save(self, trainer: Trainer) -> None:
        """Write the checkpoint (every process takes part; the main one writes)."""
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state: resuming needs it
        self._saved_at_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Save every ``every_n_iterations`` iterations, but at an epoch's last: the epoch-end save follows.

        Lightning (2.6) resumes a checkpoint taken after the last batch of an epoch without that
        epoch's end (evaluation, LR schedule step): the resumed run would diverge.
        """
        n = self.every_n_iterations
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if n is not None and not last_of_epoch and self.iterations(trainer, pl_module) % n == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save after the evaluation that ends an epoch (where Lightning's ModelCheckpoint saves too).

        A checkpoint taken later, at the end of the training epoch, is not resumed exactly by
        Lightning (2.6): the resumed run diverges. This one is (``tests/test_resume.py`` checks
        every save point).
        """
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save after an epoch that had no evaluation."""
        if self._saved_at_step != trainer.global_step:
            self.save(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route SIGINT to Lightning's SIGTERM handler (installed by now) for the same graceful stop."""
        sigterm = signal.getsignal(signal.SIGTERM)
        if not callable(sigterm):
            return

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
            sigterm(signum, frame)

        try:
            self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: leave SIGINT alone
            self._previous_sigint = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Give SIGINT back."""
        self._restore_sigint()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """After a SIGTERM or SIGINT, save the iteration just finished; after any other error, save nothing.

        A stop at the end of an epoch keeps the checkpoint its evaluation wrote at the same step.
        """
        self._restore_sigint()
        if isinstance(exception, SIGTERMException) and self._saved_at_step != trainer.global_step:
            self.save(trainer)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
