"""Discrepancies between teacher and student outputs, and the generator's adversarial objectives.

A *discrepancy* ``D(student_out, teacher_out)`` is what the student minimises. The generator
maximises the same discrepancy; an *adversarial objective* turns the discrepancy into the
generator's loss (a quantity to minimise). All functions take outputs of shape ``(B, C, ...)``
(class or channel dimension 1) and return a scalar tensor.

The paper's discrepancy is the mean absolute error (Eq. 2). Its classification scripts train the
generator on ``-D``, its segmentation scripts on ``-log(1 + D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
