"""Every option of every config group composes, and what it configures can be built."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import CONF, ROOT
from hydra.utils import instantiate
from lightning import Trainer

from dfad_lightning.errors import ConfigError
from dfad_lightning.tasks.build import build_trainer, check_networks


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = [
    "dataset",
    "model",
    "teacher",
    "generator",
    "loss",
    "adversarial",
    "metric",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "experiment",
    "method",
    "schedule",
    "recipe",
    "size",
]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


# What the `module` options (your own nn.Module class by its import path) are given here.
OWN_CLASS = ["_target_=dfad_lightning.networks.LeNet5", "+{node}.in_channels=3", "+{node}.num_classes=10"]


def own_class(group: str, option: str) -> list[str]:
    """The overrides that complete the ``module`` option of ``group`` (none for the other options)."""
    node = "teacher.net" if group == "teacher" else "model"
    return (
        [o.format(node=node) if o.startswith("+") else f"{node}.{o}" for o in OWN_CLASS] if option == "module" else []
    )


def data_for(option: str) -> str:
    """The dataset a network option is meant for."""
    if option.startswith("deeplab"):
        return "camvid"
    return {"lenet5": "digits", "lenet5_half": "digits", "resnet34": "caltech101", "resnet18": "caltech101"}.get(
        option, "cifar10"
    )


@pytest.mark.parametrize("option", options("model"))
def test_model_options_build_students_that_predict_for_dataset_inputs(make_cfg, option):
    cfg = make_cfg(f"dataset={data_for(option)}", f"model={option}", *own_class("model", option))
    net = instantiate(cfg.model).eval()
    x = torch.randn(2, cfg.dataset.channels, *cfg.dataset.image_size)
    per_pixel = cfg.system._target_.endswith("SegmentationDFAD")
    expected = (2, cfg.dataset.num_classes, *cfg.dataset.image_size) if per_pixel else (2, cfg.dataset.num_classes)
    assert net(x).shape == expected


@pytest.mark.parametrize("option", options("teacher"))
def test_teacher_options_build_networks_and_carry_normalisation_and_recipe(make_cfg, option):
    cfg = make_cfg(f"dataset={data_for(option)}", f"teacher={option}", *own_class("teacher", option))
    assert isinstance(instantiate(cfg.teacher.net), torch.nn.Module)
    assert len(cfg.teacher.mean) == len(cfg.teacher.std) == cfg.dataset.channels
    assert instantiate(cfg.teacher.training.optimizer)([torch.nn.Parameter(torch.zeros(1))])


@pytest.mark.parametrize("option", options("generator"))
def test_generator_options_make_inputs_of_the_dataset_shape(make_cfg, option):
    cfg = make_cfg(f"generator={option}", "dataset.image_size=[32,32]")
    g = instantiate(cfg.generator)
    x = g(torch.randn(2, cfg.generator.nz))
    assert x.shape == (2, cfg.dataset.channels, 32, 32)


@pytest.mark.parametrize("option", options("loss"))
def test_loss_options_are_discrepancies(make_cfg, option):
    cfg = make_cfg(f"loss={option}")
    fn = instantiate(cfg.system.discrepancy)
    t = torch.randn(4, 10)
    assert fn(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert fn(t + torch.randn(4, 10), t).item() > 0


@pytest.mark.parametrize("method", options("method"))
@pytest.mark.parametrize("loss", options("loss"))
def test_every_method_takes_every_loss(make_cfg, method, loss):
    # A method that brings its own loss (Hinton's KD for kd_ori, kd_other, dafl) leaves no key of
    # it behind when the user picks another: `method=kd_ori loss=mae` once failed inside mae().
    cfg = make_cfg(f"method={method}", f"loss={loss}")
    fn = instantiate(cfg.system.discrepancy)
    t = torch.randn(4, 10)
    assert fn(t, t).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", ["kd_ori", "kd_other", "dafl"])
def test_the_kd_baselines_distil_at_temperature_4(make_cfg, method):
    assert make_cfg(f"method={method}").system.discrepancy.temperature == 4.0


PRIORS = ("one_hot", "balance", "bn_prior", "tv", "l2")


@pytest.mark.parametrize("method", ["dafl", "dfq", "zskt", "deepinversion", "cmi", "fast"])
def test_a_method_with_priors_of_its_own_keeps_them_under_the_robust_recipe(make_cfg, method):
    def priors(cfg):
        return {name: cfg.system.objective.get(name, 0.0) for name in PRIORS}

    assert priors(make_cfg(f"method={method}", "recipe=robust")) == priors(make_cfg(f"method={method}", "recipe=paper"))


@pytest.mark.parametrize("option", options("adversarial"))
def test_adversarial_options_turn_the_discrepancy_into_a_loss_to_minimise(make_cfg, option):
    cfg = make_cfg(f"adversarial={option}")
    objective = instantiate(cfg.system.objective.adversarial)
    assert objective(torch.tensor(2.0)) < objective(torch.tensor(1.0))


# What the generic datasets leave for the user to set (???).
REQUIRED = {
    "image_folder": ["dataset.root=/data/flowers", "dataset.image_size=[64,64]", "dataset.num_classes=5"],
    "split_folder": ["dataset.root=/data/cifar10/test", "dataset.image_size=[32,32]", "dataset.num_classes=10"],
    "idx": [
        "dataset.num_classes=10",
        *(f"dataset.files.{k}=/data/{k}.gz" for k in ("train_images", "train_labels", "test_images", "test_labels")),
    ],
}


@pytest.mark.parametrize("option", options("dataset"))
def test_dataset_options_declare_shapes_splits_metric_and_fitting_networks(make_cfg, option):
    cfg = make_cfg(f"dataset={option}", *REQUIRED.get(option, []))
    for key in (
        "name",
        "channels",
        "image_size",
        "num_classes",
        "mean",
        "std",
        "metric",
        "metric_name",
        "train",
        "test",
    ):
        assert key in cfg.dataset, key
    assert len(cfg.dataset.mean) == len(cfg.dataset.std) == cfg.dataset.channels
    assert instantiate(cfg.dataset.metric).higher_is_better is True
    for split in ("train", "test"):
        if option != "no_data":  # the one dataset without splits
            assert callable(instantiate(cfg.dataset[split]))  # a factory: nothing is read until a task runs
    check_networks(cfg, instantiate(cfg.teacher.net), instantiate(cfg.model), instantiate(cfg.generator))


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose_into_runnable_settings(make_cfg, option):
    cfg = make_cfg(f"experiment={option}", tiny=False)
    if option.startswith("paper_"):
        assert cfg.data.batch_size >= 64 and cfg.trainer.max_epochs >= 40
    check_networks(cfg, instantiate(cfg.teacher.net), instantiate(cfg.model), instantiate(cfg.generator))
    params = [torch.nn.Parameter(torch.zeros(1))]
    for key in ("student", "generator"):
        optimizer = instantiate(cfg.system[f"{key}_optimizer"])(params)
        if cfg.system[f"{key}_scheduler"] is not None:
            instantiate(cfg.system[f"{key}_scheduler"])(optimizer)


GENERIC = {"digits": [], "no_data": [], "idx": REQUIRED["idx"], "image_folder": REQUIRED["image_folder"],
           "split_folder": REQUIRED["split_folder"]}  # fmt: skip


@pytest.mark.parametrize("dataset", sorted(GENERIC))
def test_generic_datasets_train_with_the_robust_recipe(make_cfg, dataset):
    cfg = make_cfg(f"dataset={dataset}", *GENERIC[dataset], tiny=False)
    assert cfg.recipe.name == "robust" and cfg.method.name == "DFAD"
    system = cfg.system
    assert system.learning.replay_size > 0 and system.average.decay is not None and system.learning.reuse > 1
    assert system.objective.one_hot > 0 and system.objective.balance > 0 and system.objective.bn_prior > 0
    assert system.objective.tv > 0  # an image prior that needs no BatchNorm in the teacher
    assert system.learning.minibatches == "auto"  # finer updates where the BatchNorm prior acts
    assert system.inputs.input_affine == "auto"  # and a learnable contrast of the generated inputs
    # Your own data through the CPU-sized MNIST experiment, as a new user runs it: the recipe too.
    assert make_cfg("experiment=cpu_mnist", f"dataset={dataset}", *GENERIC[dataset]).recipe.name == "robust"
    # At the size the panel measures (size=cpu), unless the user asks for conf/train.yaml's (size=paper).
    sized = (cfg.data.batch_size, cfg.generator.ngf, cfg.system.channels_last, cfg.trainer.max_epochs)
    assert sized == (128, 16, True, 6)
    paper = make_cfg(f"dataset={dataset}", *GENERIC[dataset], "size=paper", tiny=False)
    assert (paper.data.batch_size, paper.generator.ngf, paper.system.channels_last) == (256, 64, False)


@pytest.mark.parametrize("experiment", [p.stem for p in sorted((CONF / "experiment").glob("paper_*.yaml"))])
def test_the_papers_settings_keep_the_papers_algorithm(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", tiny=False)
    assert cfg.recipe.name == "paper" and cfg.method.name == "DFAD"
    system = cfg.system
    assert system.average.decay is None and system.learning.replay_size == 0 and system.learning.reuse == 1
    assert system.learning.minibatches == 1 and system.inputs.input_affine is False
    assert system.objective.balance == system.objective.one_hot == system.objective.bn_prior == system.objective.tv == 0


def test_paper_rows_carry_table_7(make_cfg):
    rows = {
        "paper_mnist": ("mnist", 512, 0.01, 40, "LeNet5"),
        "paper_cifar10": ("cifar10", 256, 0.1, 500, "ResNet8x"),
        "paper_cifar100": ("cifar100", 256, 0.1, 500, "ResNet8x"),
        "paper_caltech101": ("caltech101", 64, 0.05, 300, "ResNet"),
    }
    for experiment, (dataset, batch, lr, epochs, student) in rows.items():
        cfg = make_cfg(f"experiment={experiment}", tiny=False)
        assert cfg.dataset.name == dataset
        assert (cfg.data.batch_size, cfg.system.student_optimizer.lr, cfg.trainer.max_epochs) == (batch, lr, epochs)
        assert cfg.system.generator_optimizer.lr == 1e-3
        assert type(instantiate(cfg.model)).__name__ == student
    assert (
        make_cfg("experiment=paper_cifar100", tiny=False).dataset.mean
        != make_cfg("experiment=paper_cifar10", tiny=False).dataset.mean
    )  # never CIFAR-10 statistics for CIFAR-100


@pytest.mark.parametrize("option", options("schedule"))
def test_schedule_options_set_both_schedules_over_the_run(make_cfg, option):
    cfg = make_cfg(f"schedule={option}", "trainer.max_epochs=4")
    for key in ("student", "generator"):
        node = cfg.system[f"{key}_scheduler"]
        if option == "constant":
            assert node is None
            continue
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = instantiate(node)(optimizer)
        for _ in range(4):  # stepped once per epoch
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_build_a_trainer_or_say_the_machine_cannot(make_cfg, option, tmp_path):
    cfg = make_cfg(f"trainer={option}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer"):
            build_trainer(cfg, tmp_path)
    else:
        assert isinstance(build_trainer(cfg, tmp_path), Trainer)


@pytest.mark.parametrize("option", options("metric"))
def test_metric_options_are_torchmetrics_with_a_name(make_cfg, option):
    cfg = make_cfg(f"metric={option}")
    assert instantiate(cfg.dataset.metric).higher_is_better is True
    assert cfg.dataset.metric_name


@pytest.mark.parametrize("group", ["logger", "callbacks", "paths"])
def test_support_groups_instantiate(make_cfg, group):
    for option in options(group):
        cfg = make_cfg(f"{group}={option}")
        node = cfg[group]
        if "_target_" in node:
            assert instantiate(node) is not None
        else:
            for child in node.values():
                if child is not None and "_target_" in child:
                    assert instantiate(child) is not None


def test_the_whole_default_config_instantiates_its_parts(make_cfg):
    cfg = make_cfg(tiny=False)
    assert cfg.task == "distill" and cfg.dataset.name == "digits"
    assert instantiate(cfg.data).batch_size == 128
    assert cfg.system.learning.steps == 5
    assert instantiate(cfg.system.student_optimizer)([torch.nn.Parameter(torch.zeros(1))]).defaults["momentum"] == 0.9


def test_help_lists_the_config_groups():
    out = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for group in GROUPS:
        assert f"{group}: " in out, group


@pytest.mark.parametrize(
    "option",
    [
        "system.average.decay=0.9",
        "system.learning.replay_size=64",
        "system.objective.balance=1",
        "system.objective.one_hot=1",
        "system.learning.reuse=2",
        "system.learning.minibatches=2",
        "system.inputs.input_affine=true",
    ],
)
def test_each_option_of_the_loop_runs_through_the_config(make_cfg, option):
    from dfad_lightning.tasks import run

    results = run(make_cfg(option))
    assert results["student"]["final"] is not None


def test_python_defaults_of_the_system_are_the_configs(make_cfg):
    """One default for each argument: DFAD's and its parts' signatures agree with conf/train.yaml.

    The recipe and the datasets override them; the paper's recipe on MNIST sets no system value.
    """
    import inspect

    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from dfad_lightning.systems import DFAD

    def same_defaults(cls, node, where):
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if parameter.default is inspect.Parameter.empty or name not in node:
                continue
            configured = node[name]
            if isinstance(configured, dict) and configured.get("_partial_") and "_target_" in configured:
                default = parameter.default
                if isinstance(default, type) and issubclass(default, torch.nn.Module):  # a part: its class and values
                    assert get_class(configured["_target_"]) is default, f"{where}.{name}"
                    same_defaults(default, configured, f"{where}.{name}")
                    continue
                built = instantiate(configured)([torch.zeros(1, requires_grad=True)])  # an optimizer factory
                expected = default([torch.zeros(1, requires_grad=True)])
                assert type(built) is type(expected), f"{where}.{name}"
                for key in ("lr", "weight_decay"):
                    assert built.defaults[key] == expected.defaults[key], f"{where}.{name}.{key}"
            elif not (isinstance(configured, str) and configured.startswith("${")):
                assert configured == parameter.default, f"{where}.{name}: the config says {configured!r}"

    cfg = make_cfg("recipe=paper", "dataset=mnist", tiny=False)
    same_defaults(DFAD, OmegaConf.to_container(cfg.system, resolve=False), "system")
