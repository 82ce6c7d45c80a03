"""A replay memory of generated samples, so that the student keeps practising what it learnt earlier."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ReplayMemory(nn.Module):
    """A fixed-size, uniform sample of every input the generator has made so far (reservoir sampling).

    The adversarial generator keeps moving to where the student is wrong *now*; without the old
    samples the student forgets what it learnt on them, and its accuracy oscillates instead of
    rising. The memory keeps ``capacity`` samples drawn uniformly from the whole history (every
    input ever pushed is equally likely to be in it), and :meth:`sample` returns a random batch of
    them. Its contents and its counter are part of the module's state dict, so they travel in
    checkpoints and a resumed run replays exactly what a straight run would. Random choices are
    seeded by the number of samples seen, so the memory needs no RNG state of its own, and the
    counter is a Python integer, so no step waits for the GPU to read it.

    Args:
        capacity: Samples kept.
        shape: Shape of one sample, e.g. ``(channels, height, width)``.
        dtype: How samples are stored (pushed samples are cast to it, :meth:`sample` returns it).

    >>> memory = ReplayMemory(4, (1,))
    >>> memory.push(torch.arange(10.0).view(10, 1))
    >>> memory.seen, len(memory), memory.sample(3).shape
    (10, 4, torch.Size([3, 1]))
    """

    samples: Tensor

    def __init__(self, capacity: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.register_buffer("samples", torch.zeros(capacity, *shape, dtype=dtype))
        self.seen = 0

    def __len__(self) -> int:
        return min(self.seen, len(self.samples))

    def _rng(self) -> torch.Generator:
        return torch.Generator(device=self.samples.device).manual_seed(self.seen)

    @torch.no_grad()
    def push(self, batch: Tensor) -> None:
        """Offer a batch (Vitter's Algorithm R).

        Each sample fills a free slot or, once the memory is full, replaces a random one with
        probability ``capacity / (samples seen)``.
        """
        capacity, device = len(self.samples), self.samples.device
        positions = torch.arange(self.seen, self.seen + len(batch), device=device)
        draws = (torch.rand(len(batch), generator=self._rng(), device=device) * (positions + 1)).long()
        slots = torch.where(positions < capacity, positions, draws)
        kept = slots < capacity
        # Where two samples of the batch land in one slot, the later wins, as in the sequential algorithm.
        winner = torch.full((capacity,), -1, device=device).scatter_reduce(
            0, slots[kept], torch.arange(len(batch), device=device)[kept], reduce="amax"
        )
        written = (winner >= 0).nonzero().squeeze(1)
        self.samples[written] = batch.to(device=device, dtype=self.samples.dtype)[winner[written]]
        self.seen += len(batch)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` stored samples drawn at random (with replacement).

        Raises:
            RuntimeError: Nothing was pushed yet.
        """
        if self.seen == 0:
            raise RuntimeError("the replay memory is empty")
        index = torch.randint(len(self), (n,), generator=self._rng(), device=self.samples.device)
        return self.samples[index]

    def get_extra_state(self) -> dict[str, Any]:
        """The counter, saved in the state dict beside the samples."""
        return {"seen": self.seen}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the counter of :meth:`get_extra_state`."""
        self.seen = int(state["seen"])
