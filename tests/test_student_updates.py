"""How the student learns on each sample: several updates (reuse), each on a part of it (minibatches)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import K, SeesStudentInputs, same, snapshot
from torch.optim.optimizer import register_optimizer_step_post_hook

from dfad_lightning.errors import ConfigError
from dfad_lightning.systems import DFAD
from dfad_lightning.tasks import main


@pytest.fixture
def fit_counting_student_updates(fit):
    """Train ``system`` one epoch (4 iterations); return the trainer and the student's (SGD) optimizer steps."""

    def counting(system: DFAD, tmp_path) -> tuple[L.Trainer, int]:
        updates = []
        hook = register_optimizer_step_post_hook(
            lambda opt, args, kwargs: updates.append(1) if isinstance(opt, torch.optim.SGD) else None
        )
        try:
            trainer = fit(system, tmp_path, epochs=1)
        finally:
            hook.remove()
        return trainer, len(updates)

    return counting


def test_student_reuse_updates_the_student_r_times_on_each_sample_made_and_labelled_once(
    tmp_path, make_system, fit_counting_student_updates
):
    system = make_system(cls=SeesStudentInputs, learning={"reuse": 3, "replay_size": 32})
    _, student_updates = fit_counting_student_updates(system, tmp_path)
    assert system.labels == 4 * K  # one fresh sample per student step, labelled once (replay brings its own)
    assert len(system.sizes) == student_updates == 4 * K * 3  # and three updates on each
    assert system.sizes[:3] == [8, 8, 8] and set(system.sizes[3:]) == {12}  # replay from the second step on
    assert (
        system.learning.memory is not None and system.learning.memory.seen == 4 * K * 8
    )  # the memory sees each sample once
    assert system.learning.memory.drawn == (4 * K - 1) * 3  # a new replay draw for each update


@pytest.mark.parametrize("option", ["reuse", "minibatches"])
def test_one_update_or_part_per_sample_is_the_papers_loop_and_two_change_the_student(
    tmp_path, option, make_system, fit
):
    paper, one = make_system(), make_system(learning={option: 1})
    fit(paper, tmp_path / "a", epochs=1)
    fit(one, tmp_path / "b", epochs=1)
    assert same(snapshot(paper.student), snapshot(one.student))
    two = make_system(learning={option: 2})
    fit(two, tmp_path / "c", epochs=1)
    assert not same(snapshot(paper.student), snapshot(two.student))


def test_student_minibatches_split_each_sample_into_parts_one_update_each(
    tmp_path, make_system, fit_counting_student_updates
):
    system = make_system(cls=SeesStudentInputs, learning={"reuse": 2, "minibatches": 2, "replay_size": 32})
    trainer, student_updates = fit_counting_student_updates(system, tmp_path)
    assert system.labels == 4 * K  # each sample still made and labelled once
    assert len(system.sizes) == student_updates == 4 * K * 2 * 2  # two passes of two parts on each
    assert system.sizes[:4] == [4] * 4 and set(system.sizes[4:]) == {6}  # halves, with half as many replayed
    assert (
        system.learning.memory is not None and system.learning.memory.seen == 4 * K * 8
    )  # the whole sample is remembered once
    assert trainer.global_step == 4 * system.steps_per_iteration and system.steps_per_iteration == K * 4 + 1
    assert system.iterations(trainer.global_step) == 4


def test_student_minibatches_take_the_whole_sample_between_them(make_system):
    system = make_system(learning={"minibatches": 3})
    x, out = torch.randn(8, 1, 4, 4), torch.randn(8, 10)
    parts = system.learning._parts(x, out)
    assert [len(p) for p, _ in parts] == [3, 3, 2]
    sixteen = make_system(learning={"minibatches": 6}).learning._parts(torch.randn(16, 1, 4, 4), torch.randn(16, 10))
    assert [len(p) for p, _ in sixteen] == [3, 3, 3, 3, 2, 2]  # sizes within one of each other, none of 1
    assert torch.equal(torch.cat([p for p, _ in parts]), x) and torch.equal(torch.cat([o for _, o in parts]), out)
    assert make_system().learning._parts(x, out) == [(x, out)]  # one: the whole batch, as the paper


def test_minibatches_too_small_for_batchnorm_are_refused_at_the_first_iteration_not_after_the_warmup(
    tmp_path, make_system, fit
):
    # The tests' batch of 8 in 5 parts: some of 1 sample.
    system = make_system(learning={"minibatches": 5}, objective={"warmup": 0.5, "balance": 5.0})
    with pytest.raises(ConfigError, match=r"^system\.learning.minibatches: 5 minibatches of a batch of 8 .*batch_size"):
        fit(system, tmp_path, epochs=1)
    assert system.trainer.global_step == 0  # not one warm-up step was spent first


def test_automatic_minibatches_are_finer_only_where_the_batchnorm_prior_acts(make_system):
    from dfad_lightning.parts.learning import AUTO_MINIBATCHES

    auto = {"minibatches": "auto"}
    assert (
        AUTO_MINIBATCHES > 1
        and make_system(batchnorm_teacher=True, learning=auto, objective={"bn_prior": 1.0}).learning.minibatches
        == AUTO_MINIBATCHES
    )
    assert (
        make_system(batchnorm_teacher=True, learning=auto, objective={"bn_prior": 0.0}).learning.minibatches == 1
    )  # no prior to anchor the samples
    assert (
        make_system(objective={"bn_prior": 1.0}, learning={"minibatches": "auto"}).learning.minibatches == 1
    )  # LeNet-5: no BatchNorm
    assert make_system(learning={"minibatches": "auto"}).steps_per_iteration == K + 1


def test_automatic_minibatches_take_no_part_smaller_than_the_measured_ones(
    tmp_path, make_system, fit, fit_counting_student_updates
):
    # The tests' batches of 8 would make four parts of 2: "auto" takes them whole, where 4 must fail.
    from dfad_lightning.parts.learning import AUTO_MIN_PART, AUTO_MINIBATCHES, auto_minibatches

    assert auto_minibatches(AUTO_MINIBATCHES * AUTO_MIN_PART) == AUTO_MINIBATCHES == auto_minibatches(1024)
    assert auto_minibatches(2 * AUTO_MIN_PART) == 2 and auto_minibatches(2 * AUTO_MIN_PART - 1) == 1

    auto = make_system(batchnorm_teacher=True, objective={"bn_prior": 1.0}, learning={"minibatches": "auto"})
    trainer, student_updates = fit_counting_student_updates(auto, tmp_path)
    assert auto.learning.minibatches == 1 and student_updates == 4 * K  # one update per student step
    assert auto.iterations(trainer.global_step) == 4
    with pytest.raises(ConfigError, match=r"system\.learning.minibatches: 5 minibatches of a batch of 8"):
        fit(
            make_system(batchnorm_teacher=True, objective={"bn_prior": 1.0}, learning={"minibatches": 5}),
            tmp_path,
            epochs=1,
        )


def test_minibatches_too_small_for_batchnorm_are_refused_naming_the_key(make_cfg, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(make_cfg("system.learning.minibatches=9"))  # batches of 16: parts of 1 or 2
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: system.learning.minibatches: 9 minibatches of a batch of 16 leave fewer than 2")
    assert "data.batch_size" in err and len(err.splitlines()) == 1
