"""A callback for multi-process tests: each process writes what it drew and what it ended with."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback


class RankDump(Callback):
    """Save, per process, the first noise batch it trained on and its final student weights."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.first_noise: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_noise is None:
            self.first_noise = batch.detach().cpu().clone()

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in pl_module.student.state_dict().items()}
        torch.save(
            {"noise": self.first_noise, "student": state, "world_size": trainer.world_size},
            self.dirpath / f"rank{trainer.global_rank}.pt",
        )
