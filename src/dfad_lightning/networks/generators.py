"""The DFAD generators of the paper's Table 4.

Both map a latent batch ``z`` of shape ``(B, nz)`` to images of shape ``(B, channels, H, W)``
in the normalised input space of the teacher. Layouts follow the authors' released code
(github.com/VainF/Data-Free-Adversarial-Distillation).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int or a pair.

    >>> as_size(32), as_size([256, 320])
    ((32, 32), (256, 320))
    """
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(s) for s in image_size)
    return height, width


def _check_divisible(size: tuple[int, int], factor: int, name: str) -> None:
    if size[0] % factor or size[1] % factor:
        raise ValueError(
            f"{name} upsamples by {factor}: image sides {size[0]}x{size[1]} must be multiples of {factor} "
            f"(set dataset.image_size)"
        )


class GeneratorA(nn.Module):
    """Generator-A: a linear projection, then two nearest-neighbour upsamplings (x4 in all).

    The last layer is a BatchNorm without affine parameters after the tanh, as in the
    authors' code: it keeps every output channel at zero mean and unit variance, the range
    of normalised images.

    Args:
        nz: Latent size.
        channels: Output image channels.
        image_size: Output side, or ``(height, width)``; each side a multiple of 4.
        ngf: Base width (64 in the paper).
    """

    def __init__(self, nz: int = 256, channels: int = 3, image_size: int | Sequence[int] = 32, ngf: int = 64) -> None:
        super().__init__()
        size = as_size(image_size)
        _check_divisible(size, 4, "Generator-A")
        self.nz = nz
        self.init_size = (size[0] // 4, size[1] // 4)
        self.project = nn.Linear(nz, 2 * ngf * self.init_size[0] * self.init_size[1])
        self.bn0 = nn.BatchNorm2d(2 * ngf)
        self.block1 = nn.Sequential(
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(2 * ngf, ngf, 3, padding=1),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Map latents ``(B, nz)`` to images ``(B, channels, H, W)``."""
        x = self.project(z.flatten(1)).view(z.shape[0], -1, *self.init_size)
        x = F.interpolate(self.bn0(x), scale_factor=2)
        x = F.interpolate(self.block1(x), scale_factor=2)
        out: Tensor = self.block2(x)
        return out


class GeneratorB(nn.Module):
    """Generator-B (DCGAN-like): a linear projection, then four stride-2 deconvolutions (x16).

    Weights are drawn as in DCGAN and the authors' code: linear and convolution weights from
    N(0, 0.02) with zero biases, BatchNorm scales from N(1, 0.02). Non-square sizes are allowed.

    Args:
        nz: Latent size.
        channels: Output image channels.
        image_size: Output side, or ``(height, width)``; each side a multiple of 16.
        ngf: Base width (64 in the paper).
    """

    def __init__(self, nz: int = 256, channels: int = 3, image_size: int | Sequence[int] = 128, ngf: int = 64) -> None:
        super().__init__()
        size = as_size(image_size)
        _check_divisible(size, 16, "Generator-B")
        self.nz = nz
        self.init_size = (size[0] // 16, size[1] // 16)
        self.project = nn.Linear(nz, 8 * ngf * self.init_size[0] * self.init_size[1])
        self.bn0 = nn.BatchNorm2d(8 * ngf)
        widths = [8 * ngf, 4 * ngf, 2 * ngf, ngf, ngf]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.Conv2d(ngf, channels, 3, padding=1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        """Map latents ``(B, nz)`` to images ``(B, channels, H, W)``."""
        x = self.project(z.flatten(1)).view(z.shape[0], -1, *self.init_size)
        out: Tensor = self.main(self.bn0(x))
        return out


def _dcgan_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class ScaleShift(nn.Module):
    """``x * scale + shift`` with one learnable scale (from 1) and shift (from 0): an identity to start.

    On a generator's output it lets the contrast and brightness of the generated inputs move, which
    Generator-A's last BatchNorm pins to a standard deviation of 1 (see ``DFAD``'s ``input_affine``).

    >>> import torch
    >>> layer = ScaleShift()
    >>> x = torch.randn(2, 3)
    >>> bool((layer(x) == x).all())
    True
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.shift = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        """Scale, then shift, every element of ``x``."""
        return x * self.scale + self.shift
