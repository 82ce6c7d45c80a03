"""Plain ``nn.Module`` networks: teachers, students and generators (no training logic here)."""

from dfad_lightning.networks.generators import GeneratorA, GeneratorB
from dfad_lightning.networks.lenet import LeNet5, lenet5_half

__all__ = ["GeneratorA", "GeneratorB", "LeNet5", "lenet5_half"]
