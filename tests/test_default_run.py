"""The embedded default (``python train.py`` with no arguments), at reduced length, and the README's example."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from dfad_lightning.tasks import run


@pytest.mark.slow
def test_default_run_at_reduced_length_learns_well_above_chance(make_cfg):
    # The default configuration, teacher recipe included; only shorter: 30 of its 300 iterations.
    overrides = ["trainer.max_epochs=2", "data.iterations_per_epoch=15", "trainer.enable_progress_bar=false"]
    cfg = make_cfg(*overrides, tiny=False)
    results = run(cfg)
    assert results["teacher"] > 0.95
    assert results["student"]["final"] > 0.5  # chance is 0.1


def test_the_docs_python_example_runs(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "extending.md").read_text()
    code = re.search(r"## Using the modules from Python\n\n```python\n(.*?)```", page, re.S).group(1)
    assert "L.Trainer(max_epochs=4)" in code
    fast = "L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_progress_bar=False)"
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("L.Trainer(max_epochs=4)", fast), "docs/extending.md", "exec"), {})
