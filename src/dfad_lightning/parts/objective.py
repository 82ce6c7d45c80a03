"""What the input-maker optimises: the adversarial term, priors on the teacher's answers, its warm-up."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from dfad_lightning import losses
from dfad_lightning.errors import ConfigError
from dfad_lightning.rules import Rule, check_arguments

Discrepancy = Callable[[Tensor, Tensor], Tensor]
Adversarial = Callable[[Tensor], Tensor]
Priors = Callable[[Tensor], Tensor]


def plain(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` as a plain :class:`functools.partial` if it is a subclass of one, else ``fn`` itself.

    Hydra's ``_partial_: true`` gives a partial that re-checks Hydra's target policy on every
    call, a cost comparable to a small network's update on a CPU; the target, arguments and
    result stay the same.
    """
    if isinstance(fn, partial) and type(fn) is not partial:
        return partial(fn.func, *fn.args, **fn.keywords)
    return fn


class Objective(nn.Module):
    """The input-maker's loss: an adversarial term of the discrepancy, plus priors on the teacher's outputs.

    The adversarial term (``-D`` by default) grows the discrepancy between teacher and student on
    the inputs; the priors need only the teacher and pull the inputs towards its data: confident
    answers (DAFL's one-hot), every class in a batch (DAFL's information entropy), and features
    whose statistics match the teacher's BatchNorm layers (DFQ's and DeepInversion's). With its
    defaults it is the paper's: ``-D`` alone.

    Args:
        teacher: The frozen teacher, whose BatchNorm layers the prior watches.
        adversarial: Turns the discrepancy D into the loss (``losses.negative`` is ``-D``).
        one_hot: Weight of :func:`~dfad_lightning.losses.one_hot` of the teacher's outputs.
        balance: Weight of :func:`~dfad_lightning.losses.class_balance` of the teacher's outputs.
        bn_prior: Weight of :class:`~dfad_lightning.losses.BatchNormPrior` of the teacher
            (nothing on a teacher without BatchNorm layers).
        warmup: The first iterations train the input-maker alone, one step each on the priors
            (no adversarial term, no student step): an integer is a number of iterations, a
            float below 1 a fraction of the run's. Needs a prior that acts; ``0``: none.
    """

    RULES: tuple[Rule, ...] = (
        Rule("one_hot", float, low=0, doc="weight of the one-hot (confidence) prior on the teacher's outputs"),
        Rule("balance", float, low=0, doc="weight of the class-balance prior on the teacher's outputs"),
        Rule("bn_prior", float, low=0, doc="weight of the BatchNorm-statistics prior of the teacher"),
        Rule("warmup", "count_or_fraction", doc="the first iterations train the input-maker alone on its priors"),
    )

    def __init__(
        self,
        teacher: nn.Module,
        adversarial: Adversarial = losses.negative,
        one_hot: float = 0.0,
        balance: float = 0.0,
        bn_prior: float = 0.0,
        warmup: float = 0,
    ) -> None:
        super().__init__()
        check_arguments(self.RULES, locals())
        self.adversarial = plain(adversarial)
        self.weights = {"balance": balance, "one_hot": one_hot, "bn_prior": bn_prior}
        self.bn_prior = losses.BatchNormPrior(teacher) if bn_prior else None
        self.warmup = warmup
        if warmup and not self.has_priors:
            raise ConfigError(
                "system.objective.warmup",
                "trains the generator on its priors alone, and none acts here: set system.objective.balance or "
                "system.objective.one_hot above 0 (system.objective.bn_prior acts only on a teacher with BatchNorm "
                "layers), or system.objective.warmup=0",
            )

    @property
    def anchored(self) -> bool:
        """Whether the BatchNorm prior acts: it keeps the inputs near the teacher's data (the "auto" options follow)."""
        return self.bn_prior is not None and len(self.bn_prior) > 0

    @property
    def has_priors(self) -> bool:
        """Whether any prior acts (the warm-up trains on them alone)."""
        return bool(self.weights["balance"] or self.weights["one_hot"] or self.anchored)

    def loss(self, student_out: Tensor, teacher_out: Tensor, discrepancy: Discrepancy, priors: Priors) -> Tensor:
        """The loss to minimise on one batch: the adversarial term of ``discrepancy`` plus ``priors``.

        The system passes its hooks (:meth:`~dfad_lightning.systems.DFAD.discrepancy`,
        :meth:`~dfad_lightning.systems.DFAD.priors`), so that a subclass's override of either counts here.
        """
        return self.adversarial(discrepancy(student_out, teacher_out)) + priors(teacher_out)

    def priors(self, teacher_out: Tensor) -> Tensor:
        """The weighted priors on the teacher's outputs (0 when none is set).

        Called right after the teacher's forward pass on the batch, whose BatchNorm statistics
        :class:`~dfad_lightning.losses.BatchNormPrior` recorded.
        """
        w = self.weights
        total = torch.zeros((), device=teacher_out.device)
        if w["balance"]:
            total = total + w["balance"] * losses.class_balance(teacher_out)
        if w["one_hot"]:
            total = total + w["one_hot"] * losses.one_hot(teacher_out)
        if self.bn_prior is not None:
            total = total + w["bn_prior"] * self.bn_prior.loss().to(teacher_out.device)
        return total


class DAFLObjective(Objective):
    """DAFL's generator loss (Chen et al. 2019): the teacher alone judges the inputs, the student is no part of it.

    ``one_hot * CE(T(x), argmax T(x)) - activation * mean|f_T(x)| + balance * (log C - H(p))``,
    where ``f_T`` are the teacher's features before its last linear layer and ``p`` the mean
    prediction over the batch: the base class's priors plus the activation loss.

    Args:
        teacher: The frozen teacher; its last ``nn.Linear`` layer's input is the feature.
        activation: Weight of the activation loss (DAFL: 0.1).
        one_hot: As :class:`Objective` (DAFL: 1).
        balance: As :class:`Objective` (DAFL: 5).
        **kwargs: As :class:`Objective`.
    """

    RULES = (*Objective.RULES, Rule("activation", float, low=0, doc="method=dafl: weight of the activation loss"))

    def __init__(
        self, teacher: nn.Module, activation: float = 0.1, one_hot: float = 1.0, balance: float = 5.0, **kwargs: Any
    ) -> None:
        check_arguments(self.RULES, {"activation": activation})
        super().__init__(teacher, one_hot=one_hot, balance=balance, **kwargs)
        self.activation = activation
        last_linear = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
        if not last_linear:
            raise ConfigError(
                "teacher", "DAFL needs a teacher whose last layer is an nn.Linear (its features feed the loss)"
            )
        self._features: Tensor | None = None
        last_linear[-1].register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._features = inputs[0]

    def loss(self, student_out: Tensor, teacher_out: Tensor, discrepancy: Discrepancy, priors: Priors) -> Tensor:
        """DAFL's loss on the teacher's outputs and features (no adversarial term: the student is not used)."""
        assert self._features is not None
        return priors(teacher_out) - self.activation * self._features.abs().mean()
