"""A replay memory of generated samples, so that the student keeps practising what it learnt earlier."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class ReplayMemory(nn.Module):
    """A fixed-size, uniform sample of every input the generator made (reservoir sampling), with the teacher's outputs.

    The adversarial generator keeps moving to where the student is wrong *now*; without the old
    samples the student forgets what it learnt on them, and its accuracy oscillates instead of
    rising. The memory keeps ``capacity`` samples drawn uniformly from the whole history (every
    input ever pushed is equally likely to be in it) together with the teacher's outputs on them,
    and :meth:`sample` returns a random batch of both. The teacher is frozen, so its outputs on a
    sample never change: replaying them costs no teacher pass. Contents and counters are part of
    the module's state dict, so they travel in checkpoints and a resumed run replays exactly what
    a straight run would. Random choices are seeded by the counters (samples seen, batches drawn),
    so the memory needs no RNG state of its own, and the counters are Python integers, so no step
    waits for the GPU to read them.

    Args:
        capacity: Samples kept.
        shape: Shape of one sample, e.g. ``(channels, height, width)``.
        output_shape: Shape of the teacher's output on one sample, e.g. ``(classes,)``.
        dtype: How samples and outputs are stored (pushed tensors are cast to it, :meth:`sample`
            returns it).

    >>> memory = ReplayMemory(4, (1,), (2,))
    >>> memory.push(torch.arange(10.0).view(10, 1), torch.zeros(10, 2))
    >>> x, out = memory.sample(3)
    >>> memory.seen, len(memory), x.shape, out.shape
    (10, 4, torch.Size([3, 1]), torch.Size([3, 2]))
    """

    samples: Tensor
    outputs: Tensor

    def __init__(
        self, capacity: int, shape: tuple[int, ...], output_shape: tuple[int, ...], dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.register_buffer("samples", torch.zeros(capacity, *shape, dtype=dtype))
        self.register_buffer("outputs", torch.zeros(capacity, *output_shape, dtype=dtype))
        self.seen = 0
        self.drawn = 0

    def __len__(self) -> int:
        return min(self.seen, len(self.samples))

    @staticmethod
    def nbytes(capacity: int, shape: tuple[int, ...], output_shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """The bytes a memory of these sizes holds."""
        return capacity * (math.prod(shape) + math.prod(output_shape)) * torch.empty((), dtype=dtype).element_size()

    def _rng(self) -> torch.Generator:
        # A stream for every (seen, drawn): each push, and each draw between two pushes, gets its own.
        # The CPU generator keeps 32 bits of its seed; the hash of a tuple of ints is the same in every process.
        return torch.Generator(device=self.samples.device).manual_seed(hash((self.seen, self.drawn)) % 2**32)

    @torch.no_grad()
    def push(self, samples: Tensor, outputs: Tensor) -> None:
        """Offer a batch of samples and the teacher's outputs on them (Vitter's Algorithm R).

        Each sample fills a free slot or, once the memory is full, replaces a random one with
        probability ``capacity / (samples seen)``.
        """
        capacity, device = len(self.samples), self.samples.device
        positions = torch.arange(self.seen, self.seen + len(samples), device=device)
        draws = (torch.rand(len(samples), generator=self._rng(), device=device) * (positions + 1)).long()
        slots = torch.where(positions < capacity, positions, draws)
        kept = slots < capacity
        # Where two samples of the batch land in one slot, the later wins, as in the sequential algorithm.
        winner = torch.full((capacity,), -1, device=device).scatter_reduce(
            0, slots[kept], torch.arange(len(samples), device=device)[kept], reduce="amax"
        )
        written = (winner >= 0).nonzero().squeeze(1)
        for store, batch in ((self.samples, samples), (self.outputs, outputs)):
            store[written] = batch.to(device=device, dtype=store.dtype)[winner[written]]
        self.seen += len(samples)

    @torch.no_grad()
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` stored samples drawn at random (with replacement), and the teacher's outputs on them.

        Every call draws anew: two calls between pushes return different batches.

        Raises:
            RuntimeError: Nothing was pushed yet.
        """
        if self.seen == 0:
            raise RuntimeError("the replay memory is empty")
        index = torch.randint(len(self), (n,), generator=self._rng(), device=self.samples.device)
        self.drawn += 1
        return self.samples[index], self.outputs[index]

    def get_extra_state(self) -> dict[str, Any]:
        """The counters, saved in the state dict beside the samples."""
        return {"seen": self.seen, "drawn": self.drawn}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the counters of :meth:`get_extra_state`."""
        self.seen, self.drawn = int(state["seen"]), int(state["drawn"])
