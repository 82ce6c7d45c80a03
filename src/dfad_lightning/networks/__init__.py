"""Plain ``nn.Module`` networks: teachers, students and generators (no training logic here)."""

from dfad_lightning.networks.generators import GeneratorA, GeneratorB, ScaleShift
from dfad_lightning.networks.lenet import LeNet5, lenet5_half
from dfad_lightning.networks.named import timm_net, torchvision_net
from dfad_lightning.networks.resnet import (
    CifarResNet,
    ResNet8x,
    cifar_resnet,
    resnet18_8x,
    resnet34_8x,
    torchvision_resnet,
)
from dfad_lightning.networks.segmentation import deeplabv3

__all__ = [
    "CifarResNet",
    "GeneratorA",
    "GeneratorB",
    "LeNet5",
    "ResNet8x",
    "ScaleShift",
    "cifar_resnet",
    "deeplabv3",
    "lenet5_half",
    "resnet18_8x",
    "resnet34_8x",
    "timm_net",
    "torchvision_net",
    "torchvision_resnet",
]
