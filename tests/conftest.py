"""Shared fixtures: configs composed exactly as ``train.py`` composes them, shrunk to run in seconds."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

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
