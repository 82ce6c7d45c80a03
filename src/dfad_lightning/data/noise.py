"""The stream of latent batches that drives DFAD's training loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor


def noise_seed(seed: int, rank: int, iteration: int) -> int:
    """Seed of the noise of one iteration on one process.

    Each (seed, rank, iteration) gets its own well-mixed 64-bit seed, so processes never share
    noise, and any iteration's noise can be drawn again from its index alone: resuming needs
    nothing but the iteration counter, on every rank.

    >>> noise_seed(0, 0, 0) == noise_seed(0, 0, 0), noise_seed(0, 0, 0) == noise_seed(0, 1, 0)
    (True, False)
    """
    state = np.random.SeedSequence([seed, rank, iteration]).generate_state(1, dtype=np.uint64)
    return int(state[0])


class NoiseStream:
    """Sized, stateful iterable of latent batches, one tensor ``(draws, B, nz)`` per iteration.

    One pass yields ``length`` iterations (one DFAD "epoch"); the next pass continues the
    stream. The noise is drawn directly on ``device``. The state (the iteration counter) is
    saved in Lightning checkpoints, so a resumed run draws the same noise it would have drawn.
    The stream has a length, so Lightning does not prefetch from it and the counter in a
    checkpoint is exactly the number of iterations trained.

    Args:
        batch_size: Samples per draw (per process).
        nz: Latent size.
        draws: Draws per iteration: ``k`` student steps plus one generator step.
        length: Iterations per epoch.
        seed: Base seed of the stream.
        rank: Process rank; every rank draws different noise.
        device: Where the noise is made.
    """

    def __init__(
        self,
        batch_size: int,
        nz: int,
        draws: int,
        length: int,
        seed: int = 0,
        rank: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.shape = (draws, batch_size, nz)
        self.length = length
        self.seed = seed
        self.rank = rank
        self.device = torch.device(device)
        self.iteration = 0
        self._rng = torch.Generator(device=self.device)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Tensor]:
        for _ in range(self.length):
            z = self.draw(self.iteration)
            # Count before yielding: a checkpoint written while this batch trains must record it.
            self.iteration += 1
            yield z

    def draw(self, iteration: int) -> Tensor:
        """Return the noise of ``iteration`` on this rank: a standard normal ``(draws, B, nz)``."""
        self._rng.manual_seed(noise_seed(self.seed, self.rank, iteration))
        return torch.randn(self.shape, generator=self._rng, device=self.device)

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints: the seed and the number of iterations drawn."""
        return {"seed": self.seed, "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream saved by :meth:`state_dict`."""
        self.seed = int(state["seed"])
        self.iteration = int(state["iteration"])
