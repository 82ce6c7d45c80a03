"""Random translations of generated samples: more varied inputs from one generator pass, at no teacher cost."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def max_shift(size: int, fraction: float) -> int:
    """The largest translation in pixels along a side of ``size`` pixels: ``fraction`` of it, rounded.

    >>> max_shift(32, 0.125), max_shift(32, 0.0), max_shift(28, 0.05)
    (4, 0, 1)
    """
    return round(size * fraction)


def random_shift(x: Tensor, fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Translate each image of ``x`` ``(B, C, H, W)`` by its own random whole number of pixels.

    Each image moves by up to ``fraction`` of its height vertically and of its width horizontally
    (uniformly, in either direction); the pixels uncovered at the border repeat the border's
    (replicate padding: a background stays background). The result is a differentiable function
    of ``x`` (each output pixel is one input pixel), so gradients reach the generator through it.

    Args:
        x: A batch of images, ``(B, C, H, W)``.
        fraction: The largest translation as a fraction of each side; ``0`` returns ``x`` itself.
        generator: The random stream of the translations (for runs that resume exactly).

    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> bool((random_shift(x, 0.0) == x).all())
    True
    >>> y = random_shift(x.expand(8, 1, 4, 4), 0.25, torch.Generator().manual_seed(0))
    >>> y.shape, bool((y[:, :, 1:3, 1:3] >= 0).all())
    (torch.Size([8, 1, 4, 4]), True)
    """
    batch, _, height, width = x.shape
    dy_max, dx_max = max_shift(height, fraction), max_shift(width, fraction)
    if not (dy_max or dx_max):
        return x
    # Offsets of each crop into the padded image: 0 .. 2 * max, where max is no translation.
    dy = torch.randint(2 * dy_max + 1, (batch,), generator=generator, device=generator.device if generator else None)
    dx = torch.randint(2 * dx_max + 1, (batch,), generator=generator, device=generator.device if generator else None)
    dy, dx = dy.to(x.device), dx.to(x.device)
    padded = F.pad(x, (dx_max, dx_max, dy_max, dy_max), mode="replicate")
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, :]  # (B, 1, W)
    # Advanced indexing on the batch and both spatial dims gives (B, H, W, C); back to (B, C, H, W)
    # as a view, which is the channels-last layout the CPU's convolutions prefer.
    shifted: Tensor = padded[torch.arange(batch, device=x.device)[:, None, None], :, rows, cols]
    return shifted.permute(0, 3, 1, 2)
