"""The data-free fidelity signal: logged in every run, harmless to training, and enough for a run with no data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dfad_lightning.callbacks import DataFreeProbe
from dfad_lightning.callbacks.probe import sampling_noise
from dfad_lightning.errors import ConfigError
from dfad_lightning.networks import LeNet5
from dfad_lightning.tasks import run


@pytest.fixture
def fit_probed(make_system, fit):
    """Train the small system with ``callbacks`` for ``epochs``; return it and its trainer."""

    def probed(tmp_path, callbacks, epochs=3):
        system = make_system()
        return system, fit(system, tmp_path, epochs, callbacks=callbacks)

    return probed


def test_the_probe_logs_every_epoch_and_leaves_training_unchanged(tmp_path, fit_probed):
    probe = DataFreeProbe(tmp_path / "probes", nz=16, samples_per_snapshot=8, max_snapshots=2)
    probed, trainer = fit_probed(tmp_path, [probe])
    plain, _ = fit_probed(tmp_path, [])
    for a, b in zip(probed.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # snapshots and comparisons change no weight, statistic or random stream
    names = {
        "agreement",
        "mae",
        "latest_agreement",
        "latest_mae",
        "noise_agreement",
        "noise_mae",
        "latest_class_spread",
    }
    assert {f"val_datafree/{n}" for n in names} <= set(trainer.callback_metrics)
    assert [h["epoch"] for h in probe.history] == [0, 1, 2]
    assert all(0.0 <= h["agreement"] <= 1.0 and h["real"] is not None for h in probe.history)
    assert [h["probes"] for h in probe.history] == [8, 16, 16]  # the probe set's size, for the warnings' noise
    # Over max_snapshots, every other one is dropped, the newest kept: of epochs 0, 1, 2, epoch 1 goes.
    assert sorted(probe.snapshots) == [0, 2] and sorted(p.name for p in (tmp_path / "probes").iterdir()) == [
        "snapshot_000.pt",
        "snapshot_002.pt",
    ]
    assert probe.snapshots[2].shape == (8, 1, 32, 32)


def test_the_probe_set_is_fixed_noise_through_each_epochs_generator(tmp_path, make_system):
    probe = DataFreeProbe(tmp_path, nz=16, samples_per_snapshot=4)
    system = make_system()
    first, again = probe.snapshot(system, 0), probe.snapshot(system, 0)
    assert torch.equal(first, again) and not torch.equal(first, probe.snapshot(system, 1))


@pytest.mark.parametrize("recipe", ["robust", "paper"])  # selecting on the highest agreement, the lowest latest_mae
def test_every_run_reports_the_signal_and_keeps_the_checkpoint_it_selects(make_cfg, tmp_path, recipe):
    results = run(make_cfg(f"recipe={recipe}"))
    datafree = results["datafree"]
    assert 0.0 <= datafree["final"]["agreement"] <= 1.0 and datafree["selected_epoch"] in (0, 1)
    assert datafree["selected_real_score"] is not None
    assert datafree["selected_checkpoint"].endswith("datafree-best.ckpt")
    saved = torch.load(datafree["selected_checkpoint"], weights_only=True)
    assert saved["epoch"] == datafree["selected_epoch"] and not any(
        k.startswith("teacher.") for k in saved["state_dict"]
    )


@pytest.mark.parametrize(
    ("recipe", "monitor", "mode"), [("robust", "agreement", "max"), ("paper", "latest_mae", "min")]
)
def test_the_checkpoint_keeps_what_the_probe_selects(make_cfg, recipe, monitor, mode):
    callbacks = make_cfg(f"recipe={recipe}").callbacks
    assert (callbacks.datafree.monitor, callbacks.datafree.mode) == (monitor, mode)
    assert (callbacks.datafree_best.monitor, callbacks.datafree_best.mode) == (f"val_datafree/{monitor}", mode)
    mine = make_cfg("callbacks.datafree.monitor=latest_agreement", "callbacks.datafree.mode=max").callbacks
    assert (mine.datafree_best.monitor, mine.datafree_best.mode) == ("val_datafree/latest_agreement", "max")


def test_a_monitor_the_probe_does_not_measure_names_the_key_and_the_choices(make_cfg):
    """It used to end in Lightning's MisconfigurationException traceback from the checkpoint callback."""
    with pytest.raises(ConfigError, match=r"^callbacks\.datafree\.monitor: is 'accuracy', .*latest_mae, mae, noise_"):
        run(make_cfg("callbacks.datafree.monitor=accuracy"))


def test_the_probe_can_be_turned_off_with_its_selection(make_cfg):
    with pytest.raises(ConfigError, match=r"^callbacks\.datafree_best: .*callbacks\.datafree_best=null"):
        run(make_cfg("callbacks.datafree=null"))
    results = run(make_cfg("callbacks.datafree=null", "callbacks.datafree_best=null"))
    assert results["datafree"] is None and results["student"]["final"] is not None


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(LeNet5(1, 10).state_dict(), path)
    return path


def test_a_run_with_no_real_data_at_all(make_cfg, teacher_file, tmp_path, capsys):
    results = run(make_cfg("dataset=no_data", f"teacher.checkpoint={teacher_file}"))
    assert results["real_data"] is False and results["teacher"] is None and results["student"]["final"] is None
    assert results["objective"] == results["datafree"]["final"]["agreement"]
    assert (tmp_path / "run" / "checkpoints" / "datafree-best.ckpt").is_file()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["real_data"] is False
    assert "No real data was used to evaluate" in capsys.readouterr().out


@pytest.mark.parametrize(("task", "key"), [("teacher", "dataset.train"), ("eval", "dataset.test")])
def test_without_data_no_teacher_can_be_trained_or_scored(make_cfg, teacher_file, task, key):
    with pytest.raises(ConfigError, match=rf"^{key}: dataset=no_data has no"):
        run(make_cfg("dataset=no_data", f"task={task}", f"teacher.checkpoint={teacher_file}"))


def history(*agreements):
    return [{"epoch": e, "agreement": a} for e, a in enumerate(agreements)]


def test_the_signal_warns_when_the_student_stops_following_the_teacher(tmp_path):
    probe = DataFreeProbe(tmp_path, nz=16)
    probe.history = history(0.6, 0.8, 0.9, 0.91, 0.92)
    assert probe.warnings() == []  # rising: all well
    probe.history = history(0.6, 0.9, 0.82, 0.84, 0.8)
    (forgot,) = probe.warnings()
    assert "fell from 0.900 (epoch 1) to 0.800" in forgot and "forgot" in forgot
    probe.history = history(0.7, 0.9, 0.89, 0.87)
    (falling,) = probe.warnings()
    assert "fell over the last two epochs (0.900, 0.890, 0.870)" in falling
    probe.history = history(0.7, 0.934, 0.931, 0.93)
    assert probe.warnings() == []  # a few thousandths: noise, not a trend
    probe.history = history(0.2, 0.3, 0.4)
    (low,) = probe.warnings()
    assert "only 40%" in low
    probe.history = history(0.5, 0.6, 0.66)  # rising, but still far from the teacher
    (low,) = probe.warnings()
    assert "only 66%" in low
    probe.history = [*history(0.8, 0.9), {"epoch": 2, "agreement": 0.95, "latest_class_spread": 0.48}]
    (collapsed,) = probe.warnings()  # high agreement, but on samples of a few classes
    assert "class spread 0.48" in collapsed and "collapsed" in collapsed
    probe.history[-1]["latest_class_spread"] = 0.85
    assert probe.warnings() == []
    probe.history[-1]["latest_bn_gap"] = 0.9  # high agreement, on inputs unlike the teacher's data
    (elsewhere,) = probe.warnings()
    assert "unlike the teacher's data" in elsewhere and "0.90" in elsewhere and "dataset.mean" in elsewhere
    probe.history[-1]["latest_bn_gap"] = 0.2
    assert probe.warnings() == []


def test_a_fall_within_the_probes_sampling_noise_is_no_warning(tmp_path):
    probe = DataFreeProbe(tmp_path, nz=16)

    def counted(*pairs):
        return [{"epoch": e, "agreement": a, "probes": n} for e, (a, n) in enumerate(pairs)]

    # Falls only (floor=0: these agreements are low enough for that warning too).
    # A held-out run of the panel (grey_idx, seed 2) whose real accuracy rose every epoch:
    # 0.672 on 128 probes to 0.615 on 384 is a fall of 0.057, inside two standard errors (0.097).
    probe.history = counted((0.562, 64), (0.672, 128), (0.635, 192), (0.615, 384))
    assert probe.warnings(floor=0) == []
    # The same fall measured on 100 times as many probes is no accident.
    probe.history = counted((0.562, 6400), (0.672, 12800), (0.635, 19200), (0.615, 38400))
    (forgot,) = probe.warnings(floor=0)
    assert "fell from 0.672 (epoch 1) to 0.615" in forgot
    # Falling over the last two epochs: 0.026 on a few hundred probes is noise, on 10,000 it is not.
    probe.history = counted((0.609, 256), (0.597, 320), (0.583, 384))
    assert probe.warnings(floor=0) == []
    probe.history = counted((0.609, 10000), (0.597, 10000), (0.583, 10000))
    (falling,) = probe.warnings(floor=0)
    assert "fell over the last two epochs" in falling


def test_the_sampling_noise_is_two_standard_errors_that_shrink_with_the_probes():
    assert sampling_noise(0.6, 100, 0.6, 100) == pytest.approx(2 * math.sqrt(2 * (62 / 104) * (42 / 104) / 104))
    assert sampling_noise(0.6, 10000, 0.6, 10000) < sampling_noise(0.6, 100, 0.6, 100) / 9
    assert sampling_noise(1.0, 64, 1.0, 64) > 0.04  # a perfect score on 64 probes is not exact
    assert sampling_noise(0.9, None, 0.5, 100) == 0.0  # a history without counts: the old rule


def test_the_report_prints_the_warnings_with_what_to_try():
    from dfad_lightning.tasks.distill import report

    results = {
        "method": "DFAD", "recipe": "paper", "dataset": "idx", "metric": "acc", "iterations": 300,
        "wall_time_s": 80.0, "teacher": 0.877, "student": {"final": 0.43, "best": 0.58, "best_epoch": 2},
        "ratio": 0.49, "real_data": True, "output_dir": "out",
        "datafree": {"final": {"agreement": 0.5}, "selected_epoch": 2, "selected_checkpoint": "c.ckpt",
                     "warnings": ["the student's agreement ... fell"]},
    }  # fmt: skip
    text = report(results)
    assert "WARNING: the student's agreement ... fell" in text and "try recipe=robust" in text
    advice = report({**results, "recipe": "robust"}).split("WARNING")[1]
    assert "recipe=robust" not in advice
    assert advice.index("trainer.max_epochs") < advice.index("system.generator_optimizer.lr")  # longer first


class ClassOfInput(torch.nn.Module):
    """A "teacher" whose top-1 class is the value of the input's first pixel."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()


@pytest.mark.parametrize(
    ("classes", "expected"),
    [([0] * 20, 0.0), (list(range(10)) * 2, 1.0), ([0, 1] * 10, math.log(2) / math.log(10)), ([3, 7], 1.0)],
)
def test_the_class_spread_is_the_normalised_entropy_of_the_teachers_classes(tmp_path, classes, expected, make_system):
    system = make_system()
    system.teacher = ClassOfInput()
    inputs = torch.tensor(classes, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    probe = DataFreeProbe(tmp_path, nz=16, batch_size=8)  # several batches
    spread = probe.class_spread(system, inputs)
    assert spread == pytest.approx(expected, abs=1e-6)
    assert f"{spread:.2f}" != "-0.00"  # printed in the collapse warning


class Dense(torch.nn.Module):
    """A "teacher" with one score per class and pixel, like a segmentation network."""

    def forward(self, x):
        return torch.zeros(len(x), 5, 4, 4)


def test_dense_outputs_have_no_class_spread(tmp_path, make_system):
    system = make_system()
    system.teacher = Dense()
    assert system.top_classes(torch.zeros(3, 5, 4, 4)) is None
    assert DataFreeProbe(tmp_path, nz=16).class_spread(system, torch.zeros(3, 1, 4, 4)) is None


class Standardising(torch.nn.Module):
    """A "teacher" of one BatchNorm layer that learnt inputs of mean 1 and variance 4."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(2, eps=0.0)
        self.bn.running_mean.fill_(1.0)
        self.bn.running_var.fill_(4.0)
        self.eval()

    def forward(self, x):
        return self.bn(x).mean((2, 3))


def standardised(n, mean, std):
    """``n`` two-channel inputs whose every channel has exactly this mean and standard deviation."""
    x = torch.randn(n, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True, unbiased=False)
    return (x * std + mean).float()


@pytest.mark.parametrize(
    ("mean", "std", "expected"),
    [(1.0, 2.0, 0.0), (2.0, 2.0, 0.5), (1.0, 4.0, math.log(4)), (0.0, 1.0, 0.5 + math.log(4))],
)
def test_the_batchnorm_gap_measures_inputs_against_the_statistics_the_teacher_learnt(
    tmp_path, mean, std, expected, make_system
):
    system = make_system()
    system.teacher = Standardising()
    inputs = standardised(20, mean, std)
    whole = DataFreeProbe(tmp_path, nz=16).batchnorm_gap(system, inputs)
    in_batches = DataFreeProbe(tmp_path, nz=16, batch_size=3).batchnorm_gap(system, inputs)
    assert whole == pytest.approx(expected, abs=1e-5) and in_batches == pytest.approx(expected, abs=1e-5)
    assert not any(m._forward_hooks for m in system.teacher.modules())  # its hooks are gone again


def test_a_teacher_without_batchnorm_has_no_batchnorm_gap(tmp_path, make_system):
    assert DataFreeProbe(tmp_path, nz=16).batchnorm_gap(make_system(), torch.zeros(4, 1, 32, 32)) is None


def test_a_batchnorm_teacher_logs_the_batchnorm_gap_every_epoch(tmp_path, make_system, fit):
    probe = DataFreeProbe(tmp_path / "probes", nz=16, samples_per_snapshot=8)
    system = make_system(batchnorm_teacher=True)
    trainer = fit(system, tmp_path, 2, callbacks=[probe])
    gaps = [h["latest_bn_gap"] for h in probe.history]
    assert len(gaps) == 2 and all(g > 0 for g in gaps)
    assert trainer.callback_metrics["val_datafree/latest_bn_gap"] == pytest.approx(gaps[-1])


def test_the_signal_prefers_an_earlier_epoch_only_beyond_its_sampling_noise(tmp_path):
    probe = DataFreeProbe(tmp_path, nz=16, monitor="agreement", mode="max")
    probe.history = [{"epoch": 0, "agreement": 0.90, "probes": 512}, {"epoch": 1, "agreement": 0.60, "probes": 1024}]
    assert probe.preferred()["epoch"] == 0
    probe.history[1]["agreement"] = 0.88  # 0.02 below: within the noise of a few hundred probes
    assert probe.preferred() is None
    probe.history[1]["agreement"] = 0.95  # the last is the best: delivered as it is
    assert probe.selected()["epoch"] == 1 and probe.preferred() is None


def test_a_run_delivers_the_selected_student_where_the_signal_prefers_it(make_cfg, monkeypatch, capsys):
    from dfad_lightning.systems.dfad import FINAL_STUDENT_PREFIXES
    from dfad_lightning.tasks import main
    from dfad_lightning.weights import match_prefix

    monkeypatch.setattr(DataFreeProbe, "preferred", DataFreeProbe.selected)  # as if the signal rated it higher
    cfg = make_cfg("callbacks.datafree.monitor=latest_mae", "callbacks.datafree.mode=max")
    main(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    datafree = results["datafree"]
    assert datafree["delivered_selected"]
    delivered = torch.load(results["student_weights"], weights_only=True)
    kept = torch.load(datafree["selected_checkpoint"], weights_only=True)["state_dict"]
    selected = match_prefix(kept, delivered, FINAL_STUDENT_PREFIXES)
    assert delivered.keys() == selected.keys() and all(torch.equal(delivered[k], selected[k]) for k in selected)
    assert "student.pt holds the selected epoch's student" in capsys.readouterr().out
