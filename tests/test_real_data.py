"""Real-data checks on ../shared/data (skipped where it is absent): real teachers, real MNIST."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA

from dfad_lightning.tasks import run

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
AKAMASTER = SHARED_DATA / "teachers" / "cifar10-akamaster"
QUIET = ["trainer.enable_progress_bar=false", f"paths.data_dir={SHARED_DATA}"]


@pytest.mark.parametrize(
    ("depth", "file", "at_least"),
    # Measured independently on this JPEG copy of the test set: 0.8103 (ResNet-56: 0.8320, through
    # the same loading path; left out of the suite for its 33 s on 2 cores).
    [(20, "resnet20-12fca82f.th", 0.81)],
)
def test_akamaster_teachers_score_as_measured_on_the_jpeg_cifar10_test_set(make_cfg, depth, file, at_least):
    cfg = make_cfg(
        "task=eval",
        "dataset=cifar10_folder",
        f"teacher=cifar_resnet{depth}_akamaster",
        f"teacher.checkpoint={AKAMASTER / file}",
        *QUIET,
        tiny=False,
    )
    results = run(cfg)
    assert results["samples"] == 10_000
    assert results["teacher"] >= at_least


@pytest.fixture(scope="module")
def mnist_teacher(tmp_path_factory, cache_dir):
    from conftest import compose_config

    out = tmp_path_factory.mktemp("mnist") / "teacher"
    # Half of dataset=mnist's six epochs (the cosine decay follows; two reached 0.9852): the whole
    # recipe reaches the paper's 0.989 (0.9918 in the README's panel), a minute more than the suite can spend.
    overrides = ["task=teacher", "dataset=mnist", "teacher.training.epochs=3", *QUIET]
    return run(compose_config(overrides, out, cache_dir))


def test_mnist_lenet5_teacher_recipe_nears_the_papers_accuracy_in_half_its_epochs(mnist_teacher):
    assert mnist_teacher["teacher"] >= 0.985  # paper: 0.989 (all six epochs: 0.9918)


def test_cpu_sized_dfad_on_real_mnist_beats_090(mnist_teacher, make_cfg):
    # A third of cpu_mnist's 300 iterations: enough to pass 0.90 (0.9351 measured; the README: the whole run).
    third = "trainer.max_epochs=2"
    cfg = make_cfg(
        "experiment=cpu_mnist", third, f"teacher.checkpoint={mnist_teacher['checkpoint']}", *QUIET, tiny=False
    )
    results = run(cfg)
    assert results["student"]["final"] > 0.90
    assert results["teacher"] == pytest.approx(mnist_teacher["teacher"])
