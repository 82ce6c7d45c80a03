"""Types and ranges: every value a user sets is checked before any work, with one line naming it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

from dfad_lightning.errors import ConfigError
from dfad_lightning.rules import Rule
from dfad_lightning.tasks import run
from dfad_lightning.tasks.schema import SCHEMA

BAD = [
    ("data.batch_size=abc", "data.batch_size", "'abc'"),
    ("data.batch_size=1", "data.batch_size", "at least 2"),
    ("system.learning.steps=abc", "system.learning.steps", "'abc'"),
    ("system.learning.reuse=0", "system.learning.reuse", "got 0"),
    ("system.learning.minibatches=0", "system.learning.minibatches", "got 0"),
    ("system.learning.minibatches=some", "system.learning.minibatches", "at least 1, or auto"),
    ("system.inputs.input_affine=some", "system.inputs.input_affine", "true or false, or auto"),
    ("data.iterations_per_epoch=1.5", "data.iterations_per_epoch", "1.5"),
    ("generator.ngf=0", "generator.ngf", "got 0"),
    ("generator.nz=-3", "generator.nz", "got -3"),
    ("trainer.max_epochs=0", "trainer.max_epochs", "would train nothing"),
    ("trainer.devices=0", "trainer.devices", "got 0"),
    ("trainer.num_nodes=0", "trainer.num_nodes", "got 0"),
    ("trainer.precision=17", "trainer.precision", "bf16-mixed"),
    ("system.student_optimizer.lr=fast", "system.student_optimizer.lr", "'fast'"),
    ("system.student_optimizer.momentum=1.5", "system.student_optimizer.momentum", "below 1"),
    ("system.average.decay=1", "system.average.decay", "below 1"),
    ("system.learning.replay_fraction=0", "system.learning.replay_fraction", "got 0"),
    ("system.learning.replay_dtype=int8", "system.learning.replay_dtype", "bfloat16"),
    ("system.objective.warmup=-1", "system.objective.warmup", "got -1"),
    ("system.nonfinite=maybe", "system.nonfinite", "stop, skip"),
    ("system.channels_last=3", "system.channels_last", "true or false"),
    ("system.objective.warmup=1.5", "system.objective.warmup", "a number in [0, 1)"),
    ("dataset.num_classes=1", "dataset.num_classes", "at least 2"),
    ("dataset.image_size=[0,32]", "dataset.image_size", "[0, 32]"),
    ("dataset.num_classes=ten", "dataset.num_classes", "'ten'"),
    ("teacher.mean=[0.1,0.2]", "teacher.mean", "2 values for 1 image channels"),
    ("dataset.channels=3", "dataset.mean", "1 values for 3 image channels (dataset.channels)"),
    ("dataset.std=[0.5,0.5]", "dataset.std", "2 values for 1 image channels"),
    ("dataset.std=[0]", "dataset.std", "above 0 (inputs are divided by them), got [0]"),  # was a NaN loss
    ("teacher.std=[-0.3]", "teacher.std", "above 0"),  # was accepted: inverted images
    ("teacher.training.epochs=0", "teacher.training.epochs", "got 0"),
    ("loss=kl loss.discrepancy.temperature=0", "loss.discrepancy.temperature", "got 0"),
    ("callbacks.checkpoint.every_n_iterations=0", "callbacks.checkpoint.every_n_iterations", "got 0"),
    ("seed=-1", "seed", "got -1"),
    ("task=nonsense", "task", "distill"),
]


@pytest.mark.parametrize(("overrides", "key", "detail"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_refused_before_any_work_naming_key_value_and_what_is_allowed(make_cfg, overrides, key, detail):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(*overrides.split()))
    message = str(err.value)
    assert message.startswith(f"{key}: must ") or message.startswith(f"{key}: has "), message
    assert detail in message and "\n" not in message


@pytest.mark.slow
def test_train_py_exits_2_with_one_line_and_no_traceback(tmp_path):
    for override in ("data.batch_size=abc", "trainer.max_epochs=0"):
        done = subprocess.run(
            [sys.executable, "train.py", override, f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith("Error: ")
        assert {p.name for p in (tmp_path / "run").iterdir()} <= {"train.log"}  # Hydra's log, nothing else


def test_the_schema_covers_every_group_a_user_sets():
    prefixes = {rule.key.split(".")[0] for rule in SCHEMA}
    assert {"data", "system", "dataset", "teacher", "generator", "loss", "trainer", "callbacks", "seed"} <= prefixes


def test_rules_say_what_is_allowed():
    assert Rule("x", int, low=2).allowed() == "an integer, at least 2"
    assert Rule("x", float, low=0, high=1, nullable=True).allowed() == "a number, at least 0 and below 1 (or null)"
    assert Rule("x", int).fits(3) and not Rule("x", int).fits(True) and not Rule("x", int).fits(3.0)
    assert Rule("x", float).fits(3) and not Rule("x", float).fits("3")
    assert Rule("x", "size").fits(32) and Rule("x", "size").fits([32, 64]) and not Rule("x", "size").fits([1, 2, 3])
    auto = Rule("x", int, low=1, also=("auto",))
    assert auto.fits("auto") and auto.fits(2) and not auto.fits(0) and not auto.fits("other")
    assert auto.allowed() == "an integer, at least 1, or auto"


def test_the_defaults_and_every_experiment_pass_the_schema(make_cfg):
    from conftest import CONF

    from dfad_lightning.tasks.schema import check_types

    check_types(make_cfg(tiny=False))
    for experiment in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        check_types(make_cfg(f"experiment={experiment}", tiny=False))


@pytest.mark.parametrize(("overrides", "key", "detail"), BAD, ids=[b[0] for b in BAD])
def test_what_a_user_sees_is_one_line_and_exit_2(make_cfg, capsys, overrides, key, detail):
    from dfad_lightning.tasks import main

    with pytest.raises(SystemExit) as done:
        main(make_cfg(*overrides.split()))
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(f"Error: {key}: ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ({"average": {"decay": 1.0}}, 1.0),
        ({"learning": {"replay_size": -1}}, -1),
        ({"learning": {"replay_fraction": 0.0}}, 0.0),
        ({"learning": {"reuse": 0}}, 0),
        ({"learning": {"minibatches": 0}}, 0),
        ({"learning": {"minibatches": "some"}}, "some"),
        ({"learning": {"replay_dtype": "int8"}}, "int8"),
        ({"objective": {"warmup": -1}}, -1),
        ({"objective": {"warmup": 1.0, "balance": 1.0}}, 1.0),
        ({"inputs": {"input_affine": "yes"}}, "yes"),
        ({"nonfinite": "ignore"}, "ignore"),
    ],
)
def test_the_module_refuses_bad_arguments_naming_them_by_the_schemas_rule(make_system, part, value):
    ((where, arguments),) = part.items()
    name = where if isinstance(arguments, str) else f"{where}.{next(iter(arguments))}"  # nonfinite: the system's own
    with pytest.raises(ConfigError, match=rf"^{re.escape(name)}: must be .*, got {re.escape(repr(value))}$") as error:
        make_system(**part)
    assert error.value.key == name
    rule = next(r for r in SCHEMA if r.key == f"system.{name}")  # the schema checks the same rule under system.
    assert not rule.fits(value) and error.value.message == f"must be {rule.allowed()}, got {value!r}"
    assert error.value.under("system").key == f"system.{name}"
