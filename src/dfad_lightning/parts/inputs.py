"""How inputs are made: a generator's samples (the paper), or images that no input-maker trains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from dfad_lightning.errors import ConfigError
from dfad_lightning.networks.generators import ScaleShift
from dfad_lightning.rules import Rule, check_arguments

if TYPE_CHECKING:
    from lightning.pytorch.core.optimizer import LightningOptimizer

    from dfad_lightning.systems.dfad import DFAD

# input_affine: its scale and shift learn at this multiple of the generator's LR, so that Adam
# (about one LR per step) can move them across their range within a warm-up.
INPUT_AFFINE_LR_FACTOR = 10.0


class Inputs(nn.Module):
    """Where the inputs of a run come from; subclasses say how they are made and, if at all, trained.

    ``sample`` makes a batch for the student (in the imitation stage, without gradients) and for
    pictures and probes; ``step`` is the generation stage, the input-maker's move against the
    student (or ``None`` where nothing is trained).

    Args:
        input_affine: Learn a scale and shift of every input where that can be learnt (a
            generator's samples); ``"auto"``: where the inputs are also anchored to the teacher's data.
        anchored: Whether the BatchNorm prior acts (set by the system).
    """

    uses_generator: ClassVar[bool] = False  # whether the run needs a generator network
    RULES = (
        Rule("input_affine", bool, also=("auto",),
             doc="a learnable scale and shift of every generated input; auto: where the BatchNorm prior acts"),
    )  # fmt: skip

    def __init__(self, input_affine: bool | Literal["auto"] = False, anchored: bool = False) -> None:
        super().__init__()
        check_arguments(self.RULES, {"input_affine": input_affine})
        wants = anchored if input_affine == "auto" else bool(input_affine)
        if wants and not self.uses_generator:
            raise ConfigError(
                "input_affine",
                f"{type(self).__name__} inputs have no learnt scale and shift: set it to false or auto",
                relative=True,
            )
        self.affine = ScaleShift() if wants else None

    @property
    def trains(self) -> bool:
        """Whether the inputs are trained (a generation stage, and a warm-up, run)."""
        return False

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """One batch of inputs from one batch of noise ``z`` ``(B, nz)`` (or, for real images, the batch itself)."""
        raise NotImplementedError

    def parameter_groups(self, system: DFAD) -> list[dict[str, Any]]:
        """The parameter groups the input-maker's optimizer trains (none where nothing is trained)."""
        return []

    def step(
        self, system: DFAD, z: Tensor, optimizer: LightningOptimizer | None, warmup: bool = False
    ) -> Tensor | None:
        """The generation stage on the noise ``z``: the input-maker's loss after its step, or ``None``."""
        return None


class Generated(Inputs):
    """The generator's samples ``G(z)``, optionally scaled and shifted by a learnt scale and shift.

    Generator-A's last BatchNorm gives its samples a standard deviation of 1, which is the
    teacher's input only where the dataset's mean and std standardise its data; a learnt scale
    and shift (:class:`~dfad_lightning.networks.ScaleShift`, trained with the generator at
    ``INPUT_AFFINE_LR_FACTOR`` times its LR) lets the BatchNorm prior set the contrast instead.

    Args:
        input_affine: Learn a scale and shift of every sample. ``"auto"``: where the inputs are
            anchored to the teacher's data (the BatchNorm prior acts), which alone tells the contrast.
        anchored: Whether the BatchNorm prior acts (set by the system).
    """

    uses_generator = True

    @property
    def trains(self) -> bool:
        """Always: the generator is trained in the generation stage."""
        return True

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """``G(z)``, scaled and shifted where the scale and shift are learnt."""
        assert system.generator is not None
        out: Tensor = system.generator(z)
        return out if self.affine is None else self.affine(out)

    def parameter_groups(self, system: DFAD) -> list[dict[str, Any]]:
        """The generator's weights, and the scale and shift at ``INPUT_AFFINE_LR_FACTOR`` times its LR."""
        assert system.generator is not None
        groups: list[dict[str, Any]] = [{"params": list(system.generator.parameters())}]
        if self.affine is not None:
            groups.append({"params": list(self.affine.parameters()), "lr_factor": INPUT_AFFINE_LR_FACTOR})
        return groups

    def step(
        self, system: DFAD, z: Tensor, optimizer: LightningOptimizer | None, warmup: bool = False
    ) -> Tensor | None:
        """One generator step on a fresh sample: on its priors alone in the warm-up, else on its whole loss.

        Gradients flow through teacher and student into the generator; toggling freezes the
        student's weights, so only the generator changes (and no student gradient is computed).
        The student stays in train mode, as in the authors' code: its BatchNorm uses, and records,
        this batch's statistics.
        """
        assert optimizer is not None
        with system.toggled_optimizer(optimizer):
            x = system.augment(system.synthesize(z))
            if warmup:
                loss = system.priors(system.teacher(x))
            else:
                loss = system.generator_loss(system.student(x), system.teacher(x))
            system.update(loss, optimizer)
        return loss


class NoiseImages(Inputs):
    """Standard normal images in the teacher's normalised input space (the paper's RANDOM baseline).

    Args:
        image_shape: ``(channels, height, width)`` of the images.
        **kwargs: As :class:`Inputs` (no scale and shift can be learnt here).
    """

    def __init__(self, image_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (channels, height, width), got {self.image_shape}")

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """Fresh noise images, as many as the noise batch has rows."""
        return torch.randn(len(z), *self.image_shape, device=z.device)


class RealImages(Inputs):
    """Real images that the training batches already are (KD on the original or on other data).

    It takes :class:`Inputs`' arguments; no scale and shift can be learnt here.
    """

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """The batch itself: images from a :class:`~dfad_lightning.data.TransferDataModule`."""
        return z
