"""The robustness panel: one recipe on several teachers and seeds, final and best side by side.

A user brings a teacher we never saw and has no data to pick an epoch with, so what counts is
the *final* student, on every teacher, without tuning. This script runs each method (the paper's
DFAD, DAFL, every stabiliser alone, the recommended recipe) with the same hyperparameters on
every setting of the panel, for several seeds, and reports per setting and per method: teacher,
final and best student (best over training: selected on the test split, which a user cannot
do), the best-minus-final gap, the standard deviation over seeds, and the wall time.

Settings (CPU-sized: 300 iterations of batch 128, a narrow Generator-A, LeNet-5-Half students):

- ``digits``: the embedded digits, LeNet-5 teacher (trained on the fly);
- ``mnist``: MNIST, LeNet-5 teacher (``task=teacher``, ~1 min);
- ``mnist_bn``: MNIST, a CIFAR ResNet-8 teacher with BatchNorm throughout (~5 min to train);
- ``cifar10``: a harder natural-image setting: a copy of the CIFAR-10 *test* images as class
  folders, split per class (seeded, saved) into 8,000 images that train a LeNet-5 colour teacher
  and 2,000 held out to evaluate;
- ``grey_idx`` (run by name: a check added after the recipe was fixed): the same split, greyscale 28x28,
  written as IDX files and read through ``dataset=idx`` with a LeNet-5 teacher: the path a user of a
  new MNIST-format dataset takes, on images that are not digits;
- ``cifar10_bn`` (run by name, the same kind of check): the CIFAR-10 split with a ResNet-8 colour
  teacher, BatchNorm throughout (15 epochs of ``task=teacher``, ~10 min);
- ``grey_idx_bn`` (run by name, a third BatchNorm teacher): ``grey_idx``'s files with a ResNet-8
  teacher (15 epochs, ~4 min), and ``dataset=idx``'s mean and std of 0.5, which do not standardise
  these images (their standard deviation after it is 0.46, not 1);
- ``mnist_bn_lenet5`` (run by name): ``mnist_bn``'s teacher distilled into a LeNet-5 (0.8 MFLOP
  per image, against the teacher's 24 and LeNet-5-Half's 0.27) instead of LeNet-5-Half;
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

Usage (from the repository root; the full panel is ~120 runs, about 4 hours on 2 CPU cores):

    python benchmarks/panel.py --data-dir DATA            # DATA/mnist, DATA/cifar10/test
    python benchmarks/panel.py --data-dir DATA --settings digits mnist --methods dfad robust --seeds 0
    python benchmarks/panel.py --data-dir DATA --settings grey_idx --methods dfad dafl dfq robust
"""

from __future__ import annotations

import argparse
import json
import os
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

# name -> the overrides of its dataset and teacher.
SETTINGS: dict[str, list[str]] = {
    "digits": ["dataset=digits"],
    "mnist": ["dataset=mnist", "paths.data_dir={data}"],
    "mnist_bn": ["dataset=mnist", "paths.data_dir={data}", "teacher=cifar_resnet8"],
    "cifar10": CIFAR,
    "grey_idx": GREY_IDX,
    "cifar10_bn": [*CIFAR, "teacher=cifar_resnet8", "teacher.training.epochs=15"],
    "grey_idx_bn": [*GREY_IDX, "teacher=cifar_resnet8", "teacher.training.epochs=15"],
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
PANEL = ["digits", "mnist", "mnist_bn", "cifar10"]  # what runs by default; the checks by name (--settings)
# Settings whose teacher is not trained here: digits trains it on the fly, cifar10_resnet20 brings its own.
OWN_TEACHER = {"digits", "cifar10_resnet20"}

# The paper's hyperparameters for small networks (its MNIST row), shared by every method that
# does not bring its own: student SGD 0.01 (momentum 0.9), generator Adam 1e-3, constant rates.
PAPER = ["recipe=paper", "system.student_optimizer.lr=0.01", "system.student_optimizer.weight_decay=1e-4",
         "system.generator_optimizer.lr=1e-3", "schedule=constant"]  # fmt: skip

ROBUST = ["method=dfad", "recipe=robust"]
# The recipe as it was at each earlier change, newest first, so that every row measured then can be
# run again as it was (on teachers without BatchNorm, where neither of the first two acts, the first
# two are the recipe itself): before the generated inputs took a learnable scale and shift where the
# BatchNorm prior acts; before its student updates took each sample in parts there; before its
# generator warm-up (an ablation row of the panel); and before system.student_reuse as well.
ROBUST_NO_INPUT_AFFINE = [*ROBUST, "system.input_affine=false"]
ROBUST_NO_MINIBATCHES = [*ROBUST_NO_INPUT_AFFINE, "system.student_minibatches=1"]
ROBUST_NO_WARMUP = [*ROBUST_NO_MINIBATCHES, "system.generator_warmup=0"]
ROBUST_REUSE1 = [*ROBUST_NO_WARMUP, "system.student_reuse=1"]
# The recipe on the panel's samples in batches of 64 (600 iterations): the base of the b64 variants.
ROBUST_B64 = [*ROBUST_NO_MINIBATCHES, "data.batch_size=64", "trainer.max_epochs=12"]

METHODS: dict[str, list[str]] = {
    "dfad": ["method=dfad", *PAPER],
    "dafl": ["method=dafl", *PAPER],
    "dfq": ["method=dfq", *PAPER],
    "ema": ["method=dfad", *PAPER, "system.ema_decay=0.99"],
    "replay": ["method=dfad", *PAPER, "system.replay_size=4096"],
    "balance": ["method=dfad", *PAPER, "system.balance=1"],
    "bn_prior": ["method=dfad", *PAPER, "system.bn_prior=1"],
    "cosine": ["method=dfad", *PAPER, "schedule=cosine"],
    "robust_reuse1": ROBUST_REUSE1,
    "robust_no_warmup": ROBUST_NO_WARMUP,
    "robust": ROBUST,
}
# Variants measured while choosing the recipe (README), run by name: --methods robust_cosine ...
VARIANTS: dict[str, list[str]] = {
    "generator_lr_1e-4": ["method=dfad", *PAPER, "system.generator_optimizer.lr=1e-4"],
    "bn_prior_10": ["method=dfad", *PAPER, "system.bn_prior=10"],
    "robust_cosine": [*ROBUST_REUSE1, "schedule=cosine"],
    "robust_kl_dfq_weights": [*ROBUST_REUSE1, "loss=kl", "system.balance=20"],
    "robust_balance_only": [*ROBUST_REUSE1, "system.one_hot=0", "system.balance=1"],
    "robust_balance_only_cosine": [*ROBUST_REUSE1, "system.one_hot=0", "system.balance=1",
                                   "schedule=cosine"],
    "robust_student_lr_0.05": [*ROBUST_REUSE1, "system.student_optimizer.lr=0.05"],
    "robust_student_lr_0.1": [*ROBUST_REUSE1, "system.student_optimizer.lr=0.1"],
    "robust_one_hot_5": [*ROBUST_REUSE1, "system.one_hot=5"],
    "robust_log1p": [*ROBUST_REUSE1, "adversarial=negative_log1p"],
    "robust_k1": [*ROBUST_REUSE1, "system.student_steps=1"],
    "robust_k2": [*ROBUST_REUSE1, "system.student_steps=2"],
    "robust_k10": [*ROBUST_REUSE1, "system.student_steps=10"],
    "robust_reuse8": [*ROBUST_NO_WARMUP, "system.student_reuse=8"],
    "robust_reuse4_cosine": [*ROBUST_NO_WARMUP, "system.student_reuse=4", "schedule=cosine"],
    "robust_k1_reuse20": [*ROBUST_NO_WARMUP, "system.student_steps=1", "system.student_reuse=20"],
    "robust_k1_reuse40": [*ROBUST_NO_WARMUP, "system.student_steps=1", "system.student_reuse=40"],
    "robust_no_minibatches": ROBUST_NO_MINIBATCHES,
    "robust_warmup50": [*ROBUST_NO_MINIBATCHES, "system.generator_warmup=50"],
    "robust_warmup100": [*ROBUST_NO_MINIBATCHES, "system.generator_warmup=100"],
    "robust_replay_1.0": [*ROBUST_NO_MINIBATCHES, "system.replay_fraction=1.0"],
    "robust_reuse_8": [*ROBUST_NO_MINIBATCHES, "system.student_reuse=8"],
    # The same samples in batches of 32: four times the iterations (and updates) of the panel's size.
    "robust_b32": [*ROBUST_NO_MINIBATCHES, "data.batch_size=32", "trainer.max_epochs=24"],
    "robust_b32_shift": [*ROBUST_NO_MINIBATCHES, "data.batch_size=32", "trainer.max_epochs=24", "system.shift=0.0625"],
    # ... with the generator's learning rate divided by 4: its four times as many steps move it as far.
    "robust_b32_glr": [*ROBUST_NO_MINIBATCHES, "data.batch_size=32", "trainer.max_epochs=24",
                       "system.generator_optimizer.lr=2.5e-4"],
    # The generator's faster pace of robust_b32 at the panel's batch: four times its learning rate.
    "robust_glr4": [*ROBUST_NO_MINIBATCHES, "system.generator_optimizer.lr=4e-3"],
    # Half-way to robust_b32: batches of 64 for 600 iterations; then with one more change each.
    "robust_b64": ROBUST_B64,
    "robust_b64_adam": [*ROBUST_B64, "system.student_optimizer._target_=torch.optim.Adam",
                        "~system.student_optimizer.momentum", "system.student_optimizer.lr=1e-3"],
    "robust_b64_kl": [*ROBUST_B64, "loss=kl"],
    # ... with as many student updates per sample as the recipe's batch of 128 (2, not 4).
    "robust_b64_reuse2": [*ROBUST_B64, "system.student_reuse=2"],
    # The generator's adversarial term only where student and teacher agree (DeepInversion's / CMI's mask).
    "robust_agree": [*ROBUST_NO_MINIBATCHES, "system.adversarial_agreement=true"],
    "robust_b64_agree": [*ROBUST_B64, "system.adversarial_agreement=true"],
    # Each generated sample translated by up to 1/16 or 1/8 of its sides before the networks see it.
    "robust_shift_0.0625": [*ROBUST_NO_MINIBATCHES, "system.shift=0.0625"],
    "robust_shift_0.125": [*ROBUST_NO_MINIBATCHES, "system.shift=0.125"],
    # The generator's Adam with GAN momentum (beta1 0.5, as DCGAN and Fast-DFKD); a 4x larger replay
    # memory; a longer moving average of the student.
    "robust_gbeta05": [*ROBUST_NO_MINIBATCHES, "+system.generator_optimizer.betas=[0.5,0.999]"],
    "robust_replay16k": [*ROBUST_NO_MINIBATCHES, "system.replay_size=16384"],
    "robust_ema995": [*ROBUST_NO_MINIBATCHES, "system.ema_decay=0.995"],
    # The recipe's student updates in 2 or 4 parts of each sample on every teacher (more, smaller
    # updates; the same samples, generator steps and arithmetic); the last also with the samples shifted.
    "robust_minibatches2": [*ROBUST_NO_INPUT_AFFINE, "system.student_minibatches=2"],
    "robust_minibatches4": [*ROBUST_NO_INPUT_AFFINE, "system.student_minibatches=4"],
    "robust_minibatches4_shift": [*ROBUST_NO_INPUT_AFFINE, "system.student_minibatches=4", "system.shift=0.0625"],
    "robust_no_input_affine": ROBUST_NO_INPUT_AFFINE,
    # ... and on every teacher, where on those without BatchNorm nothing but the game sets the contrast.
    "robust_input_affine": [*ROBUST, "system.input_affine=true"],
    # The recipe (its input scale and shift where the BatchNorm prior acts) in batches of 32, one part.
    "robust_b32_affine": [*ROBUST, "system.student_minibatches=1", "data.batch_size=32", "trainer.max_epochs=24"],
    # The warm-up at 3 and at 10 times the generator's learning rate (the recipe: its own rate).
    "robust_warmup_lr3": [*ROBUST, "system.generator_warmup_lr_scale=3"],
    "robust_warmup_lr10": [*ROBUST, "system.generator_warmup_lr_scale=10"],
    # A generator twice and four times the panel's width (four times: the paper's, the generic datasets' default).
    "robust_ngf32": [*ROBUST, "generator.ngf=32"],
    "robust_ngf64": [*ROBUST, "generator.ngf=64"],
}  # fmt: skip
RUNNABLE = {**METHODS, **VARIANTS}


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


def write_grey_idx(data: Path, out: Path) -> None:
    """The ``grey_idx`` setting's files: the CIFAR-10 split, greyscale 28x28, as IDX files (once)."""
    folder = out / "grey-idx"
    if (folder / "test-labels.gz").exists():
        return
    import numpy as np

    from dfad_lightning.data.images import ImageFolderDataset, write_idx

    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        images = ImageFolderDataset(data / "cifar10" / "test", 28, channels=1, split=part,
                                    split_file=out / "cifar10-split.json")  # fmt: skip
        pixels = np.stack([(images[i][0][0].numpy() * 255).round().astype(np.uint8) for i in range(len(images))])
        labels = np.array([y for _, y in images.samples], dtype=np.uint8)
        write_idx(folder / f"{part}-images.gz", pixels)
        write_idx(folder / f"{part}-labels.gz", labels)


# Settings whose data files the panel makes first, from DATA into OUT: name -> maker(data, out).
MAKES_ITS_DATA = {"grey_idx": write_grey_idx, "grey_idx_bn": write_grey_idx}


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


def run_panel(args: argparse.Namespace) -> None:
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
                    overrides = [*SETTINGS[setting], *teacher, *SIZE, *RUNNABLE[method], f"seed={seed}"]
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


def _ms(values: list[float]) -> str:
    return f"{fmean(values):.4f} +- {stdev(values) if len(values) > 1 else 0.0:.4f}"


def report(out: Path, settings: list[str], methods: list[str]) -> str:
    """The panel's tables in Markdown: per setting and method, then per method over the panel."""
    found = results(out, settings, methods)
    lines = ["| setting | method | seeds | teacher | student, final | student, best over training | "
             "best - final | final / teacher | wall time (s) |", "|" + "---|" * 9]  # fmt: skip
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
                f"{fmean(gap):.4f} | {fmean(final) / teacher:.3f} | {time_s:.0f} |"
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


def main() -> None:
    """Run the panel (what is not done yet), then print and save its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds mnist/ and cifar10/test/")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "panel", help="teachers, runs and tables")
    parser.add_argument("--settings", nargs="+", default=PANEL, choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(RUNNABLE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--report-only", action="store_true", help="only tabulate the runs already finished")
    args = parser.parse_args()
    if not args.report_only:
        try:
            run_panel(args)
        except RuntimeError as err:  # a run failed: say which and why, without a traceback
            raise SystemExit(f"panel.py: {err}") from None
    text = report(args.out.resolve(), args.settings, args.methods)
    (args.out / "panel.md").write_text(text)
    print(text, end="")
    print(f"written to {args.out / 'panel.md'}")


if __name__ == "__main__":
    main()
