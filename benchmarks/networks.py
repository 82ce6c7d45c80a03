"""Parameter counts and forward FLOPs of every network, as the README's table shows them.

Run: ``python benchmarks/networks.py``. FLOPs are counted by ``torch.utils.flop_counter``
(a multiply-add is 2 FLOPs), for one sample in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dfad_lightning.networks import (
    GeneratorA,
    GeneratorB,
    LeNet5,
    cifar_resnet,
    lenet5_half,
    resnet18_8x,
    resnet34_8x,
    torchvision_resnet,
)


def forward_flops(net: nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward pass of ``net`` on ``x``, per sample."""
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return float(counter.get_total_flops()) / x.shape[0]


def main() -> None:
    """Print the table."""
    image = {1: torch.randn(1, 1, 32, 32), 3: torch.randn(1, 3, 32, 32)}
    rows: list[tuple[str, nn.Module, torch.Tensor]] = [
        ("LeNet-5 (MNIST teacher)", LeNet5(1, 10), image[1]),
        ("LeNet-5-Half (MNIST student)", lenet5_half(1, 10), image[1]),
        ("ResNet-34-8x (CIFAR teacher)", resnet34_8x(3, 10), image[3]),
        ("ResNet-18-8x (CIFAR student)", resnet18_8x(3, 10), image[3]),
        *((f"CIFAR ResNet-{d}", cifar_resnet(d), image[3]) for d in (20, 32, 44, 56)),
        (
            "ResNet-34, 128x128, 101 classes (Caltech101 teacher)",
            torchvision_resnet(34, 3, 101),
            torch.randn(1, 3, 128, 128),
        ),
        (
            "ResNet-18, 128x128, 101 classes (Caltech101 student)",
            torchvision_resnet(18, 3, 101),
            torch.randn(1, 3, 128, 128),
        ),
        ("Generator-A, nz 100, 1x32x32 (MNIST)", GeneratorA(100, 1, 32, 64), torch.randn(2, 100)),
        ("Generator-A, nz 256, 3x32x32 (CIFAR)", GeneratorA(256, 3, 32, 64), torch.randn(2, 256)),
        ("Generator-B, nz 256, 3x128x128", GeneratorB(256, 3, 128, 64), torch.randn(2, 256)),
    ]
    print("| network | parameters | forward FLOPs per sample |")
    print("|---|---|---|")
    for name, net, x in rows:
        params = sum(p.numel() for p in net.parameters())
        flops = forward_flops(net, x)
        print(f"| {name} | {params / 1e6:.3f} M | {flops / 1e6:,.1f} M |")


if __name__ == "__main__":
    main()
