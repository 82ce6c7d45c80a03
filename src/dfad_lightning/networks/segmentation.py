"""Segmentation networks: DeepLabV3 from segmentation-models-pytorch."""

from __future__ import annotations

from typing import Literal

from torch import nn


def deeplabv3(
    encoder: str,
    num_classes: int,
    in_channels: int = 3,
    encoder_weights: str | None = None,
    output_stride: Literal[8, 16] = 8,
) -> nn.Module:
    """DeepLabV3 (Chen et al. 2017) with dilated convolutions and an ASPP head, as the paper uses.

    The paper's teacher is ``encoder="resnet50"``, its student ``encoder="mobilenet_v2"``. Inputs
    must have sides divisible by ``output_stride``; the network says so otherwise.

    Args:
        encoder: A segmentation-models-pytorch encoder name (``resnet50``, ``mobilenet_v2``, ...).
        num_classes: Output channels (classes, void excluded).
        in_channels: Input channels.
        encoder_weights: ``None`` (random initialisation, no download) or a name such as
            ``"imagenet"``, which downloads the encoder's pretrained weights.
        output_stride: 8 (the paper's, finer and slower) or 16.
    """
    import segmentation_models_pytorch as smp  # imported here: it is slow to import

    net: nn.Module = smp.DeepLabV3(
        encoder_name=encoder,
        encoder_weights=encoder_weights,
        encoder_output_stride=output_stride,
        in_channels=in_channels,
        classes=num_classes,
    )
    return net
