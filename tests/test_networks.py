import pytest
import torch

from dfad_lightning.networks import (
    GeneratorA,
    GeneratorB,
    LeNet5,
    cifar_resnet,
    lenet5_half,
    resnet18_8x,
    resnet34_8x,
    torchvision_resnet,
)


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


@pytest.mark.parametrize(
    ("factory", "params"),
    [(resnet18_8x, 11_173_962), (resnet34_8x, 21_282_122)],  # paper Table 6 layouts
)
def test_resnet_8x_shapes_and_parameter_counts(factory, params):
    net = factory(3, 10)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert n_params(net) == params


@pytest.mark.parametrize(("depth", "params"), [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)])
def test_cifar_resnets_have_he_et_al_sizes_and_parameter_free_shortcuts(depth, params):
    net = cifar_resnet(depth)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert n_params(net) == params  # akamaster: ResNet-20 0.27 M, ResNet-56 0.85 M
    assert not any("shortcut" in name for name, _ in net.named_parameters())


def test_cifar_resnet_rejects_depths_that_are_not_6n_plus_2():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_resnet(21)


@pytest.mark.parametrize("depth", [18, 34])
def test_torchvision_resnets_take_128px_and_any_number_of_channels(depth):
    net = torchvision_resnet(depth, in_channels=1, num_classes=101)
    assert net(torch.randn(2, 1, 128, 128)).shape == (2, 101)


# ---------------------------------------------------------------------------------------------
# Any architecture by name: torchvision and timm
# ---------------------------------------------------------------------------------------------


def test_torchvision_and_timm_networks_by_name_take_the_datasets_channels_and_classes():
    from dfad_lightning.networks import timm_net, torchvision_net

    x = torch.randn(2, 1, 32, 32)
    assert torchvision_net("resnet18", in_channels=1, num_classes=7)(x).shape == (2, 7)
    assert torchvision_net("mobilenet_v3_small", in_channels=1, num_classes=7).eval()(x).shape == (2, 7)
    assert timm_net("mobilenetv3_small_100", in_channels=1, num_classes=5).eval()(x).shape == (2, 5)


@pytest.mark.parametrize(("library", "name"), [("torchvision", "resnet5O"), ("timm", "mobilenetv3_smal_100")])
def test_an_unknown_architecture_names_the_key_and_the_closest_names(library, name):
    from dfad_lightning.errors import ConfigError
    from dfad_lightning.networks import timm_net, torchvision_net

    factory = {"torchvision": torchvision_net, "timm": timm_net}[library]
    with pytest.raises(ConfigError, match=rf"^teacher\.arch: {library} has no architecture '{name}' \(did you mean"):
        factory(name, key="teacher.arch")


def test_your_own_teacher_by_name_distils_with_no_data(make_cfg, tmp_path):
    from dfad_lightning.networks import torchvision_net
    from dfad_lightning.tasks import run

    weights = tmp_path / "my_resnet18.pt"
    torch.save({"model": torchvision_net("resnet18", in_channels=1, num_classes=10).state_dict()}, weights)
    cfg = make_cfg(
        "dataset=no_data", "teacher=torchvision", "teacher.arch=resnet18", f"teacher.checkpoint={weights}",
        "model=timm", "model.arch=mobilenetv3_small_050",
    )  # fmt: skip
    results = run(cfg)
    assert results["real_data"] is False and results["datafree"]["final"]["agreement"] >= 0.0
    student = torch.load(results["student_weights"], weights_only=True)
    assert any(k.startswith("conv_stem") for k in student)  # timm's layout


OWN_NET = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
"""


def test_your_own_module_file_is_teacher_and_student_by_its_import_path(make_cfg, tmp_path, monkeypatch):
    from dfad_lightning.tasks import run

    (tmp_path / "my_net.py").write_text(OWN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))  # as PYTHONPATH=<its folder> does for train.py
    from my_net import TinyNet

    weights = tmp_path / "teacher.pt"
    torch.save(TinyNet(width=16).state_dict(), weights)
    cfg = make_cfg(
        "dataset=no_data", "teacher=module", "teacher.net._target_=my_net.TinyNet", "+teacher.net.width=16",
        f"teacher.checkpoint={weights}", "model=module", "model._target_=my_net.TinyNet", "+model.width=4",
    )  # fmt: skip
    results = run(cfg)
    student = torch.load(results["student_weights"], weights_only=True)
    assert student["head.weight"].shape == (10, 4) and results["datafree"]["final"]["agreement"] >= 0.0


def test_your_own_module_unset_names_the_key(make_cfg):
    from dfad_lightning.errors import ConfigError
    from dfad_lightning.tasks import run

    with pytest.raises(ConfigError, match=r"^teacher\.net\._target_: must be set"):
        run(make_cfg("dataset=no_data", "teacher=module", "teacher.checkpoint=t.pt"))
