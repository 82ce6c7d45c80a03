import pytest
import torch
from torch import nn

from dfad_lightning import losses
from dfad_lightning.parts import DAFLObjective

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


# Priors of the generator's loss


def test_class_balance_is_zero_for_balanced_batches_and_grows_with_imbalance():
    balanced = torch.eye(10) * 20
    one_class = torch.zeros(10, 10)
    one_class[:, 3] = 20
    assert float(losses.class_balance(balanced)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.class_balance(one_class)) == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=1e-4)
    dense = torch.zeros(2, 3, 4, 4)  # segmentation: classes in dimension 1
    assert float(losses.class_balance(dense)) == pytest.approx(0.0, abs=1e-6)


def test_the_batchnorm_prior_records_only_passes_with_gradients():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).eval()
    prior = losses.BatchNormPrior(net)
    assert len(prior) == 2
    with torch.no_grad():
        net(torch.randn(8, 1, 8, 8))
    assert float(prior.loss()) == 0.0  # nothing recorded without gradients
    x = torch.randn(8, 1, 8, 8, requires_grad=True)
    net(x)
    loss = prior.loss()
    loss.backward()
    assert float(loss.detach()) > 0 and x.grad is not None and x.grad.abs().sum() > 0
    assert float(prior.loss()) == 0.0  # consumed


def test_the_batchnorm_prior_is_zero_on_data_with_the_layers_statistics():
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    prior = losses.BatchNormPrior(bn)
    torch.manual_seed(0)
    x = (torch.randn(512, 2, 16, 16) * 2 + 1).requires_grad_()
    bn(x)
    assert float(prior.loss().detach()) < 0.05
    bn(torch.randn(512, 2, 16, 16, requires_grad=True))
    assert float(prior.loss().detach()) > 2.0


@pytest.mark.parametrize(
    ("layer", "shape", "channels_last"),
    [
        (nn.BatchNorm2d(3), (16, 3, 8, 8), False),
        (nn.BatchNorm2d(3), (16, 3, 8, 8), True),
        (nn.BatchNorm1d(3), (16, 3), False),
    ],
)
def test_the_batchnorm_prior_is_the_distance_of_the_batchs_statistics_in_any_layout(layer, shape, channels_last):
    torch.manual_seed(0)
    layer.eval().running_mean.uniform_(-1, 1)
    layer.running_var.uniform_(0.5, 2)
    prior = losses.BatchNormPrior(layer)
    x = torch.randn(*shape) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer(x.requires_grad_())
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x.detach(), dim=dims, unbiased=False)
    expected = torch.linalg.vector_norm(mean - layer.running_mean) + torch.linalg.vector_norm(var - layer.running_var)
    assert torch.allclose(prior.loss(), expected, rtol=1e-5)


def test_the_batchnorm_prior_is_nothing_on_a_teacher_without_batchnorm(make_system):
    # make_system's teacher is a LeNet-5: the prior finds no layer and the generator's loss is the paper's.
    plain, primed = make_system(), make_system(objective={"bn_prior": 1.0})
    x = primed.generator(torch.randn(8, 16))
    s, t = primed.student(x), primed.teacher(x)
    assert torch.equal(primed.generator_loss(s, t), plain.generator_loss(s, t))


def test_priors_add_to_the_generators_loss_and_only_there(make_system):
    plain, primed = make_system(), make_system(objective={"balance": 2.0, "one_hot": 0.5})
    x = plain.generator(torch.randn(8, 16))
    s, t = plain.student(x), plain.teacher(x)
    expected = losses.negative(losses.mae(s, t)) + 2.0 * losses.class_balance(t) + 0.5 * losses.one_hot(t)
    assert torch.allclose(primed.generator_loss(s, t), expected)
    assert torch.equal(primed.discrepancy(s, t), plain.discrepancy(s, t))  # the student's loss is the paper's
    assert torch.equal(plain.generator_loss(s, t), losses.negative(losses.mae(s, t)))


def test_image_priors_add_to_the_synthesis_loss_in_the_game_and_the_warmup(make_system):
    plain, primed = (
        make_system(objective={"one_hot": 1.0}),
        make_system(objective={"one_hot": 1.0, "tv": 0.5, "l2": 0.01}),
    )
    x = plain.generator(torch.randn(8, 16))
    image = 0.5 * losses.total_variation(x) + 0.01 * torch.linalg.vector_norm(x)
    for warmup in (False, True):
        assert torch.allclose(primed.synthesis_loss(x, warmup), plain.synthesis_loss(x, warmup) + image)
    moved = x + torch.randn_like(x)  # the variation the input-maker trains on; the priors judge the batch itself
    assert torch.allclose(primed.synthesis_loss(moved, inputs=x), plain.synthesis_loss(moved) + image)


def test_the_total_variation_prior_smooths_the_generators_images(make_system):
    system = make_system(objective={"tv": 1.0, "adversarial_weight": 0.0})
    optimizer = torch.optim.Adam(system.generator.parameters(), lr=1e-2)
    z = torch.randn(8, 16)
    before = float(losses.total_variation(system.generator(z)))
    for _ in range(20):
        optimizer.zero_grad()
        system.synthesis_loss(system.generator(z)).backward()
        optimizer.step()
    assert float(losses.total_variation(system.generator(z))) < 0.8 * before


def test_the_batchnorm_prior_shapes_the_generators_gradient(make_system):
    grads = []
    for weight in (0.0, 1.0):
        system = make_system(batchnorm_teacher=True, objective={"bn_prior": weight})
        x = system.generator(torch.randn(8, 16))
        system.generator_loss(system.student(x), system.teacher(x)).backward()
        grads.append(system.generator.project.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
    primed = make_system(batchnorm_teacher=True, objective={"bn_prior": 1.0})
    assert primed.objective.bn_prior is not None and len(primed.objective.bn_prior) == 7


def test_dafl_is_the_priors_plus_its_activation_loss(make_system):
    system = make_system(objective=DAFLObjective)
    assert system.objective.weights == {"balance": 5.0, "one_hot": 1.0, "bn_prior": 0.0}
    x = system.generator(torch.randn(8, 16))
    t = system.teacher(x)
    features = system.objective._features
    expected = 5.0 * losses.class_balance(t) + losses.one_hot(t) - 0.1 * features.abs().mean()
    assert torch.allclose(system.generator_loss(system.student(x), t), expected)
