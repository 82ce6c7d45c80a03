"""Speed of one DFAD iteration: this project (Lightning) against a plain PyTorch loop, side by side.

Both run the same algorithm (k student steps on fresh samples of the fixed generator, then one
generator step through teacher and student), with the same networks, batch sizes and memory
format, built from the same Hydra configs, in one process, alternating so that drift in the
machine's speed hits both alike. The plain loop is the authors' algorithm written here in a few
lines (``plain_iteration``). Reported per configuration: ms per iteration (median of the repeats),
iterations/s, images/s (generated samples through the networks, (k + 1) x batch per iteration),
peak GPU memory, FLOP per iteration (counted by PyTorch), achieved TFLOP/s, and the ratio
Lightning / plain (at most 1.05 is the target on the CPU).

    python benchmarks/speed.py                     # CPU: the embedded default (digits) only
    python benchmarks/speed.py --configs mnist cifar10 camvid   # the paper's settings (GPU-sized)
    python benchmarks/speed.py --configs panel_mnist_bn   # the recipe's game on a BatchNorm teacher

Networks keep their random initial weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning import Callback
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dfad_lightning.allocator import keep_freed_memory
from dfad_lightning.data import DFADDataModule
from dfad_lightning.tasks.build import quiet_lightning

ROOT = Path(__file__).resolve().parents[1]


# Each configuration: the overrides that compose it (the paper's settings, and the CPU default).
CONFIGS = {
    "default": ["recipe=paper"],  # the embedded default's size, the paper's algorithm: the loop's own cost
    # The embedded default as it runs (recipe=robust): what the stabilisers cost on top, per
    # iteration of the game; its warm-up (the first third of a run, generator steps alone, each
    # cheaper than an iteration) would mix into the few iterations timed here, so it is left out.
    "robust": ["system.objective.warmup=0"],
    # The robustness panel's MNIST-BN run at the panel's size (recipe=robust, its game without the
    # warm-up): the recipe's cost on a BatchNorm teacher, where its prior and minibatches act.
    "panel_mnist_bn": [
        "dataset=mnist",
        "teacher=cifar_resnet8",
        "recipe=robust",
        "system.objective.warmup=0",
        "generator.ngf=16",
        "system.channels_last=true",
        "data.batch_size=128",
    ],
    "mnist": ["experiment=paper_mnist", "trainer=cpu"],
    "cifar10": ["experiment=paper_cifar10", "trainer=cpu"],
    "camvid": ["experiment=paper_camvid", "trainer=cpu"],
}


def load_config(name: str) -> DictConfig:
    """The composed config of a named setting (``teacher.checkpoint`` is not needed to time it)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*CONFIGS[name], "paths.output_dir=/tmp/unused"])


def networks(cfg: DictConfig, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Teacher (frozen, eval), student and generator of the config, on ``device``."""
    torch.manual_seed(0)
    teacher = instantiate(cfg.teacher.net).to(device).eval().requires_grad_(False)
    student, generator = instantiate(cfg.model).to(device), instantiate(cfg.generator).to(device)
    if cfg.system.channels_last:
        for net in (teacher, student, generator):
            net.to(memory_format=torch.channels_last)
    return teacher, student, generator


def plain_iteration(
    teacher: nn.Module,
    student: nn.Module,
    generator: nn.Module,
    opt_s: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    k: int,
    batch: int,
    nz: int,
    device: torch.device,
) -> None:
    """One DFAD iteration as the authors wrote it, in plain PyTorch (MAE, generator loss ``-MAE``)."""
    for _ in range(k):
        z = torch.randn(batch, nz, device=device)
        with torch.no_grad():
            x = generator(z)
            t = teacher(x)
        loss_s = F.l1_loss(student(x), t)
        opt_s.zero_grad(set_to_none=True)
        loss_s.backward()  # type: ignore[no-untyped-call]
        opt_s.step()
    z = torch.randn(batch, nz, device=device)
    x = generator(z)
    student.requires_grad_(False)
    loss_g = -F.l1_loss(student(x), teacher(x))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()  # type: ignore[no-untyped-call]
    opt_g.step()
    student.requires_grad_(True)


def sync(device: torch.device) -> None:
    """Wait for the device (timings must include the queued work)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_plain(cfg: DictConfig, device: torch.device, warmup: int, iterations: int) -> float:
    """Seconds per iteration of the plain loop."""
    teacher, student, generator = networks(cfg, device)
    opt_s = instantiate(cfg.system.student_optimizer)(student.parameters())
    opt_g = instantiate(cfg.system.generator_optimizer)(generator.parameters())
    args = (teacher, student, generator, opt_s, opt_g, cfg.system.learning.steps, cfg.data.batch_size, cfg.generator.nz)
    for _ in range(warmup):
        plain_iteration(*args, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        plain_iteration(*args, device)
    sync(device)
    return (time.perf_counter() - start) / iterations


class IterationClock(Callback):
    """Times the iterations after the warm-up ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock at the first timed iteration."""
        if idx == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        """Stop it after each iteration (the last one counts)."""
        sync(pl_module.device)
        self.end = time.perf_counter()


def time_lightning(cfg: DictConfig, device: torch.device, warmup: int, iterations: int) -> float:
    """Seconds per iteration of this project's LightningModule under a Lightning Trainer."""
    teacher, student, generator = networks(cfg, device)
    system = instantiate(cfg.system, teacher=teacher, student=student, generator=generator)
    data = DFADDataModule(
        nz=cfg.generator.nz,
        batch_size=cfg.data.batch_size,
        student_steps=cfg.system.learning.steps,
        iterations_per_epoch=warmup + iterations,
    )
    clock = IterationClock(warmup)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(system, datamodule=data)
    return (clock.end - clock.start) / iterations


def flops_per_iteration(cfg: DictConfig, device: torch.device) -> float:
    """FLOP of one plain iteration (forward and backward), counted by PyTorch."""
    teacher, student, generator = networks(cfg, device)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.0)
    opt_g = torch.optim.SGD(generator.parameters(), lr=0.0)
    args = (teacher, student, generator, opt_s, opt_g, cfg.system.learning.steps, cfg.data.batch_size, cfg.generator.nz)
    with FlopCounterMode(display=False) as counter:
        plain_iteration(*args, device)
    return float(counter.get_total_flops())


def measure(name: str, device: torch.device, warmup: int, iterations: int, repeats: int) -> dict[str, Any]:
    """Alternate plain and Lightning runs; medians of each; derived rates."""
    cfg = load_config(name)
    timers: dict[str, Callable[..., float]] = {"plain": time_plain, "lightning": time_lightning}
    times: dict[str, list[float]] = {key: [] for key in timers}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        for key, timer in timers.items():
            times[key].append(timer(cfg, device, warmup, iterations))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    flops = flops_per_iteration(cfg, device)
    images = (cfg.system.learning.steps + 1) * cfg.data.batch_size
    rows = {}
    for key, values in times.items():
        seconds = statistics.median(values)
        rows[key] = {
            "ms": 1e3 * seconds,
            "it/s": 1 / seconds,
            "img/s": images / seconds,
            "TFLOP/s": flops / seconds / 1e12,
        }
    return {"config": name, "batch": cfg.data.batch_size, "k": cfg.system.learning.steps, "flop": flops,
            "peak_gib": peak, "rows": rows, "ratio": rows["lightning"]["ms"] / rows["plain"]["ms"]}  # fmt: skip


def main() -> None:
    """Measure the chosen configurations and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["default"], choices=list(CONFIGS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()  # as train.py: both loops run with the same allocator settings
    quiet_lightning()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {card}; torch {torch.__version__}; lightning {L.__version__}")
    print("| config | batch | k | impl | ms/iter | iter/s | images/s | peak GiB | GFLOP/iter | TFLOP/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        result = measure(name, device, args.warmup, args.iterations, args.repeats)
        for impl, row in result["rows"].items():
            ratio = f"{result['ratio']:.3f}" if impl == "lightning" else "1"
            print(
                f"| {name} | {result['batch']} | {result['k']} | {impl} | {row['ms']:.1f} | {row['it/s']:.2f} | "
                f"{row['img/s']:.0f} | {result['peak_gib']:.2f} | {result['flop'] / 1e9:.1f} | "
                f"{row['TFLOP/s']:.3f} | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
