"""The results collector: settings grouped over seeds, a labelled table, and the figures."""

from __future__ import annotations

import csv
import shutil

import pytest
from omegaconf import OmegaConf
from PIL import Image

from dfad_lightning.collect import collect, main
from dfad_lightning.tasks import run


@pytest.fixture
def sweep(make_cfg, tmp_path):
    """Five tiny runs: two losses x two seeds, and one more batch size."""
    root = tmp_path / "sweep"
    for loss, seed, batch in (("mae", 0, 16), ("mae", 1, 16), ("mse", 0, 16), ("mse", 1, 16), ("mae", 0, 32)):
        run(
            make_cfg(
                f"loss={loss}", f"seed={seed}", f"data.batch_size={batch}", output_dir=root / f"{loss}{seed}_{batch}"
            )
        )
    return root


def test_the_collector_groups_seeds_and_writes_table_and_figures(sweep, tmp_path, capsys):
    rows = collect([sweep], tmp_path / "report", x="data.batch_size")
    by_setting = {r["setting"]: r for r in rows}
    assert len(rows) == 3 and sorted(r["seeds"] for r in rows) == [1, 2, 2]
    mae = next(r for s, r in by_setting.items() if "loss=mae" in s and "data.batch_size=16" in s)
    assert mae["student_final"][1] >= 0.0 and mae["student_best_over_training"][0] >= mae["student_final"][0] - 1e-9
    assert not any("trainer." in s for s in by_setting)  # the tiny runs' shared overrides are not in labels
    markdown = (tmp_path / "report" / "results.md").read_text()
    assert markdown.startswith("All runs: `") and "trainer.max_epochs=" in markdown.splitlines()[0]
    assert "student, final" in markdown and "best over training" in markdown and "+-" in markdown
    with open(tmp_path / "report" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and "student_final_std" in table[0]
    for name in ("curves.png", "samples.png", "final_vs_data_batch_size.png"):
        assert Image.open(tmp_path / "report" / name).size[0] > 300
    main([str(sweep), "--out", str(tmp_path / "again"), "--no-figures"])
    assert "student, final" in capsys.readouterr().out and not (tmp_path / "again" / "curves.png").exists()


def test_runs_with_the_same_overrides_but_a_changed_config_are_not_averaged(sweep, tmp_path):
    # As if a config file had been edited between two sweeps run with the same command line.
    edited = sweep / "mae0_16_edited"
    shutil.copytree(sweep / "mae0_16", edited)
    config = OmegaConf.load(edited / ".hydra" / "config.yaml")
    config.system.student_optimizer.lr = 0.123
    OmegaConf.save(config, edited / ".hydra" / "config.yaml")
    rows = collect([sweep], tmp_path / "report", figures=False)
    labels = [r["setting"] for r in rows if "loss=mae" in r["setting"] and "data.batch_size=16" in r["setting"]]
    assert len(labels) == 2 and any("system.student_optimizer.lr=0.123" in label for label in labels), labels


def test_runs_without_results_are_named_below_the_table(sweep, tmp_path, capsys):
    """A sweep whose job failed, or a run that was stopped, must not read as complete."""
    (sweep / "failed").mkdir()
    (sweep / "failed" / "train.log").write_text("data.batch_size: must be ... got 1\n")
    shutil.copytree(sweep / "mae0_16" / "checkpoints", sweep / "stopped" / "checkpoints")
    main([str(sweep), "--out", str(tmp_path / "report"), "--no-figures"])
    last = (tmp_path / "report" / "results.md").read_text().splitlines()[-1]
    assert last.startswith("Not in the table: 2 run directories without results.json") and "ckpt_path=last" in last
    assert last.endswith(f"{sweep / 'failed'}, {sweep / 'stopped'}") and last in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"no finished distillation run .*\nNot in the table: 1 run directory"):
        collect([sweep / "failed"], tmp_path / "nothing")


def test_the_collector_says_when_there_is_nothing_to_collect(tmp_path):
    with pytest.raises(SystemExit, match="no finished distillation run"):
        collect([tmp_path], tmp_path / "report")
