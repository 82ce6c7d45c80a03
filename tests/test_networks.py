import pytest
import torch

from dfad_lightning.networks import GeneratorA, GeneratorB, LeNet5, lenet5_half


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_lenet5_shapes_and_parameter_counts_of_table_5():
    x = torch.randn(2, 1, 32, 32)
    assert LeNet5(1, 10)(x).shape == (2, 10)
    assert lenet5_half(1, 10)(x).shape == (2, 10)
    # Table 5 layouts: 6/16/120 conv channels + 84 hidden (LeNet-5), 3/8/60 + 42 (half).
    assert n_params(LeNet5(1, 10)) == 61_706
    assert n_params(lenet5_half(1, 10)) == 15_738


@pytest.mark.parametrize("size", [32, (32, 48)])
def test_generator_a_makes_normalised_images_of_the_requested_size(size):
    g = GeneratorA(nz=64, channels=3, image_size=size, ngf=8)
    x = g(torch.randn(16, 64))
    h, w = (size, size) if isinstance(size, int) else size
    assert x.shape == (16, 3, h, w)
    # The final affine-free BatchNorm standardises every channel over the batch.
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_generator_b_allows_non_square_sizes_and_ends_in_tanh():
    g = GeneratorB(nz=32, channels=3, image_size=(64, 96), ngf=4)
    x = g(torch.randn(4, 32))
    assert x.shape == (4, 3, 64, 96)
    assert x.abs().max() <= 1


@pytest.mark.parametrize(("cls", "size", "factor"), [(GeneratorA, 30, 4), (GeneratorB, (64, 100), 16)])
def test_generators_refuse_sizes_they_cannot_make(cls, size, factor):
    with pytest.raises(ValueError, match=f"multiples of {factor}"):
        cls(nz=8, channels=1, image_size=size, ngf=4)
