"""Any classification network of torchvision or timm, by name: a user's own teacher or student.

A teacher found online or trained on a user's own data is most often one of these. Both
factories build the network randomly initialised (weights come from ``teacher.checkpoint``;
nothing is downloaded), with the dataset's classes and channels.
"""

from __future__ import annotations

import difflib
from typing import cast

import torchvision
from torch import nn

from dfad_lightning.errors import ConfigError


def _unknown(library: str, arch: str, known: list[str], key: str) -> ConfigError:
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(known[:4])}"
    return ConfigError(key, f"{library} has no architecture {arch!r} ({hint})")


def torchvision_net(arch: str, in_channels: int = 3, num_classes: int = 10, key: str = "model.arch") -> nn.Module:
    """A torchvision classification network by name (``resnet50``, ``mobilenet_v3_small``, ...).

    Args:
        arch: The name ``torchvision.models.get_model`` takes.
        in_channels: Image channels; other than 3, the first convolution is replaced by one of
            the same shape that takes them.
        num_classes: Output logits.
        key: The config key named in errors.

    Raises:
        ConfigError: torchvision has no classification network of that name.
    """
    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise _unknown("torchvision", arch, known, key)
    net: nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(net, in_channels)
    return net


def _replace_first_conv(net: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel convolution for one taking ``in_channels`` (torchvision has no option for it)."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            conv = nn.Conv2d(
                in_channels,
                module.out_channels,
                cast(tuple[int, int], module.kernel_size),
                cast(tuple[int, int], module.stride),
                cast(tuple[int, int], module.padding),
                cast(tuple[int, int], module.dilation),
                module.groups,
                module.bias is not None,
            )
            setattr(parent, name.rpartition(".")[2], conv)
            return


def timm_net(arch: str, in_channels: int = 3, num_classes: int = 10, key: str = "model.arch") -> nn.Module:
    """A timm network by name (``mobilenetv3_small_100``, ``efficientnet_b0``, ``vit_tiny_patch16_224``, ...).

    Args:
        arch: The name ``timm.create_model`` takes.
        in_channels: Image channels.
        num_classes: Output logits.
        key: The config key named in errors.

    Raises:
        ConfigError: timm has no network of that name.
    """
    import timm

    known = timm.list_models()
    if arch not in known:
        raise _unknown("timm", arch, known, key)
    net: nn.Module = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    return net
