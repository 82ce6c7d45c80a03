"""Discrepancies between teacher and student outputs, and the generator's adversarial objectives.

A *discrepancy* ``D(student_out, teacher_out)`` is what the student minimises. The generator
maximises the same discrepancy; an *adversarial objective* turns the discrepancy into the
generator's loss (a quantity to minimise). All functions take outputs of shape ``(B, C, ...)``
(class or channel dimension 1) and return a scalar tensor.

The paper's discrepancy is the mean absolute error (Eq. 2). Its classification scripts train the
generator on ``-D``, its segmentation scripts on ``-log(1 + D)``.

*Priors* are further terms of the generator's loss that ask its samples to look like the teacher's
data rather than only to be hard: :func:`class_balance` and :func:`one_hot` (DAFL, DFQ) on the
teacher's outputs, and :class:`BatchNormPrior` (DFQ, DeepInversion) on its BatchNorm statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mae(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean absolute error of the outputs: the paper's ``(1/n) ||T(x) - S(x)||_1`` (Eq. 2).

    >>> mae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]]))
    tensor(1.5000)
    """
    return F.l1_loss(student, teacher)


def mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error of the outputs.

    >>> mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]]))
    tensor(2.5000)
    """
    return F.mse_loss(student, teacher)


def mae_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """The sum of :func:`mae` and :func:`mse` (the paper's "MSE+MAE" in Fig. 4).

    >>> mae_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]]))
    tensor(4.)
    """
    return mae(student, teacher) + mse(student, teacher)


def kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton's distillation loss: ``T^2 KL(softmax(t/T) || softmax(s/T))`` over dimension 1.

    The divergence is summed over classes and averaged over every other position (samples, and
    pixels for segmentation). The ``T^2`` factor keeps gradient magnitudes comparable across
    temperatures.

    >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
    >>> kl(logits, logits)
    tensor(0.)
    >>> bool(kl(torch.zeros(1, 3), logits, temperature=4.0) > 0)
    True
    """
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    log_p_student = F.log_softmax(student / temperature, dim=1)
    divergence = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return divergence.mean() * temperature**2


def js_divergence(student: Tensor, teacher: Tensor, temperature: float = 3.0) -> Tensor:
    """Jensen-Shannon divergence of the softened outputs: DeepInversion's competition term (its temperature 3).

    Symmetric and bounded, so the input-maker can raise it without the unbounded gradients of a
    KL divergence. Summed over dimension 1 and averaged over the other positions.

    >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
    >>> float(js_divergence(logits, logits))
    0.0
    >>> 0 < float(js_divergence(torch.tensor([[9.0, 0.0]]), torch.tensor([[0.0, 9.0]]))) <= math.log(2)
    True
    """
    p = F.softmax(student / temperature, dim=1)
    q = F.softmax(teacher / temperature, dim=1)
    m = 0.5 * (p + q)
    log_m = m.clamp_min(1e-12).log()
    kl_pm = (p * (p.clamp_min(1e-12).log() - log_m)).sum(1)
    kl_qm = (q * (q.clamp_min(1e-12).log() - log_m)).sum(1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def agreeing_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """:func:`kl` counted only on the positions where student and teacher pick the same class (CMI, Fast).

    The input-maker then pushes the student away on samples it still gets right, not on those it
    already gets wrong. Averaged over every position (the others count as 0).

    >>> s, t = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    >>> bool(agreeing_kl(s, t) > 0), bool(agreeing_kl(s[1:], t[1:]) == 0)
    (True, True)
    """
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    log_p_student = F.log_softmax(student / temperature, dim=1)
    divergence = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    agree = (student.argmax(1) == teacher.argmax(1)).to(divergence.dtype)
    return (divergence * agree).mean() * temperature**2


def negative(discrepancy: Tensor) -> Tensor:
    """Generator objective ``-D``: the authors' classification scripts.

    >>> negative(torch.tensor(0.5))
    tensor(-0.5000)
    """
    return -discrepancy


def negative_log1p(discrepancy: Tensor) -> Tensor:
    """Generator objective ``-log(1 + D)``: the authors' segmentation scripts.

    The logarithm damps the generator's gradient when the discrepancy is large, which keeps
    dense outputs from running away.

    >>> negative_log1p(torch.tensor(0.0))
    tensor(-0.)
    >>> round(float(negative_log1p(torch.tensor(1.0))), 4)
    -0.6931
    """
    return -torch.log1p(discrepancy)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, ignore_index: int = -100) -> Tensor:
    """Focal loss (Lin et al. 2017) of class logits ``(B, C, ...)`` against indices ``(B, ...)``.

    ``mean((1 - p_t)^gamma * CE)`` over the positions whose target is not ``ignore_index``; it
    down-weights easy pixels, which is how the authors trained their segmentation teachers
    (gamma 2). With ``gamma=0`` it is the cross-entropy.

    >>> logits, target = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    >>> bool(torch.isclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target)))
    True
    >>> bool(focal_loss(logits, target) < F.cross_entropy(logits, target))
    True
    """
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_index)
    kept = target != ignore_index
    p_t = torch.exp(-ce)
    loss = (1.0 - p_t).pow(gamma) * ce
    return loss[kept].sum() / kept.sum().clamp(min=1)


def class_balance(logits: Tensor) -> Tensor:
    """How far the batch's mean prediction is from uniform: ``log C - H(mean softmax)``, at least 0.

    DAFL's information-entropy loss (plus the constant ``log C``, so that a batch spread evenly
    over the ``C`` classes scores 0). The mean is over samples and, for dense outputs, positions.

    >>> float(class_balance(torch.eye(4)))  # one sample of each class: balanced
    0.0
    >>> round(float(class_balance(10 * torch.tensor([[1.0, 0.0], [1.0, 0.0]]))), 3)  # all of class 0
    0.693
    """
    classes = logits.shape[1]
    mean_p = logits.movedim(1, -1).reshape(-1, classes).softmax(1).mean(0)
    return math.log(classes) + (mean_p * mean_p.clamp_min(1e-12).log()).sum()


def one_hot(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Cross-entropy of the outputs against their own argmax (DAFL), or against ``targets`` (DeepInversion).

    Low when each prediction is confident, or is the class asked of it.

    >>> bool(one_hot(torch.tensor([[9.0, 0.0]])) < one_hot(torch.tensor([[0.1, 0.0]])))
    True
    >>> bool(one_hot(torch.tensor([[9.0, 0.0]]), torch.tensor([1])) > 5)
    True
    """
    return F.cross_entropy(logits, logits.argmax(1) if targets is None else targets)


def balanced_targets(batch_size: int, classes: int) -> Tensor:
    """One class per sample, every class as often as the batch allows: ``0, 1, ..., C - 1, 0, 1, ...``.

    The classes a batch of optimised inputs is asked to become (DeepInversion draws them at
    random; these are balanced and need no random stream).

    >>> balanced_targets(5, 3).tolist()
    [0, 1, 2, 0, 1]
    """
    return torch.arange(batch_size) % classes


def total_variation(x: Tensor) -> Tensor:
    """The mean absolute difference of neighbouring pixels, along rows, columns and diagonals (DeepInversion's).

    Low for smooth images, high for pixel noise.

    >>> float(total_variation(torch.ones(1, 1, 4, 4)))
    0.0
    >>> float(total_variation(torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])))  # across and along: 1 each
    2.0
    """
    return (
        (x[..., :, :-1] - x[..., :, 1:]).abs().mean()
        + (x[..., :-1, :] - x[..., 1:, :]).abs().mean()
        + (x[..., 1:, :-1] - x[..., :-1, 1:]).abs().mean()
        + (x[..., :-1, :-1] - x[..., 1:, 1:]).abs().mean()
    )


def attention_maps(features: list[Tensor]) -> list[Tensor]:
    """Each feature map's ``(B, C, H, W)`` spatial attention: its channels' mean square, flattened and normalised.

    Zagoruyko and Komodakis's attention (2017), which ZSKT transfers from teacher to student.

    >>> tuple(attention_maps([torch.ones(2, 3, 4, 4)])[0].shape)
    (2, 16)
    """
    return [F.normalize(f.float().pow(2).mean(1).flatten(1), dim=1) for f in features]


def attention_transfer(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """The mean squared difference of student and teacher attention maps, summed over pairs of stages (ZSKT).

    Stages are paired from the deepest up, as many as the shallower network has; where a pair's
    sizes differ, the finer map is average-pooled to the coarser one.

    >>> maps = [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 4, 4)]
    >>> float(attention_transfer(maps, maps))
    0.0
    >>> bool(attention_transfer([torch.rand(2, 3, 8, 8)], [torch.rand(2, 5, 16, 16)]) > 0)
    True
    """
    pairs = list(zip(reversed(student), reversed(teacher), strict=False))
    total = torch.zeros((), device=student[0].device if student else None)
    for s, t in pairs:
        size = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
        s, t = (F.adaptive_avg_pool2d(f, size) if f.shape[-2:] != size else f for f in (s, t))
        a_s, a_t = attention_maps([s, t])
        total = total + (a_s - a_t).pow(2).mean()
    return total


def per_channel(x: Tensor) -> Tensor:
    """``x`` of shape ``(B, C, ...)`` as ``(everything else, C)``: one column per channel.

    A view for channels-last activations (the layout ``system.channels_last`` gives), a copy otherwise.

    >>> per_channel(torch.arange(8.0).view(2, 2, 2)).tolist()
    [[0.0, 2.0], [1.0, 3.0], [4.0, 6.0], [5.0, 7.0]]
    """
    return x.movedim(1, -1).reshape(-1, x.shape[1])


class BatchNormPrior:
    """The BatchNorm-statistics prior of DFQ (Choi et al. 2020) and DeepInversion (Yin et al. 2020).

    Forward hooks on every ``BatchNorm`` layer of a (frozen) network record, for each forward pass
    run with gradients, ``||mean_batch - running_mean||_2 + ||var_batch - running_var||_2`` of the
    layer's input over the batch and positions: how far a batch's feature statistics are from
    those of the data the network was trained on. :meth:`loss` sums them over the layers of the
    last such pass. Passes without gradients (the student steps, evaluation) cost nothing.

    Args:
        net: The network whose BatchNorm layers are watched (the teacher).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).eval()
    >>> prior = BatchNormPrior(net)
    >>> _ = net(torch.randn(8, 1, 4, 4).requires_grad_())
    >>> bool(prior.loss() > 0), len(prior)
    (True, 1)
    """

    def __init__(self, net: nn.Module) -> None:
        self.layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._terms: dict[int, Tensor] = {}
        for index, layer in enumerate(self.layers):
            layer.register_forward_hook(self._hook(index))

    def __len__(self) -> int:
        return len(self.layers)

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            x = per_channel(inputs[0].float())
            # Two passes (mean, then mean squared deviation): faster than torch.var along this axis
            # on the CPU (benchmarks/speed.py), and as exact.
            mean = x.mean(0)
            var = (x - mean).square().mean(0)
            running_mean, running_var = cast(Tensor, module.running_mean), cast(Tensor, module.running_var)
            self._terms[index] = torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(
                var - running_var
            )

        return record

    def loss(self) -> Tensor:
        """The sum over layers recorded in the last forward pass with gradients (0 if the network has none)."""
        terms = list(self._terms.values())
        self._terms = {}
        return torch.stack(terms).sum() if terms else torch.zeros(())
