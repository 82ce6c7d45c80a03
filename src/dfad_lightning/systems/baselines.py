"""The paper's baselines (Tables 2 and 3) as small variations of the DFAD loop, not copies of it.

- :class:`DirectKD`: the student learns the teacher's outputs on given inputs, real images
  (KD-ORI on the original training data, KD-REL / KD-UNR on other data, with
  :class:`~dfad_lightning.data.TransferDataModule`) or random noise images (RANDOM); no generator.
- :class:`DAFL` (Chen et al. 2019): the generator is trained against the fixed teacher alone,
  with the one-hot, activation and information-entropy losses; the student learns on its samples.

All keep the base loop (``DFAD.training_step``): the *k* student steps are the same; what differs
is where inputs come from (:meth:`synthesize`) and what the generator learns (:meth:`generator_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dfad_lightning.rules import Rule, check_arguments
from dfad_lightning.systems.dfad import DFAD


class DirectKD(DFAD):
    """Distillation on inputs that no generator makes: real transfer data, or noise images.

    Args:
        *args: As :class:`DFAD`.
        inputs: ``"data"``: training batches are already images (from a
            :class:`~dfad_lightning.data.TransferDataModule`); ``"noise"``: standard normal images
            of ``image_shape`` (in the teacher's normalised input space), the RANDOM baseline.
        image_shape: ``(channels, height, width)`` of the noise images.
        **kwargs: As :class:`DFAD` (``train_generator`` is always off).
    """

    RULES = (
        *DFAD.RULES,
        Rule("inputs", str, choices=("data", "noise"), doc="method=kd_*: real images (data) or noise images (noise)"),
    )

    def __init__(self, *args: Any, inputs: str = "data", image_shape: Sequence[int] = (), **kwargs: Any) -> None:
        check_arguments(self.RULES, {"inputs": inputs})
        super().__init__(*args, **{**kwargs, "train_generator": False})
        if inputs == "noise" and len(image_shape) != 3:
            raise ValueError("inputs='noise' needs a (channels, height, width) image_shape")
        self.inputs = inputs
        self.image_shape = tuple(int(s) for s in image_shape)

    def synthesize(self, z: Tensor) -> Tensor:
        """The batch itself (real images), or fresh noise images of the batch's size."""
        if self.inputs == "data":
            return z
        return torch.randn(len(z), *self.image_shape, device=z.device)


class DAFL(DFAD):
    """Data-Free Learning of student networks (Chen et al. 2019), in the DFAD loop.

    The generator minimises ``one_hot * CE(T(x), argmax T(x)) - activation * mean|f_T(x)|
    + balance * (log C - H(p))`` of the mean teacher prediction ``p`` over the batch (the
    information-entropy loss: it wants balanced classes), where ``f_T`` are the teacher's
    features before its last linear layer: the base class's :meth:`~DFAD.priors` plus the
    activation loss. The student is never part of the generator's loss.

    Args:
        *args: As :class:`DFAD`.
        one_hot: Weight of the one-hot loss (DAFL: 1).
        activation: Weight of the activation loss (DAFL: 0.1).
        balance: Weight of the information-entropy loss (DAFL: 5).
        **kwargs: As :class:`DFAD`.
    """

    RULES = (*DFAD.RULES, Rule("activation", float, low=0, doc="method=dafl: weight of the activation loss"))

    def __init__(
        self, *args: Any, one_hot: float = 1.0, activation: float = 0.1, balance: float = 5.0, **kwargs: Any
    ) -> None:
        check_arguments(self.RULES, {"activation": activation})
        super().__init__(*args, **{**kwargs, "one_hot": one_hot, "balance": balance})
        self.activation = activation
        last_linear = [m for m in self.teacher.modules() if isinstance(m, nn.Linear)]
        if not last_linear:
            raise ValueError("DAFL needs a teacher whose last layer is an nn.Linear (its features feed the loss)")
        self._features: Tensor | None = None
        last_linear[-1].register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._features = inputs[0]

    def generator_loss(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        """DAFL's generator loss on the teacher's outputs and features (the student is not used)."""
        assert self._features is not None
        return self.priors(teacher_out) - self.activation * self._features.abs().mean()
