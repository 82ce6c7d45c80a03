"""Loading teacher weights: the layouts people have, and the mistakes they make."""

from __future__ import annotations

import pytest
import torch

from dfad_lightning.errors import ConfigError
from dfad_lightning.networks import CifarResNet, LeNet5, lenet5_half
from dfad_lightning.tasks import run
from dfad_lightning.weights import load_weights

KEY = "teacher.checkpoint"


def saved(tmp_path, obj, name="w.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,  # a plain state dict (what task=teacher writes)
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 91.0},  # akamaster
        lambda sd: {"state_dict": {f"teacher.{k}": v for k, v in sd.items()}, "epoch": 3},  # a Lightning checkpoint
        lambda sd: {"model": sd},
    ],
)
def test_common_checkpoint_layouts_load(tmp_path, wrap):
    source = LeNet5(1, 10)
    target = LeNet5(1, 10)
    load_weights(target, saved(tmp_path, wrap(source.state_dict())), KEY, "teacher")
    assert all(
        torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{KEY}: no file at .*nowhere\.pt"):
        load_weights(LeNet5(), tmp_path / "nowhere.pt", KEY, "teacher")


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ConfigError, match=rf"^{KEY}: .*notes\.txt is not a PyTorch checkpoint"):
        load_weights(LeNet5(), path, KEY, "teacher")


def test_a_whole_pickled_network_is_refused_with_how_to_save_its_weights(tmp_path):
    """``torch.save(model)``: loading it would run arbitrary code, so it is refused, with the way out."""
    with pytest.raises(ConfigError, match=r"pickles a dfad_lightning\.networks\.lenet\.LeNet5 object.*state_dict\(\)"):
        load_weights(LeNet5(), saved(tmp_path, LeNet5()), KEY, "teacher")


def test_a_torchscript_archive_is_refused_with_how_to_save_its_weights(tmp_path):
    path = tmp_path / "scripted.pt"
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, but such files are still handed around
        torch.jit.save(torch.jit.trace(LeNet5().eval(), torch.zeros(1, 1, 32, 32)), path)
    with pytest.raises(
        ConfigError, match=r"is a TorchScript archive, not weights: .*torch\.jit\.load\(PATH\)\.state_dict"
    ):
        load_weights(LeNet5(), path, KEY, "teacher")


def test_a_checkpoint_without_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"holds no weights.*'epoch'"):
        load_weights(LeNet5(), saved(tmp_path, {"epoch": 3}), KEY, "teacher")


def test_a_checkpoint_of_another_architecture_names_the_tensors(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(ConfigError, match=r"another architecture than LeNet5: 10 tensors missing.*features\.0\.weight"):
        load_weights(LeNet5(), saved(tmp_path, other.state_dict()), KEY, "teacher")


def test_a_checkpoint_of_another_architecture_names_both_ways_out(tmp_path, make_cfg):
    """The group that picks the architecture and the key that picks the file, as a user types them."""
    other = saved(tmp_path, CifarResNet(depth=8, in_channels=1).state_dict())
    with pytest.raises(ConfigError, match=r"^teacher\.checkpoint: .*Set teacher= to the architecture .*conf/teacher/"):
        run(make_cfg(f"teacher.checkpoint={other}"))


def test_a_checkpoint_of_another_width_names_the_first_mismatched_tensor(tmp_path):
    with pytest.raises(
        ConfigError, match=r"'features\.0\.weight' has shape \(3, 1, 5, 5\) in the file and \(6, 1, 5, 5\)"
    ):
        load_weights(LeNet5(), saved(tmp_path, lenet5_half().state_dict()), KEY, "teacher")


def test_a_checkpoint_with_other_input_channels_points_at_channels(tmp_path, make_cfg):
    path = saved(tmp_path, LeNet5(1, 10).state_dict())
    overrides = ["dataset.channels=3", "dataset.mean=[0.3,0.3,0.3]", "dataset.std=[0.3,0.3,0.3]"]
    with pytest.raises(ConfigError, match=r"\(6, 1, 5, 5\) in the file and \(6, 3, 5, 5\).*dataset\.channels"):
        run(make_cfg(f"teacher.checkpoint={path}", *overrides))


def test_a_checkpoint_with_another_number_of_classes_points_at_num_classes(tmp_path, make_cfg):
    path = saved(tmp_path, LeNet5(1, 10).state_dict())
    with pytest.raises(ConfigError, match=r"\(10, 84\) in the file and \(7, 84\).*dataset\.num_classes"):
        run(make_cfg(f"teacher.checkpoint={path}", "dataset.num_classes=7"))
