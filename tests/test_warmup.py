"""The generator warm-up: the first iterations train the generator alone, on its priors."""

from __future__ import annotations

import pytest
from conftest import K, same, snapshot

from dfad_lightning.errors import ConfigError
from dfad_lightning.systems import DFAD
from dfad_lightning.tasks import main, run


class WatchesIterations(DFAD):
    """Records, per iteration, whether the student and the generator changed, and the discrepancy's calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.changed: list[tuple[bool, bool]] = []
        self.discrepancies: list[int] = []

    def on_train_batch_start(self, batch, batch_idx):
        self._before = snapshot(self.student), snapshot(self.generator)
        self._calls = 0

    def discrepancy(self, student_out, teacher_out):
        self._calls += 1
        return super().discrepancy(student_out, teacher_out)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        student, generator = self._before
        self.changed.append((not same(snapshot(self.student), student), not same(snapshot(self.generator), generator)))
        self.discrepancies.append(self._calls)


def test_in_the_warmup_only_the_generator_trains_and_on_its_priors_alone(tmp_path, make_system, fit):
    # 2 epochs of 4 iterations; the warm-up crosses the first epoch's end.
    system = make_system(cls=WatchesIterations, objective={"warmup": 5, "balance": 1.0}, average={"decay": 0.5})
    trainer = fit(system, tmp_path, epochs=2)
    assert system.changed == [(False, True)] * 5 + [(True, True)] * 3
    assert system.discrepancies == [0] * 5 + [K + 1] * 3  # no student, no adversarial term in the warm-up
    assert int(system.average.model.n_averaged) == 3  # the average follows the student's updates only
    assert trainer.global_step == 5 + 3 * (K + 1)  # a warm-up iteration is one optimizer step
    assert system.iterations(trainer.global_step) == 8 and system.iterations(3) == 3


def test_a_fractional_warmup_is_that_share_of_the_runs_iterations(tmp_path, make_system, fit):
    system = make_system(cls=WatchesIterations, objective={"warmup": 0.4, "balance": 1.0})
    trainer = fit(system, tmp_path, epochs=2)  # 8 iterations: round(0.4 * 8) = 3 in the warm-up
    assert system.warmup_iterations == 3
    assert system.changed == [(False, True)] * 3 + [(True, True)] * 5
    assert system.iterations(trainer.global_step) == 8


def test_a_fractional_warmup_of_a_run_without_an_end_is_refused_naming_the_key(tmp_path, make_system, fit):
    system = make_system(objective={"warmup": 0.4, "balance": 1.0})
    with pytest.raises(ConfigError, match=r"^system\.objective\.warmup: a fraction of the run \(0\.4\) needs a run"):
        fit(system, tmp_path, epochs=-1, max_steps=8)  # no epoch limit: the run's length is not known


def test_a_run_with_a_warmup_counts_its_iterations(make_cfg, tmp_path):
    for warmup in ("4", "0.5"):  # 2 epochs of 3 iterations: 4, or half of them, in the warm-up
        cfg = make_cfg(f"system.objective.warmup={warmup}", "system.objective.balance=1", output_dir=tmp_path / warmup)
        results = run(cfg)
        assert results["iterations"] == 6 and results["student"]["final"] is not None


def test_the_warmup_needs_a_prior_to_train_on(make_system):
    with pytest.raises(ValueError, match=r"set system\.objective\.balance, one_hot or tv above 0"):
        make_system(objective={"warmup": 2})
    with pytest.raises(ValueError, match="BatchNorm"):  # LeNet-5 has none: the prior cannot train anything
        make_system(objective={"warmup": 2, "bn_prior": 1.0})
    for bad in (-1, 1.0, 1.5):  # a count below 0; a fraction of the run of 1 or more
        with pytest.raises(ConfigError, match=r"^objective\.warmup: must be an integer of at least 0 \(iterations\)"):
            make_system(objective={"warmup": bad, "balance": 1.0})


def test_a_warmup_without_a_prior_is_one_line_naming_the_key(make_cfg, capsys):

    with pytest.raises(SystemExit) as done:
        main(
            make_cfg(
                "system.objective.warmup=2",
                "system.objective.balance=0",
                "system.objective.one_hot=0",
                "system.objective.bn_prior=1",
                "system.objective.tv=0",
            )
        )
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith("Error: system.objective.warmup: trains the generator on its priors alone")


def test_a_warmup_as_long_as_the_run_is_refused_naming_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"^system\.objective\.warmup: 6 warm-up iterations leave the student none"):
        run(make_cfg("system.objective.warmup=6"))  # 2 epochs of 3 iterations
    assert run(make_cfg("system.objective.warmup=5"))["iterations"] == 6  # one student iteration is enough
