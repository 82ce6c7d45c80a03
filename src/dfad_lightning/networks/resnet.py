"""ResNets for teachers and students.

The CIFAR "8x" ResNet-18/34 of the paper (Table 6), the original CIFAR ResNets of He et al.
(ResNet-20/32/44/56, as the akamaster checkpoints lay them out), and torchvision's ImageNet layout.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution.
        shortcut: How a shortcut changes shape: ``"B"`` a 1x1 convolution with BatchNorm (the
            8x ResNets), ``"A"`` subsampling plus zero channels, parameter-free (He et al.'s
            CIFAR ResNets).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Literal["A", "B"] = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _PadShortcut(planes - in_planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: Tensor) -> Tensor:
        """Residual block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel, pad the new channels with zeros."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = extra_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class ResNet8x(nn.Module):
    """The CIFAR ResNet of the paper's Table 6: four stages of 64-512 channels, 8x downsampling.

    Args:
        blocks: Blocks per stage: ``(2, 2, 2, 2)`` is ResNet-18-8x, ``(3, 4, 6, 3)`` ResNet-34-8x.
        in_channels: Image channels.
        num_classes: Output logits.
    """

    def __init__(self, blocks: tuple[int, int, int, int], in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layers = _stages(64, (64, 128, 256, 512), blocks, shortcut="B")
        self.linear = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out_: Tensor = self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
        return out_


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): three stages of 16/32/64 channels, option-A shortcuts.

    The layout and parameter names are those of akamaster/pytorch_resnet_cifar10, so its
    pretrained checkpoints load as they are (the loader strips their ``module.`` prefix).

    Args:
        depth: 20, 32, 44, 56 or 110 (``n = (depth - 2) / 6`` blocks per stage).
        in_channels: Image channels.
        num_classes: Output logits.
    """

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = _stages(16, (16, 32, 64), (n, n, n), shortcut="A")
        self.layer1, self.layer2, self.layer3 = stages[0], stages[1], stages[2]
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out_: Tensor = self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
        return out_


def _stages(
    in_planes: int, widths: tuple[int, ...], blocks: tuple[int, ...], shortcut: Literal["A", "B"]
) -> nn.Sequential:
    stages = []
    for i, (planes, n) in enumerate(zip(widths, blocks, strict=True)):
        stride = 1 if i == 0 else 2
        layers = []
        for j in range(n):
            layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1, shortcut))
            in_planes = planes
        stages.append(nn.Sequential(*layers))
    return nn.Sequential(*stages)


def resnet18_8x(in_channels: int = 3, num_classes: int = 10) -> ResNet8x:
    """ResNet-18-8x, the paper's CIFAR student (11.2 M parameters at 10 classes)."""
    return ResNet8x((2, 2, 2, 2), in_channels, num_classes)


def resnet34_8x(in_channels: int = 3, num_classes: int = 10) -> ResNet8x:
    """ResNet-34-8x, the paper's CIFAR teacher (21.3 M parameters at 10 classes)."""
    return ResNet8x((3, 4, 6, 3), in_channels, num_classes)


def cifar_resnet(depth: int = 20, in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """He et al.'s CIFAR ResNet of the given depth (ResNet-20: 0.27 M parameters, ResNet-56: 0.85 M)."""
    return CifarResNet(depth, in_channels, num_classes)


def torchvision_resnet(depth: Literal[18, 34] = 18, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Torchvision's ImageNet-layout ResNet-18/34 (32x downsampling), randomly initialised.

    The paper's Caltech101 networks at 128x128. Never downloads weights: load a checkpoint
    through ``teacher.checkpoint`` instead.
    """
    factory = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[depth]
    net: nn.Module = factory(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net
