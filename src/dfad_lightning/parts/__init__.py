"""The parts of the loop, each instantiated by Hydra and owned by the system as a submodule.

- :mod:`~dfad_lightning.parts.inputs`: how inputs are made (a generator; a pool of optimised inputs; a
  meta-learned generator; noise or real images);
- :mod:`~dfad_lightning.parts.objective`: what the input-maker optimises (adversarial term, priors, warm-up);
- :mod:`~dfad_lightning.parts.learning`: how the student learns on them (steps, reuse, parts, replay);
- :mod:`~dfad_lightning.parts.average`: the student a run delivers (a moving average, or itself).
"""

from dfad_lightning.parts.average import MovingAverage
from dfad_lightning.parts.inputs import (
    ContrastivePool,
    Generated,
    InputPool,
    Inputs,
    MetaGenerator,
    NoiseImages,
    RealImages,
)
from dfad_lightning.parts.learning import StudentSteps
from dfad_lightning.parts.memory import ReplayMemory
from dfad_lightning.parts.objective import DAFLObjective, Objective

__all__ = [
    "ContrastivePool",
    "DAFLObjective",
    "Generated",
    "InputPool",
    "Inputs",
    "MetaGenerator",
    "MovingAverage",
    "NoiseImages",
    "Objective",
    "RealImages",
    "ReplayMemory",
    "StudentSteps",
]
