"""Does the data-free signal tell a user without data how the student is doing? Measure it.

Runs several distillations with different settings through ``train.py`` (each epoch logs the
real test accuracy ``val/acc`` beside the data-free values ``val_datafree/*``), then reports,
for every variant of the signal:

- the rank correlation (Spearman) with the real accuracy across the epochs of each run (mean
  over runs), across all checkpoints of all runs pooled, and across runs (final values);
- the real accuracy of the checkpoint each variant would select, against the final and the
  best (selected on the test set, which a user without data cannot do), averaged over runs.

Usage (from the repository root; about 12 minutes for digits and 10 for MNIST on 2 CPU cores):

    python benchmarks/datafree_signal.py --dataset digits
    python benchmarks/datafree_signal.py --dataset mnist --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]

# Settings that move the student's accuracy: learning rates, k, losses, seeds.
SETTINGS = {
    "default": [],
    "generator_lr_1e-3": ["system.generator_optimizer.lr=1e-3"],
    "student_lr_0.1": ["system.student_optimizer.lr=0.1"],
    "student_lr_1e-3": ["system.student_optimizer.lr=1e-3"],
    "k_1": ["system.learning.steps=1"],
    "loss_kl": ["loss=kl"],
    "loss_mse": ["loss=mse"],
    "seed_1": ["seed=1"],
}
VARIANTS = ["agreement", "mae", "latest_agreement", "latest_mae", "noise_agreement", "noise_mae"]
LOWER_IS_BETTER = {"mae", "latest_mae", "noise_mae"}


def run(name: str, overrides: list[str], out: Path) -> Path:
    """One distillation run in ``out/name`` (skipped if it already finished); returns its directory."""
    run_dir = out / name
    if not (run_dir / "results.json").exists():
        cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
        print("running:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def epochs(run_dir: Path) -> list[dict[str, float]]:
    """Per epoch: the real accuracy and every data-free value (merged from the CSV log's rows)."""
    rows: dict[int, dict[str, float]] = {}
    with open(next((run_dir / "csv").glob("version_*/metrics.csv"))) as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")}
            rows.setdefault(int(row["epoch"]), {}).update(values)
    return [rows[e] for e in sorted(rows) if "val/acc" in rows[e] and "val_datafree/agreement" in rows[e]]


def signal(row: dict[str, float], variant: str) -> float:
    """The variant's value, oriented so that higher means better."""
    value = row[f"val_datafree/{variant}"]
    return -value if variant in LOWER_IS_BETTER else value


def analyse(runs: dict[str, list[dict[str, float]]]) -> list[dict[str, object]]:
    """One table row per variant."""
    table = []
    finals = [r[-1]["val/acc"] for r in runs.values()]
    bests = [max(row["val/acc"] for row in r) for r in runs.values()]
    for variant in VARIANTS:
        within = [spearmanr([signal(x, variant) for x in r], [x["val/acc"] for x in r])[0] for r in runs.values()]
        pooled = [x for r in runs.values() for x in r]
        selected = [max(r, key=lambda x: signal(x, variant))["val/acc"] for r in runs.values()]
        table.append(
            {
                "variant": variant,
                "spearman_within_runs": round(mean(v for v in within if v == v), 3),
                "spearman_pooled": round(
                    float(spearmanr([signal(x, variant) for x in pooled], [x["val/acc"] for x in pooled])[0]), 3
                ),
                "spearman_across_runs": round(
                    float(spearmanr([signal(r[-1], variant) for r in runs.values()], finals)[0]), 3
                ),
                "acc_selected": round(mean(selected), 4),
                "acc_final": round(mean(finals), 4),
                "acc_best": round(mean(bests), 4),
            }
        )
    return table


def main() -> None:
    """Run the settings (or reuse finished runs), print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", default="outputs/datafree_signal")
    args = parser.parse_args()
    out = (ROOT / args.out / args.dataset).resolve()
    # 12 evaluations of 25 iterations: the digits default's 300 iterations, evaluated twice as often.
    base = ["data.iterations_per_epoch=25", "trainer.max_epochs=12"]
    if args.dataset == "mnist":
        data = [f"paths.data_dir={Path(args.data_dir).resolve()}"]
        teacher_dir = run("teacher", ["task=teacher", "dataset=mnist", *data], out)
        base += ["experiment=cpu_mnist", *data, f"teacher.checkpoint={teacher_dir / 'teacher.pt'}"]
    runs = {name: epochs(run(name, [*base, *extra], out)) for name, extra in SETTINGS.items()}
    table = analyse(runs)
    (out / "signal.json").write_text(json.dumps({"runs": runs, "table": table}, indent=1))
    print(f"\n{args.dataset}: {len(runs)} runs x {len(next(iter(runs.values())))} evaluations")
    print("| variant | Spearman within runs | pooled | across runs | acc of selected | final | best |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
