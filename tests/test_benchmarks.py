"""The benchmarks: the speed benchmark in CI-sized form (its ratio is measured, never asserted: timings are
not tests), the GPU checks and the robustness panel composed, the panel's IDX setting built from images."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from dfad_lightning.data.images import IDXDataset, ImageFolderDataset


@pytest.mark.slow
def test_the_speed_benchmark_prints_both_implementations_and_their_ratio():
    cmd = [sys.executable, "benchmarks/speed.py", "--iterations", "2", "--warmup", "1", "--repeats", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| default")]
    assert [r[4].strip() for r in rows] == ["plain", "lightning"]
    assert float(rows[1][-2]) > 0  # the ratio Lightning / plain


@pytest.mark.slow
def test_every_command_of_the_gpu_checks_composes(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DRY": "1", "PY": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    composed = [line for line in done.stdout.splitlines() if line.startswith("composes: ")]
    assert len(composed) == 4, done.stdout[-2000:]


def load_panel():
    """``benchmarks/panel.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("panel", ROOT / "benchmarks" / "panel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_value(overrides: list[str], key: str, default: int) -> int:
    """The integer a run's ``overrides`` set ``key`` to (the last one wins, as in Hydra), or ``default``."""
    return next((int(o.split("=")[1]) for o in reversed(overrides) if o.startswith(f"{key}=")), default)


def test_every_run_of_the_panel_composes(make_cfg, tmp_path):
    # A setting's overrides (dataset, teacher) and a method's (method, recipe, system) touch
    # different groups, so every setting with the paper's game and the recipe, and every method
    # on the setting with the most overrides (the BatchNorm teacher), cover each override once.
    panel = load_panel()
    pairs = {(setting, method) for setting in panel.SETTINGS for method in ("dfad", "robust")}
    pairs |= {("mnist_bn", method) for method in panel.METHODS}
    for setting, method in sorted(pairs):
        dataset, overrides = panel.SETTINGS[setting], panel.METHODS[method]
        teacher = [] if setting in panel.OWN_TEACHER else [f"teacher.checkpoint={tmp_path / 't.pt'}"]
        filled = [o.format(data=tmp_path, out=tmp_path) for o in [*dataset, *teacher, *panel.SIZE, *overrides]]
        cfg = make_cfg(*filled, tiny=False)
        # The panel's size, but where a variant changes the batch or the generator's width on purpose.
        batch, ngf = own_value(overrides, "data.batch_size", 128), own_value(overrides, "generator.ngf", 16)
        assert cfg.data.batch_size == batch and cfg.generator.ngf == ngf, (setting, method)
        assert cfg.data.batch_size * cfg.trainer.max_epochs == 128 * 6, (setting, method)  # the same samples
        assert cfg.recipe.name == ("robust" if "recipe=robust" in overrides else "paper"), (setting, method)
    assert make_cfg(*[o.format(data=tmp_path, out=tmp_path) for o in panel.GREY_IDX]).dataset.name == "idx"


def test_a_variant_is_a_named_method_given_on_the_command_line(make_cfg, tmp_path):
    panel = load_panel()
    (name, overrides), *_ = panel.variants([["robust_ngf32", "recipe=robust generator.ngf=32"]]).items()
    assert name == "robust_ngf32" and overrides == ["recipe=robust", "generator.ngf=32"]
    cfg = make_cfg(*panel.SETTINGS["digits"], *panel.SIZE, *overrides, tiny=False)
    assert cfg.generator.ngf == 32 and cfg.recipe.name == "robust"
    done = subprocess.run(
        [sys.executable, "benchmarks/panel.py", "--data-dir", str(tmp_path), "--methods", "robust_ngf32"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown method robust_ngf32" in done.stderr and "--variant" in done.stderr


def test_a_setting_that_shares_a_teacher_loads_it_instead_of_training_another(tmp_path):
    panel = load_panel()
    (tmp_path / "teachers" / "mnist_bn").mkdir(parents=True)
    (tmp_path / "teachers" / "mnist_bn" / "results.json").write_text("{}")  # mnist_bn's teacher is trained
    overrides = panel.teacher_overrides("mnist_bn_lenet5", tmp_path / "data", tmp_path)
    assert overrides == [f"teacher.checkpoint={tmp_path / 'teachers' / 'mnist_bn' / 'teacher.pt'}"]
    assert not (tmp_path / "teachers" / "mnist_bn_lenet5").exists()


def test_a_failed_panel_run_is_reported_with_the_error_train_py_gave(tmp_path):
    panel = load_panel()
    says = "print('Epoch 0'); print('Error: data.batch_size: must be at least 2'); raise SystemExit(2)"
    message = r"^failed \(2\): .*; Error: data\.batch_size: must be at least 2; see .*run\.log$"
    with pytest.raises(RuntimeError, match=message):
        panel.execute([sys.executable, "-c", says], tmp_path / "run.log", threads=1)


def test_the_grey_idx_setting_is_the_cifar_split_in_grey_as_idx_files(tmp_path):
    panel = load_panel()
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "data" / "cifar10" / "test" / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / "cifar10" / "test" / name / f"{i:04d}.png")
    panel.write_grey_idx(tmp_path / "data", tmp_path / "out")

    split = json.loads((tmp_path / "out" / "cifar10-split.json").read_text())
    for part, n in (("train", 8), ("test", 2)):
        files = {k: tmp_path / "out" / "grey-idx" / f"{part}-{k}.gz" for k in ("images", "labels")}
        idx = IDXDataset(files["images"], files["labels"])
        folder = ImageFolderDataset(tmp_path / "data" / "cifar10" / "test", 28, channels=1, split=part,
                                    split_file=tmp_path / "out" / "cifar10-split.json")  # fmt: skip
        assert len(idx) == len(folder) == len(split[part]) == n
        for i in range(n):
            (x, y), (x_ref, y_ref) = idx[i], folder[i]
            assert x.shape == (1, 28, 28) and y == y_ref
            assert torch.allclose(x, x_ref, atol=0.5 / 255)


def test_the_grey3_idx_setting_keeps_its_classes_only_relabelled_from_0(tmp_path):
    panel = load_panel()
    rng = np.random.default_rng(0)
    for name in ("airplane", "automobile", "deer", "ship"):
        (tmp_path / "data" / "cifar10" / "test" / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / "cifar10" / "test" / name / f"{i:04d}.png")
    panel.write_grey3_idx(tmp_path / "data", tmp_path / "out")
    files = {k: tmp_path / "out" / "grey3-idx" / f"train-{k}.gz" for k in ("images", "labels")}
    idx = IDXDataset(files["images"], files["labels"])
    assert len(idx) == 3 * 4 and sorted(set(idx.targets.tolist())) == [0, 1, 2]  # 4 of each class's 5 train
    assert panel.GREY3_CLASSES == ("automobile", "deer", "ship")


def test_every_configuration_of_the_speed_benchmark_composes():
    spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    for name in speed.CONFIGS:
        cfg = speed.load_config(name)
        assert cfg.data.batch_size > 0 and cfg.system.learning.steps > 0, name
    panel = speed.load_config("panel_mnist_bn")
    assert (
        panel.data.batch_size == 128 and panel.recipe.name == "robust" and panel.system.learning.minibatches == "auto"
    )
