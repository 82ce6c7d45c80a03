"""Tables and figures from any set of finished runs: ``python -m dfad_lightning.collect DIR... --out REPORT``.

Every directory given is searched for finished runs (a ``results.json`` beside ``.hydra/``), so a
sweep's directory, several sweeps, or single runs all work. Runs whose command-line overrides are
the same but for ``seed`` form one *setting*, labelled by the overrides that differ between
settings (those shared by every run are listed once, above the table); the table gives, per
setting, the number of seeds, mean +- std of the teacher's score, of the student's *final*
score (our headline) and of its *best* score over training (what the paper reports: selected
on the test set), the final student/teacher ratio, and the wall time. Figures (PNG, with the
``figures`` extra):

- ``curves.png``: the student's metric against iterations, one curve per setting (mean over
  seeds, with a band of +- one standard deviation), e.g. one per loss as the paper's Fig. 4;
- ``final_vs_<key>.png`` (with ``--x KEY``): the final metric against a numeric override such as
  ``data.batch_size`` (the paper's Fig. 7), one line per value of the other overrides;
- ``samples.png``: the last picture of generated samples beside real images of each setting
  (the paper's Fig. 3).

Run directories without a ``results.json`` (a failed sweep job, a stopped run) are listed below
the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

NO_SETTING = "(defaults)"
ALL_RUNS = "(all runs)"


@dataclass
class Run:
    """One finished run: its directory, overrides (seed aside), results and evaluation curve."""

    path: Path
    overrides: dict[str, str]
    results: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)

    shared: bool = False  # whether overrides common to every collected run were taken out

    @property
    def setting(self) -> str:
        """The overrides that define the run's setting (all but the seed), as one label."""
        return _label(self.overrides) or (ALL_RUNS if self.shared else NO_SETTING)


def find_runs(roots: Iterable[Path]) -> list[Run]:
    """Every finished distillation run under ``roots`` (a ``results.json`` with ``task: distill``)."""
    runs = []
    for root in roots:
        for results_file in sorted(Path(root).rglob("results.json")):
            results = json.loads(results_file.read_text())
            if results.get("task") != "distill":
                continue
            runs.append(Run(results_file.parent, read_overrides(results_file.parent), results))
    for run in runs:
        run.curve = read_curve(run)
    return runs


def find_unfinished(roots: Iterable[Path]) -> list[Path]:
    """Run directories under ``roots`` without a ``results.json``: failed, stopped, or still running.

    A run directory is one that holds Hydra's ``train.log``, the run's ``.hydra/`` record or its
    ``checkpoints/``; a sweep's job that failed before training holds only the log.
    """
    markers = {"train.log", ".hydra", "checkpoints"}
    found = {
        path.parent
        for root in roots
        for path in Path(root).rglob("*")  # one walk of the tree for all three markers
        if path.name in markers and not (path.parent / "results.json").exists()
    }
    return sorted(found)


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides but ``seed`` and the ones that only place its outputs."""
    file = run_dir / ".hydra" / "overrides.yaml"
    if not file.exists():
        return {}
    pairs = (str(o).split("=", 1) for o in OmegaConf.to_container(OmegaConf.load(file)))  # type: ignore[union-attr]
    ignored = ("seed", "hydra.", "paths.", "trainer.enable_progress_bar")
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith(ignored)}


def flat_config(run_dir: Path) -> dict[str, str]:
    """The run's composed config (``.hydra/config.yaml``, unresolved) as ``{dotted key: value}``, but seed and paths."""
    file = run_dir / ".hydra" / "config.yaml"
    if not file.exists():
        return {}
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(OmegaConf.load(file), resolve=False), "")
    return {k: v for k, v in flat.items() if k != "seed" and not k.startswith(("paths.", "hydra."))}


def tell_apart_changed_configs(runs: Sequence[Run]) -> None:
    """Give runs with the same overrides but different configs the keys that differ, as overrides.

    A config file edited between two sweeps would otherwise put runs of different settings into
    one mean; with this they form separate, labelled settings (``... system.generator_optimizer.lr=0.001``).
    """
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.setting].append(run)
    for group in groups.values():
        configs = [flat_config(run.path) for run in group]
        keys = sorted({k for config in configs for k in config})
        differing = [k for k in keys if len({config.get(k) for config in configs}) > 1]
        for run, config in zip(group, configs, strict=True):
            run.overrides.update({k: config.get(k, "(absent)") for k in differing})


def take_out_shared(runs: Sequence[Run], keep: Sequence[str] = ()) -> dict[str, str]:
    """Remove from every run the overrides that all runs share (but ``keep``) and return them.

    Labels then name only what differs, e.g. ``method=dfad`` rather than the experiment, data
    directory and teacher checkpoint that every run of a sweep was given.
    """
    common = dict(set.intersection(*(set(r.overrides.items()) for r in runs))) if runs else {}
    for key in keep:
        common.pop(key, None)
    for run in runs:
        run.overrides = {k: v for k, v in run.overrides.items() if k not in common}
        run.shared = bool(common)
    return common


def read_curve(run: Run) -> list[tuple[int, float]]:
    """``(iterations, student metric)`` at every evaluation, from the run's CSV log."""
    name = f"val/{run.results['metric']}"
    epochs = max(int(run.results.get("epochs") or 1), 1)
    per_epoch = int(run.results["iterations"]) // epochs
    points: dict[int, float] = {}
    for log in sorted((run.path / "csv").glob("version_*/metrics.csv")):
        with open(log) as f:
            for row in csv.DictReader(f):
                if row.get(name):
                    points[int(row["epoch"])] = float(row[name])
    return [((epoch + 1) * per_epoch, value) for epoch, value in sorted(points.items())]


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value); ``None`` without values."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def table(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per setting: seeds and mean +- std of teacher, final, best, ratio, wall time."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.setting].append(run)
    rows = []
    for setting in sorted(groups, key=natural):
        group = groups[setting]
        res = [r.results for r in group]
        rows.append(
            {
                "setting": setting,
                "dataset": res[0]["dataset"],
                "metric": res[0]["metric"],
                "seeds": len(group),
                "teacher": mean_std([r["teacher"] for r in res]),
                "student_final": mean_std([r["student"]["final"] for r in res]),
                "student_best_over_training": mean_std([r["student"]["best"] for r in res]),
                "ratio_final": mean_std([r["ratio"] for r in res]),
                "wall_time_s": mean_std([r["wall_time_s"] for r in res]),
            }
        )
    return rows


def natural(label: str) -> list[Any]:
    """Sort key that orders the numbers in labels by value: ``batch_size=32`` before ``batch_size=128``.

    >>> sorted(["b=128", "b=32", "a=x"], key=natural)
    ['a=x', 'b=32', 'b=128']
    """
    return [(0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(re.split(r"(\d+\.?\d*)", label))]


def _legend_below(ax: Any) -> None:
    """A legend under the axes, where it hides no curve however many settings there are."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)


def _label(overrides: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(overrides.items()))


def _cell(value: Any, digits: int = 4) -> str:
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.{digits}f} +- {std:.{digits}f}"
    return "" if value is None else str(value)


def write_table(rows: Sequence[dict[str, Any]], out: Path, common: dict[str, str] | None = None) -> None:
    """``results.csv`` (mean and std in separate columns) and ``results.md``, under the shared overrides."""
    out.mkdir(parents=True, exist_ok=True)
    stats = ["teacher", "student_final", "student_best_over_training", "ratio_final", "wall_time_s"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["setting", "dataset", "metric", "seeds", *(f"{s}_{m}" for s in stats for m in ("mean", "std"))]
        )
        for row in rows:
            numbers = [x for s in stats for x in (row[s] or (None, None))]
            writer.writerow([row["setting"], row["dataset"], row["metric"], row["seeds"], *numbers])
    header = ["setting", "seeds", "teacher", "student, final", "student, best over training (paper's)",
              "student/teacher, final", "wall time (s)"]  # fmt: skip
    lines = [f"All runs: `{_label(common)}`\n"] if common else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["setting"], row["seeds"], *(_cell(row[s]) for s in stats[:3]), _cell(row["ratio_final"], 3),
                 _cell(row["wall_time_s"], 1)]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot_curves(runs: Sequence[Run], out: Path) -> Path:
    """The student's metric against iterations, mean (and +- std band) over seeds, one curve per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for iteration, value in run.curve:
            groups[run.setting][iteration].append(value)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting in sorted(groups, key=natural):
        points = groups[setting]
        xs = sorted(points)
        stats = [mean_std(points[x]) or (0.0, 0.0) for x in xs]
        means, stds = [m for m, _ in stats], [s for _, s in stats]
        (line,) = ax.plot(xs, means, marker="o", markersize=3, label=setting)
        if any(stds):
            lower, upper = [m - s for m, s in stats], [m + s for m, s in stats]
            ax.fill_between(xs, lower, upper, color=line.get_color(), alpha=0.15, linewidth=0)
    metric = runs[0].results["metric"]
    title = f"{runs[0].results['dataset']} (mean, band +- std over seeds)"
    ax.set(xlabel="iterations", ylabel=f"student {metric} (test split)", title=title)
    ax.grid(alpha=0.3)
    _legend_below(ax)
    path = out / "curves.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_final_vs(runs: Sequence[Run], key: str, out: Path) -> Path:
    """The final metric (mean +- std over seeds) against a numeric override, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if key not in run.overrides or run.results["student"]["final"] is None:
            continue
        rest = _label({k: v for k, v in run.overrides.items() if k != key}) or (ALL_RUNS if run.shared else NO_SETTING)
        lines[rest][float(run.overrides[key])].append(run.results["student"]["final"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label in sorted(lines, key=natural):
        points = lines[label]
        xs = sorted(points)
        stats = [mean_std(points[x]) or (0.0, 0.0) for x in xs]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=label)
    values = sorted({x for points in lines.values() for x in points})
    if values and values[0] > 0 and values[-1] >= 4 * values[0]:  # e.g. batch sizes: doublings equally spaced
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [f"{x:g}" for x in values])
    title = f"{runs[0].results['dataset']} (mean +- std over seeds)"
    ax.set(xlabel=key, ylabel=f"final student {runs[0].results['metric']}", title=title)
    ax.grid(alpha=0.3)
    if len(lines) > 1 or not lines.keys() & {NO_SETTING, ALL_RUNS}:
        _legend_below(ax)
    path = out / f"final_vs_{key.replace('.', '_')}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_samples(runs: Sequence[Run], out: Path) -> Path | None:
    """The last sample picture of one run per setting, stacked with the setting as its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    pictures = {}
    for run in runs:
        found = sorted((run.path / "samples").glob("*.png"))
        if found and run.setting not in pictures:
            pictures[run.setting] = found[-1]
    if not pictures:
        return None
    fig, axes = plt.subplots(len(pictures), 1, figsize=(8, 2.2 * len(pictures)), squeeze=False)
    for ax, setting in zip(axes[:, 0], sorted(pictures, key=natural), strict=True):
        ax.imshow(mpimg.imread(pictures[setting]))
        ax.set_title(f"{setting}: generated (left), real (right)", fontsize=9)
        ax.axis("off")
    path = out / "samples.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def collect(roots: Sequence[Path], out: Path, x: str | None = None, figures: bool = True) -> list[dict[str, Any]]:
    """Write the table (and figures) of the runs under ``roots`` into ``out``; return the table rows.

    Raises:
        SystemExit: No finished run was found.
    """
    runs, unfinished = find_runs(roots), find_unfinished(roots)
    if not runs:
        raise SystemExit(
            f"no finished distillation run (results.json) under {', '.join(map(str, roots))}{_left_out(unfinished)}"
        )
    tell_apart_changed_configs(runs)
    common = take_out_shared(runs, keep=[x] if x else [])
    rows = table(runs)
    write_table(rows, out, common)
    if unfinished:  # a sweep with a failed job must not read as complete
        with open(out / "results.md", "a") as f:
            f.write(_left_out(unfinished).lstrip() + "\n")
    if figures:
        plot_curves(runs, out)
        plot_samples(runs, out)
        if x is not None:
            plot_final_vs(runs, x, out)
    return rows


def _left_out(unfinished: Sequence[Path]) -> str:
    """The sentence that lists the run directories left out for want of a ``results.json``."""
    if not unfinished:
        return ""
    return (
        f"\nNot in the table: {len(unfinished)} run director{'y' if len(unfinished) == 1 else 'ies'} without "
        f"results.json (failed, stopped or still running; see its train.log, and resume a stopped run with "
        f"ckpt_path=last): {', '.join(map(str, unfinished))}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``python -m dfad_lightning.collect DIR... --out REPORT [--x KEY]``."""
    parser = argparse.ArgumentParser(prog="python -m dfad_lightning.collect", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=Path("report"), help="where the table and figures go")
    parser.add_argument("--x", help="a numeric override to plot the final metric against (e.g. data.batch_size)")
    parser.add_argument("--no-figures", action="store_true", help="only the table")
    args = parser.parse_args(argv)
    collect(args.dirs, args.out, args.x, figures=not args.no_figures)
    print((args.out / "results.md").read_text(), end="")
    print(f"written to {args.out}/")


if __name__ == "__main__":
    main()
