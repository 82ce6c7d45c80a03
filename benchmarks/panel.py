"""The robustness panel: one recipe on several teachers and seeds, final and best side by side.

A user brings a teacher we never saw and has no data to pick an epoch with, so what counts is
the *final* student, on every teacher, without tuning. This script runs each method (the paper's
DFAD, DAFL, DFQ, the recommended recipe, and any variant given on the command line) with the same
hyperparameters on every setting of the panel, for several seeds, and reports per setting and per
method: teacher, final and best student (best over training: selected on the test split, which a
user cannot do), the best-minus-final gap, the standard deviation over seeds, and the wall time.

Settings (CPU-sized: 300 iterations of batch 128, a narrow Generator-A, LeNet-5-Half students):

- ``digits``: the embedded digits, LeNet-5 teacher (trained on the fly);
- ``mnist``: MNIST, LeNet-5 teacher (``task=teacher``);
- ``mnist_bn``: MNIST, a CIFAR ResNet-8 teacher with BatchNorm throughout;
- ``cifar10``: a harder natural-image setting: a copy of the CIFAR-10 *test* images as class
  folders, split per class (seeded, saved) into 8,000 images that train a LeNet-5 colour teacher
  and 2,000 held out to evaluate;
- ``grey3_idx``: images harder than digits with a teacher without BatchNorm above 0.8: three
  well-separated CIFAR-10 classes (``GREY3_CLASSES``) of the split below, grey 28x28, as IDX
  files, with a LeNet-5 teacher (the kind of setting on which the recipe was found to forget what
  it learnt, with nothing to anchor its samples);
- ``grey_idx`` (run by name: a check added after the recipe was fixed): the same split, greyscale 28x28,
  written as IDX files and read through ``dataset=idx`` with a LeNet-5 teacher: the path a user of a
  new MNIST-format dataset takes, on images that are not digits;
- ``cifar10_bn`` (run by name, the same kind of check): the CIFAR-10 split with a ResNet-8 colour
  teacher, BatchNorm throughout (15 epochs of ``task=teacher``);
- ``grey_idx_bn`` (run by name, a third BatchNorm teacher): ``grey_idx``'s files with a ResNet-8
  teacher (15 epochs), and ``dataset=idx``'s mean and std of 0.5, which do not standardise these
  images;
- ``mnist_bn_lenet5`` (run by name): ``mnist_bn``'s teacher distilled into a LeNet-5 instead of
  LeNet-5-Half;
- ``cifar10_resnet20`` (run by name): a teacher trained elsewhere, akamaster's pretrained CIFAR-10
  ResNet-20 (``DATA/teachers/cifar10-akamaster/resnet20-12fca82f.th``, from its GitHub release),
  into a colour LeNet-5, scored on the CIFAR-10 test images of ``DATA/cifar10/test``.

Teachers are trained once into ``OUT/teachers``, on one thread with deterministic kernels (the
same teachers in every checkout); runs go to ``OUT/runs/<setting>/<method>/seed<N>``
and a finished run is never run again, and an interrupted one continues from its last checkpoint
(``ckpt_path=last``; its ``wall_time_s`` then counts only the continuation), so an interrupted
panel resumes where it stopped. Jobs run
``--jobs`` at a time, each with its share of the CPU threads (results of one seed depend on the
thread count: keep it the same when comparing).

Usage (from the repository root; docs/benchmarks.md says how long it takes):

    python benchmarks/panel.py --data-dir DATA            # DATA/mnist, DATA/cifar10/test
    python benchmarks/panel.py --data-dir DATA --settings digits mnist --methods dfad robust --seeds 0
    python benchmarks/panel.py --data-dir DATA --settings grey_idx --methods robust robust_ngf32 \
        --variant robust_ngf32 "recipe=robust generator.ngf=32"   # a variant, by name
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The panel's size: the same for every setting and method.
SIZE = [
    "data.batch_size=128",
    "generator.ngf=16",
    "data.iterations_per_epoch=50",
    "trainer.max_epochs=6",
    "system.channels_last=true",
]

CIFAR = [
    "dataset=split_folder",
    "dataset.root={data}/cifar10/test",
    "dataset.num_classes=10",
    "dataset.image_size=[32,32]",
    "dataset.mean=[0.4914,0.4822,0.4465]",
    "dataset.std=[0.2470,0.2435,0.2616]",
    "dataset.split_file={out}/cifar10-split.json",
]

GREY_IDX = [
    "dataset=idx",
    "dataset.num_classes=10",
    *(f"dataset.files.{part}_{kind}={{out}}/grey-idx/{part}-{kind}.gz" for part in ("train", "test")
      for kind in ("images", "labels")),
]  # fmt: skip

GREY3_IDX = [
    "dataset=idx",
    "dataset.num_classes=3",
    *(f"dataset.files.{part}_{kind}={{out}}/grey3-idx/{part}-{kind}.gz" for part in ("train", "test")
      for kind in ("images", "labels")),
]  # fmt: skip

# name -> the overrides of its dataset and teacher.
SETTINGS: dict[str, list[str]] = {
    "digits": ["dataset=digits"],
    "mnist": ["dataset=mnist", "paths.data_dir={data}"],
    "mnist_bn": ["dataset=mnist", "paths.data_dir={data}", "teacher=cifar_resnet8"],
    "cifar10": CIFAR,
    "grey_idx": GREY_IDX,
    "cifar10_bn": [*CIFAR, "teacher=cifar_resnet8", "teacher.training.epochs=15"],
    "grey_idx_bn": [*GREY_IDX, "teacher=cifar_resnet8", "teacher.training.epochs=15"],
    "grey3_idx": GREY3_IDX,
    "mnist_bn_lenet5": ["dataset=mnist", "paths.data_dir={data}", "teacher=cifar_resnet8", "model=lenet5"],
    "cifar10_resnet20": [
        "dataset=cifar10_folder",
        "paths.data_dir={data}",
        "teacher=cifar_resnet20_akamaster",
        "teacher.checkpoint={data}/teachers/cifar10-akamaster/resnet20-12fca82f.th",
        "model=lenet5",
    ],
}
# Settings that distil another setting's teacher (to another student): setting -> the teacher's setting.
SHARES_TEACHER = {"mnist_bn_lenet5": "mnist_bn"}
PANEL = ["digits", "mnist", "mnist_bn", "cifar10", "grey3_idx"]  # what runs by default; the checks by name (--settings)
# Settings whose teacher is not trained here: digits trains it on the fly, cifar10_resnet20 brings its own.
OWN_TEACHER = {"digits", "cifar10_resnet20"}

# The paper's hyperparameters for small networks (its MNIST row), shared by every method that
# does not bring its own: student SGD 0.01 (momentum 0.9), generator Adam 1e-3, constant rates.
# The methods that optimise their inputs bring their own input-maker's rates (PAPER_STUDENT).
PAPER_STUDENT = ["recipe=paper", "system.student_optimizer.lr=0.01", "system.student_optimizer.weight_decay=1e-4",
                 "schedule=constant"]  # fmt: skip
PAPER = [*PAPER_STUDENT, "system.generator_optimizer.lr=1e-3"]

# Each method of the panel: the overrides that select it. More can be given by name on the command
# line (--variant NAME "OVERRIDES"), so that a screen needs no change here.
METHODS: dict[str, list[str]] = {
    "dfad": ["method=dfad", *PAPER],
    "dafl": ["method=dafl", *PAPER],
    "dfq": ["method=dfq", *PAPER],
    "zskt": ["method=zskt", *PAPER],
    "deepinversion": ["method=deepinversion", *PAPER_STUDENT],
    "cmi": ["method=cmi", *PAPER_STUDENT],
    "fast": ["method=fast", *PAPER_STUDENT],
    "robust": ["method=dfad", "recipe=robust"],
}


def command(overrides: list[str], run_dir: Path, data: Path, out: Path) -> list[str]:
    """The ``train.py`` command of one run."""
    filled = [o.format(data=data, out=out) for o in overrides]
    return [sys.executable, "train.py", *filled, f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]


def execute(cmd: list[str], log: Path, threads: int) -> None:
    """Run one command with ``threads`` CPU threads, its output in ``log``; fail loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        # train.py ends a user error in one "Error: <key>: ..." line: give it here, not just the log's path.
        said = [line + "; " for line in log.read_text().splitlines() if line.startswith(("Error:", "Interrupted:"))]
        raise RuntimeError(f"failed ({done.returncode}): {' '.join(cmd[1:])}; {''.join(said[-1:])}see {log}")


def write_grey_idx(data: Path, out: Path, classes: tuple[str, ...] = (), name: str = "grey-idx") -> None:
    """A setting's IDX files (once): the CIFAR-10 split in grey at 28x28, of ``classes`` (all if empty), relabelled."""
    folder = out / name
    if (folder / "test-labels.gz").exists():
        return
    import numpy as np

    from dfad_lightning.data.images import ImageFolderDataset, write_idx

    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        images = ImageFolderDataset(data / "cifar10" / "test", 28, channels=1, split=part,
                                    split_file=out / "cifar10-split.json")  # fmt: skip
        wanted = [images.classes.index(c) for c in classes] if classes else list(range(len(images.classes)))
        kept = [i for i, (_, y) in enumerate(images.samples) if y in wanted]
        pixels = np.stack([(images[i][0][0].numpy() * 255).round().astype(np.uint8) for i in kept])
        labels = np.array([wanted.index(images.samples[i][1]) for i in kept], dtype=np.uint8)
        write_idx(folder / f"{part}-images.gz", pixels)
        write_idx(folder / f"{part}-labels.gz", labels)


# grey3_idx: three well-separated CIFAR-10 classes, on which a LeNet-5 (no BatchNorm) passes 0.8.
GREY3_CLASSES = ("automobile", "deer", "ship")


def write_grey3_idx(data: Path, out: Path) -> None:
    """The ``grey3_idx`` setting's files: ``GREY3_CLASSES`` of the CIFAR-10 split, grey 28x28, as IDX files."""
    write_grey_idx(data, out, GREY3_CLASSES, "grey3-idx")


# Settings whose data files the panel makes first, from DATA into OUT: name -> maker(data, out).
MAKES_ITS_DATA = {"grey_idx": write_grey_idx, "grey_idx_bn": write_grey_idx, "grey3_idx": write_grey3_idx}


def teacher_overrides(setting: str, data: Path, out: Path) -> list[str]:
    """Train the setting's teacher once (``task=teacher``) and return what loads it.

    On one thread with deterministic kernels: the same teacher in every checkout on the same
    software, so that panel rows measured on different days compare students of one teacher.
    """
    if setting in OWN_TEACHER:
        return []
    setting = SHARES_TEACHER.get(setting, setting)
    run_dir = out / "teachers" / setting
    if not (run_dir / "results.json").exists():
        print(f"training the {setting} teacher", flush=True)
        cmd = command([*SETTINGS[setting], "task=teacher", "trainer.deterministic=true"], run_dir, data, out)
        execute(cmd, run_dir.with_suffix(".log"), threads=1)
    return [f"teacher.checkpoint={run_dir / 'teacher.pt'}"]


def run_panel(args: argparse.Namespace, runnable: dict[str, list[str]]) -> None:
    """Train the teachers, then every (setting, method, seed) not yet finished, ``--jobs`` at a time."""
    data, out = args.data_dir.resolve(), args.out.resolve()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = []
    for setting in args.settings:
        if setting in MAKES_ITS_DATA:
            MAKES_ITS_DATA[setting](data, out)
        teacher = teacher_overrides(setting, data, out)
        for method in args.methods:
            for seed in args.seeds:
                run_dir = out / "runs" / setting / method / f"seed{seed}"
                if not (run_dir / "results.json").exists():
                    overrides = [*SETTINGS[setting], *teacher, *SIZE, *runnable[method], f"seed={seed}"]
                    if (run_dir / "checkpoints" / "last.ckpt").exists():  # interrupted: continue it
                        overrides.append("ckpt_path=last")
                    jobs.append((command(overrides, run_dir, data, out), run_dir.with_suffix(".log")))
    print(f"{len(jobs)} runs to do, {args.jobs} at a time with {threads} thread(s) each", flush=True)
    start = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        for i, _ in enumerate(pool.map(lambda job: execute(job[0], job[1], threads), jobs), 1):
            print(f"  {i}/{len(jobs)} done ({time.monotonic() - start:.0f} s)", flush=True)


def results(out: Path, settings: list[str], methods: list[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The ``results.json`` of every finished run, by (setting, method)."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for setting in settings:
        for method in methods:
            for file in sorted((out / "runs" / setting / method).glob("seed*/results.json")):
                found[setting, method].append(json.loads(file.read_text()))
    return found


def time_to(runs: list[dict[str, Any]], fraction: str) -> str:
    """The mean training time until the student first reached ``fraction`` of the teacher, over the seeds that did.

    >>> time_to([{"time_to_teacher": {"0.9": 10.0}}, {"time_to_teacher": {"0.9": 20.0}}], "0.9")
    '15'
    >>> time_to([{"time_to_teacher": {"0.9": 10.0}}, {"time_to_teacher": {"0.9": None}}, {}], "0.9")
    '10 (1 of 3 seeds)'
    """
    times = [t for r in runs if (t := (r.get("time_to_teacher") or {}).get(fraction)) is not None]
    if not times:
        return "not reached"
    mean = f"{fmean(times):.0f}"
    return mean if len(times) == len(runs) else f"{mean} ({len(times)} of {len(runs)} seeds)"


def _ms(values: list[float]) -> str:
    return f"{fmean(values):.4f} +- {stdev(values) if len(values) > 1 else 0.0:.4f}"


def report(out: Path, settings: list[str], methods: list[str]) -> str:
    """The panel's tables in Markdown: per setting and method, then per method over the panel."""
    found = results(out, settings, methods)
    lines = ["| setting | method | seeds | teacher | student, final | student, best over training | "
             "best - final | final / teacher | to 0.9 of the teacher (s) | to 0.95 (s) | wall time (s) |",
             "|" + "---|" * 11]  # fmt: skip
    summary: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for setting in settings:
        for method in methods:
            runs = found.get((setting, method))
            if not runs:
                continue
            teacher = fmean(r["teacher"] for r in runs)
            final = [r["student"]["final"] for r in runs]
            best = [r["student"]["best"] for r in runs]
            gap = [b - f for b, f in zip(best, final, strict=True)]
            time_s = fmean(r["wall_time_s"] for r in runs)
            lines.append(
                f"| {setting} | {method} | {len(runs)} | {teacher:.4f} | {_ms(final)} | {_ms(best)} | "
                f"{fmean(gap):.4f} | {fmean(final) / teacher:.3f} | {time_to(runs, '0.9')} | "
                f"{time_to(runs, '0.95')} | {time_s:.0f} |"
            )
            entry = summary[method]
            entry["ratio_final"].append(fmean(final) / teacher)
            entry["ratio_best"].append(fmean(best) / teacher)
            entry["gap"].append(fmean(gap))
            entry["std"].append(stdev(final) if len(final) > 1 else 0.0)
            entry["worst_ratio"].append(min(final) / teacher)
            entry["time"].append(time_s)
    lines += ["", "Per method, over the settings it ran on (means of the per-setting values):", "",
              "| method | settings | final / teacher | best / teacher | best - final | std over seeds | "
              "worst seed's final / teacher | wall time (s) |", "|" + "---|" * 8]  # fmt: skip
    for method in methods:
        if method not in summary:
            continue
        e = summary[method]
        lines.append(
            f"| {method} | {len(e['gap'])} | {fmean(e['ratio_final']):.3f} | {fmean(e['ratio_best']):.3f} | "
            f"{fmean(e['gap']):.4f} | {fmean(e['std']):.4f} | {min(e['worst_ratio']):.3f} | {fmean(e['time']):.0f} |"
        )
    return "\n".join(lines) + "\n"


def variants(given: list[list[str]]) -> dict[str, list[str]]:
    """The ``--variant NAME OVERRIDES`` methods: each name with its overrides, split as a shell splits them.

    >>> variants([["robust_ngf32", "recipe=robust generator.ngf=32"]])
    {'robust_ngf32': ['recipe=robust', 'generator.ngf=32']}
    """
    return {name: shlex.split(overrides) for name, overrides in given}


def main() -> None:
    """Run the panel (what is not done yet), then print and save its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds mnist/ and cifar10/test/")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "panel", help="teachers, runs and tables")
    parser.add_argument("--settings", nargs="+", default=PANEL, choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"of {', '.join(METHODS)} and variants")
    parser.add_argument(
        "--variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDES"),
        help='a method of your own: --variant robust_ngf32 "recipe=robust generator.ngf=32"',
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--report-only", action="store_true", help="only tabulate the runs already finished")
    args = parser.parse_args()
    runnable = {**METHODS, **variants(args.variant)}
    unknown = [m for m in args.methods if m not in runnable]
    if unknown:
        parser.error(f"unknown method {unknown[0]}: one of {', '.join(runnable)}, or give it with --variant")
    if not args.report_only:
        try:
            run_panel(args, runnable)
        except RuntimeError as err:  # a run failed: say which and why, without a traceback
            raise SystemExit(f"panel.py: {err}") from None
    text = report(args.out.resolve(), args.settings, args.methods)
    (args.out / "panel.md").write_text(text)
    print(text, end="")
    print(f"written to {args.out / 'panel.md'}")


if __name__ == "__main__":
    main()
