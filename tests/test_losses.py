import pytest
import torch

from dfad_lightning import losses

DISCREPANCIES = [losses.mae, losses.mse, losses.mae_mse, losses.kl]


@pytest.mark.parametrize("fn", DISCREPANCIES)
@pytest.mark.parametrize("shape", [(4, 10), (2, 11, 8, 8)])  # classification logits, segmentation maps
def test_discrepancy_is_zero_for_equal_outputs_and_positive_otherwise(fn, shape):
    t = torch.randn(shape)
    assert fn(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert fn(t + torch.randn(shape), t).item() > 0
    assert fn(t, t).ndim == 0


def test_mae_is_mean_absolute_error_of_eq_2():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    assert losses.mae(s, t).item() == pytest.approx((s - t).abs().sum().item() / s.numel(), rel=1e-6)


def test_kl_matches_torch_kl_div_with_temperature_squared():
    s, t, temp = torch.randn(8, 10), torch.randn(8, 10), 4.0
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(s / temp, 1), torch.log_softmax(t / temp, 1), log_target=True, reduction="batchmean"
    )
    assert losses.kl(s, t, temperature=temp).item() == pytest.approx(expected.item() * temp**2, rel=1e-5)


@pytest.mark.parametrize("objective", [losses.negative, losses.negative_log1p])
def test_generator_objectives_fall_as_the_discrepancy_grows(objective):
    d = torch.tensor([0.0, 0.5, 1.0, 4.0])
    values = objective(d)
    assert torch.all(values[1:] < values[:-1])


def test_student_and_generator_gradients_oppose():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    (g_student,) = torch.autograd.grad(losses.mae(s, t), s)
    (g_generator,) = torch.autograd.grad(losses.negative(losses.mae(s, t)), s)
    assert torch.allclose(g_student, -g_generator)
