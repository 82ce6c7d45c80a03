"""Shared fixtures and helpers.

Two ways to build what a test runs: configs composed exactly as ``train.py`` composes them,
shrunk to run in seconds (:func:`make_cfg`), and small systems built directly in Python
(:func:`make_system`, :func:`make_datamodule`, :func:`fit`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, open_dict
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from dfad_lightning.data import DFADDataModule, Digits
from dfad_lightning.networks import GeneratorA, LeNet5, cifar_resnet, lenet5_half
from dfad_lightning.parts import Generated, MovingAverage, Objective, StudentSteps
from dfad_lightning.systems import DFAD

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# Real data for the tests marked shared_data: DFAD_TEST_DATA, or the team's folder beside the checkout.
SHARED_DATA = Path(os.environ.get("DFAD_TEST_DATA", ROOT.parent / "shared" / "data"))

# A few iterations of a narrow generator on small batches: seconds on a CPU.
TINY = [
    "data.batch_size=16",
    "data.iterations_per_epoch=3",
    "trainer.max_epochs=2",
    "generator.ngf=8",
    "teacher.training.epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


K = 3  # student steps per iteration of the small systems (make_system, make_datamodule)


def snapshot(module: torch.nn.Module) -> dict[str, Any]:
    """A copy of a module's state (tensors, and extra state such as the memory's counters), to compare later."""
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in module.state_dict().items()}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two snapshots are bitwise equal."""
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], Tensor) else a[k] == b[k] for k in a
    )


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` like ``train.py`` does, with outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One teacher cache for the whole session: the tiny digits teacher is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path) -> Iterator[Callable[..., DictConfig]]:
    """Build a composed config; ``tiny=True`` (the default) shrinks it to a few seconds."""

    def make(*overrides: str, tiny: bool = True, output_dir: Path | None = None) -> DictConfig:
        return compose_config([*(TINY if tiny else []), *overrides], output_dir or tmp_path / "run", cache_dir)

    yield make
    GlobalHydra.instance().clear()


# The part each of make_system's dict arguments configures (its dict: that part's arguments).
PARTS = {"inputs": Generated, "objective": Objective, "learning": StudentSteps, "average": MovingAverage}


def build_system(cls: type[DFAD] = DFAD, batchnorm_teacher: bool = False, **kwargs: Any) -> DFAD:
    """A seeded system of small digit networks: LeNet-5 (or a BatchNorm ResNet-8) into LeNet-5-Half, k = K.

    A part given as a dict is that part's class with those arguments:
    ``build_system(learning={"reuse": 2}, average={"decay": 0.5})``; ``generator=None`` builds none.
    """
    L.seed_everything(0, verbose=False)
    kwargs.setdefault("student_optimizer", partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    learning = {"steps": K, **kwargs.pop("learning", {})} if isinstance(kwargs.get("learning", {}), dict) else None
    if learning is not None:
        kwargs["learning"] = learning
    for name, part in PARTS.items():
        if isinstance(kwargs.get(name), dict):
            kwargs[name] = partial(part, **kwargs[name])
    teacher = cifar_resnet(8, 1, 10).eval() if batchnorm_teacher else LeNet5(1, 10)
    student = lenet5_half(1, 10)
    generator = (
        kwargs.pop("generator") if "generator" in kwargs else GeneratorA(nz=16, channels=1, image_size=32, ngf=8)
    )
    return cls(
        teacher=teacher,
        student=student,
        generator=generator,
        metric=MulticlassAccuracy(num_classes=10, average="micro"),
        metric_name="acc",
        **kwargs,
    )


def build_datamodule(iterations: int = 4) -> DFADDataModule:
    """Noise for :func:`build_system` (batches of 8), ``iterations`` per epoch; the digits' test split to evaluate."""
    return DFADDataModule(
        nz=16,
        batch_size=8,
        student_steps=K,
        iterations_per_epoch=iterations,
        eval_dataset=partial(Digits, split="test"),
        mean=[0.3],
        std=[0.3],
    )


class SeesStudentInputs(DFAD):
    """A system that records the batch size of every student update and counts the imitation stage's labels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []
        self.labels = 0
        self.teacher.register_forward_hook(self._count)

    def _count(self, module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not torch.is_grad_enabled() and self.training:  # the teacher labels a student step's sample
            self.labels += 1

    def discrepancy(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        if torch.is_grad_enabled() and not teacher_out.requires_grad:  # a student update
            self.sizes.append(len(student_out))
        return super().discrepancy(student_out, teacher_out)


@pytest.fixture(scope="session")
def make_system() -> Callable[..., DFAD]:
    """Build a small seeded system: ``make_system(cls=DFAD, batchnorm_teacher=False, **arguments)``."""
    return build_system


@pytest.fixture(scope="session")
def make_datamodule() -> Callable[..., DFADDataModule]:
    """Build the small systems' datamodule: ``make_datamodule(iterations=4)``."""
    return build_datamodule


@pytest.fixture(scope="session")
def fit() -> Callable[..., L.Trainer]:
    """Train a system on the CPU: ``fit(system, root, epochs=2, datamodule=None, **trainer_arguments)``.

    No logger, no sanity evaluation; checkpoints only where a checkpoint callback is given. The
    datamodule defaults to :func:`build_datamodule`'s (4 iterations per epoch).
    """

    def run_fit(
        system: DFAD, root: Path, epochs: int = 2, datamodule: L.LightningDataModule | None = None, **kwargs: Any
    ) -> L.Trainer:
        saves = any(isinstance(cb, Checkpoint) for cb in kwargs.get("callbacks", []))
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=saves,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
            **kwargs,
        )
        trainer.fit(system, datamodule=datamodule or build_datamodule())
        return trainer

    return run_fit


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, share the cores between the workers instead of each taking all of them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip real-data tests where ``../shared/data`` is absent, and GPU tests without a GPU."""
    import torch

    skip_data = pytest.mark.skip(reason=f"{SHARED_DATA} is absent")
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if item.get_closest_marker("shared_data") and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
