"""LeNet-5 and LeNet-5-Half for 32x32 inputs (paper Table 5)."""

from __future__ import annotations

from torch import Tensor, nn


class LeNet5(nn.Module):
    """LeNet-5 as in the paper's Table 5, with a width multiplier for the half student.

    Args:
        in_channels: Image channels.
        num_classes: Output logits.
        width: Channel multiplier; ``0.5`` gives LeNet-5-Half (3/8/60 channels, 42 hidden units).

    Shapes:
        input ``(B, in_channels, 32, 32)``, output ``(B, num_classes)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, h = (max(1, round(c * width)) for c in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(c2, c3, kernel_size=5),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3, h),
            nn.ReLU(inplace=True),
            nn.Linear(h, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return class logits for a batch of images."""
        out: Tensor = self.classifier(self.features(x))
        return out


def lenet5_half(in_channels: int = 1, num_classes: int = 10) -> LeNet5:
    """LeNet-5-Half, the paper's MNIST student (half the channels of LeNet-5)."""
    return LeNet5(in_channels, num_classes, width=0.5)
