"""What the input-maker optimises: the adversarial term, priors on the teacher's answers, its warm-up."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

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
        adversarial_discrepancy: The D of the adversarial term: ``None``, the student's own
            (the system's :meth:`~dfad_lightning.systems.DFAD.discrepancy`, as in DFAD), or
            another (DeepInversion's :func:`~dfad_lightning.losses.js_divergence`, CMI's
            :func:`~dfad_lightning.losses.agreeing_kl`).
        adversarial_weight: Weight of the adversarial term; ``0``: none (the teacher alone
            judges the inputs).
        one_hot: Weight of :func:`~dfad_lightning.losses.one_hot` of the teacher's outputs.
        one_hot_targets: What the one-hot prior asks of each sample: ``"argmax"``, the class the
            teacher already gives it (DAFL), or ``"balanced"``, a class of
            :func:`~dfad_lightning.losses.balanced_targets` (the inputs are made to be every class,
            as DeepInversion's).
        balance: Weight of :func:`~dfad_lightning.losses.class_balance` of the teacher's outputs.
        bn_prior: Weight of :class:`~dfad_lightning.losses.BatchNormPrior` of the teacher
            (nothing on a teacher without BatchNorm layers).
        tv: Weight of :func:`~dfad_lightning.losses.total_variation` of the inputs (smooth images).
        l2: Weight of the inputs' l2 norm (images of moderate intensity).
        warmup: The first iterations train the input-maker alone, on the priors (no adversarial
            term, no student step): an integer is a number of iterations, a float below 1 a
            fraction of the run's. Needs a prior that acts; ``0``: none.
    """

    RULES: tuple[Rule, ...] = (
        Rule("adversarial_weight", float, low=0, doc="weight of the adversarial term (0: the teacher alone judges)"),
        Rule("one_hot", float, low=0, doc="weight of the one-hot (confidence) prior on the teacher's outputs"),
        Rule("one_hot_targets", str, choices=("argmax", "balanced"),
             doc="the class the one-hot prior asks of each sample: the teacher's own, or balanced classes"),
        Rule("tv", float, low=0, doc="weight of the total-variation prior of the inputs"),
        Rule("l2", float, low=0, doc="weight of the l2-norm prior of the inputs"),
        Rule("balance", float, low=0, doc="weight of the class-balance prior on the teacher's outputs"),
        Rule("bn_prior", float, low=0, doc="weight of the BatchNorm-statistics prior of the teacher"),
        Rule("warmup", "count_or_fraction", doc="the first iterations train the input-maker alone on its priors"),
    )  # fmt: skip

    def __init__(
        self,
        teacher: nn.Module,
        adversarial: Adversarial = losses.negative,
        adversarial_discrepancy: Discrepancy | None = None,
        adversarial_weight: float = 1.0,
        one_hot: float = 0.0,
        one_hot_targets: Literal["argmax", "balanced"] = "argmax",
        balance: float = 0.0,
        bn_prior: float = 0.0,
        tv: float = 0.0,
        l2: float = 0.0,
        warmup: float = 0,
    ) -> None:
        super().__init__()
        check_arguments(self.RULES, locals())
        self.adversarial = plain(adversarial)
        self.adversarial_discrepancy = plain(adversarial_discrepancy) if adversarial_discrepancy else None
        self.adversarial_weight = adversarial_weight
        self.weights = {"balance": balance, "one_hot": one_hot, "bn_prior": bn_prior}
        self.one_hot_targets = one_hot_targets
        self.image_weights = {"tv": tv, "l2": l2}
        self.bn_prior = losses.BatchNormPrior(teacher) if bn_prior else None
        self.warmup = warmup
        if warmup and not self.has_priors:
            raise ConfigError(
                "system.objective.warmup",
                "trains the generator on its priors alone, and none acts here: set system.objective.balance, "
                "one_hot or tv above 0 (system.objective.bn_prior acts only on a teacher with BatchNorm layers), "
                "or system.objective.warmup=0",
            )

    @property
    def anchored(self) -> bool:
        """Whether the BatchNorm prior acts: it keeps the inputs near the teacher's data (the "auto" options follow)."""
        return self.bn_prior is not None and len(self.bn_prior) > 0

    @property
    def has_priors(self) -> bool:
        """Whether any prior acts (the warm-up trains on them alone)."""
        return bool(self.weights["balance"] or self.weights["one_hot"] or self.anchored or self.has_image_priors)

    @property
    def has_image_priors(self) -> bool:
        """Whether a prior on the inputs themselves acts (total variation, l2)."""
        return bool(self.image_weights["tv"] or self.image_weights["l2"])

    def loss(self, student_out: Tensor, teacher_out: Tensor, discrepancy: Discrepancy, priors: Priors) -> Tensor:
        """The loss to minimise on one batch: the adversarial term plus ``priors`` of the teacher's outputs.

        The system passes its hooks (:meth:`~dfad_lightning.systems.DFAD.discrepancy`,
        :meth:`~dfad_lightning.systems.DFAD.priors`), so that a subclass's override of either
        counts here; the adversarial term uses the student's discrepancy unless the objective
        has its own.
        """
        if not self.adversarial_weight:
            return priors(teacher_out)
        adversarial = self.adversarial((self.adversarial_discrepancy or discrepancy)(student_out, teacher_out))
        if self.adversarial_weight != 1.0:
            adversarial = self.adversarial_weight * adversarial
        return adversarial + priors(teacher_out)

    def image_priors(self, x: Tensor) -> Tensor:
        """The weighted priors on the inputs themselves (0 when none is set)."""
        w = self.image_weights
        total = torch.zeros((), device=x.device)
        if w["tv"]:
            total = total + w["tv"] * losses.total_variation(x)
        if w["l2"]:
            total = total + w["l2"] * torch.linalg.vector_norm(x)
        return total

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
            targets = None
            if self.one_hot_targets == "balanced":
                targets = losses.balanced_targets(len(teacher_out), teacher_out.shape[1]).to(teacher_out.device)
            total = total + w["one_hot"] * losses.one_hot(teacher_out, targets)
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
