"""A data-free fidelity signal: how closely the student follows the teacher, measured without real data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor, nn

from dfad_lightning.errors import ConfigError
from dfad_lightning.files import save_atomic
from dfad_lightning.losses import per_channel
from dfad_lightning.systems import DFAD


def sampling_noise(first: float, first_probes: int | None, last: float, last_probes: int | None) -> float:
    """Two standard errors of the difference of two agreements, each measured on its own probes.

    A bound that holds for per-sample and per-pixel agreement alike: the mean of ``n`` values in
    [0, 1] with mean ``p`` varies by at most ``p (1 - p) / n``. The Agresti-Coull adjustment
    (two agreements and two disagreements added) keeps an agreement of 1.0 on a few probes from
    counting as exact.

    Args:
        first: The earlier agreement.
        first_probes: How many probes it was measured on; ``None`` (a history from before the
            counts were kept) makes the noise 0.
        last: The later agreement.
        last_probes: How many probes it was measured on (``None``: as above).

    Returns:
        Two standard errors of ``first - last``.
    """
    if not first_probes or not last_probes:
        return 0.0
    variance = 0.0
    for p, n in ((first, first_probes), (last, last_probes)):
        adjusted = (p * n + 2) / (n + 4)
        variance += adjusted * (1 - adjusted) / (n + 4)
    return 2 * math.sqrt(variance)


class DataFreeProbe(Callback):
    """Compare teacher and student after every epoch on probes the run makes itself.

    A user without data cannot compute ``val/acc``; this callback gives them a signal instead.
    At the end of every epoch it draws a *snapshot*: ``samples_per_snapshot`` inputs from the
    current generator (fixed noise, the generator in train mode as in training, its BatchNorm
    statistics left untouched), written to ``dirpath/snapshot_NNN.pt``. The probe set is every
    snapshot so far: old samples stay in it, so it does not drift with the current generator, and
    a student that forgets what it learnt early is caught. Teacher and student (in eval mode)
    are compared on it with the module's :meth:`~dfad_lightning.systems.DFAD.fidelity` hook, and
    the results logged as ``val_datafree/<name>`` (probe set), ``val_datafree/latest_<name>`` (the
    newest snapshot only) and ``val_datafree/noise_<name>`` (standard normal inputs, a
    data-independent probe), and on the newest snapshot ``val_datafree/latest_class_spread``
    (:meth:`class_spread`) and, on a teacher with BatchNorm layers, ``val_datafree/latest_bn_gap``
    (:meth:`batchnorm_gap`). Any of them can be the ``monitor`` of a ``ModelCheckpoint`` or
    ``EarlyStopping`` (run this callback before them); the default config keeps the student with
    the lowest ``val_datafree/latest_mae`` (``recipe=robust``: the highest ``val_datafree/agreement``).

    Snapshots are read back on resume. Over ``max_snapshots``, every other one is dropped, so
    the set keeps a spread over the whole run at a bounded size.

    Args:
        dirpath: Folder of the snapshots.
        nz: Latent size of the generator.
        samples_per_snapshot: Inputs drawn at each epoch's end.
        max_snapshots: Most snapshots kept.
        batch_size: Batch size of the comparison.
        seed: Seed of the snapshots' noise (snapshot ``e`` uses ``seed + e``) and of the noise probes.
        monitor: The value (without ``val_datafree/``) that selects a checkpoint in :meth:`selected`;
            keep it equal to the ``ModelCheckpoint``'s (the default config does; docs/datafree.md
            compares the choices).
        mode: ``"min"`` or ``"max"``: which end of ``monitor`` is better.
    """

    def __init__(
        self,
        dirpath: str | Path,
        nz: int,
        samples_per_snapshot: int = 64,
        max_snapshots: int = 64,
        batch_size: int = 256,
        seed: int = 12345,
        monitor: str = "latest_mae",
        mode: str = "min",
    ) -> None:
        if samples_per_snapshot < 1 or max_snapshots < 2:
            raise ValueError("samples_per_snapshot must be at least 1 and max_snapshots at least 2")
        self.dirpath = Path(dirpath)
        self.nz = nz
        self.samples_per_snapshot = samples_per_snapshot
        self.max_snapshots = max_snapshots
        self.batch_size = batch_size
        self.seed = seed
        self.monitor, self.mode = monitor, mode
        self.snapshots: dict[int, Tensor] = {}
        self.history: list[dict[str, Any]] = []  # one entry per epoch: its data-free values

    def path(self, epoch: int) -> Path:
        """The file of the snapshot of ``epoch``."""
        return self.dirpath / f"snapshot_{epoch:03d}.pt"

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Read back the snapshots of the epochs a resumed run has already done."""
        for file in sorted(self.dirpath.glob("snapshot_*.pt")):
            epoch = int(file.stem.split("_")[1])
            if epoch < trainer.current_epoch:
                self.snapshots[epoch] = torch.load(file, weights_only=True)

    @torch.no_grad()
    def snapshot(self, pl_module: LightningModule, epoch: int) -> Tensor:
        """Samples of the current inputs (the generator in train mode, its BatchNorm statistics unchanged)."""
        system = cast(DFAD, pl_module)
        seeded = torch.Generator().manual_seed(self.seed + epoch)
        noise = torch.randn(self.samples_per_snapshot, self.nz, generator=seeded).to(pl_module.device)
        generator = system.generator if system.generator is not None else nn.Identity()  # noise images: none
        buffers = {name: b.clone() for name, b in generator.named_buffers()}
        mode = generator.training
        generator.train()
        try:
            samples = system.synthesize(noise).detach().cpu()
        finally:
            generator.train(mode)
            for name, b in generator.named_buffers():
                b.copy_(buffers[name])
        return samples

    @torch.no_grad()
    def compare(self, pl_module: LightningModule, inputs: Tensor) -> dict[str, float]:
        """The module's fidelity values on ``inputs``, averaged over batches (weighted by size)."""
        totals: dict[str, float] = {}
        system = cast(DFAD, pl_module)
        student, teacher = system.final_student, system.teacher
        mode = student.training
        student.eval()
        try:
            for batch in torch.split(inputs, self.batch_size):
                x = batch.to(system.device)
                values = system.fidelity(student(x), teacher(x))
                for name, value in values.items():
                    totals[name] = totals.get(name, 0.0) + float(value) * len(batch)
        finally:
            student.train(mode)
        return {name: total / len(inputs) for name, total in totals.items()}

    @torch.no_grad()
    def class_spread(self, pl_module: LightningModule, inputs: Tensor) -> float | None:
        """How evenly the teacher spreads ``inputs`` over its classes: 1 even, 0 all in one class.

        The entropy of the teacher's classes (the module's
        :meth:`~dfad_lightning.systems.DFAD.top_classes` hook), divided by its largest possible
        value (the log of the number of classes, or of samples if fewer). A generator that has
        collapsed onto a few classes scores low however well the student imitates the teacher
        there, which the agreement cannot show. ``None`` where the hook gives no classes (dense or
        multi-label outputs).
        """
        system = cast(DFAD, pl_module)
        outputs = torch.cat([system.teacher(batch.to(system.device)) for batch in torch.split(inputs, self.batch_size)])
        classes = system.top_classes(outputs)
        if classes is None or len(classes) < 2:
            return None
        shares = torch.bincount(classes.flatten(), minlength=outputs.shape[1]).float() / classes.numel()
        shares = shares[shares > 0]
        entropy = -(shares * shares.log()).sum()  # -0.0 where one class has every sample
        return float(entropy) / math.log(min(outputs.shape[1], classes.numel())) + 0.0

    @torch.no_grad()
    def batchnorm_gap(self, pl_module: LightningModule, inputs: Tensor) -> float | None:
        """How far ``inputs`` are from the teacher's data, as its BatchNorm layers saw that data.

        At each BatchNorm layer of the teacher, each channel's mean and variance over ``inputs``
        (and positions) are compared with the running ones the layer learnt from the teacher's
        training data: ``|mean - running_mean| / running_std + |log(var / running_var)|``, averaged
        over the layer's channels. The gap is the largest over the layers. It has no unit: 0 is
        the teacher's training data itself; a few dozen real images score a little above 0 from
        sampling alone, images of a shifted copy of the data more (docs/datafree.md gives
        figures). A generator whose samples sit elsewhere (wrong contrast, no BatchNorm prior)
        makes the teacher answer on inputs unlike anything it learnt from, which the agreement
        cannot show.
        ``None`` where the teacher has no BatchNorm layer with running statistics.
        """
        system = cast(DFAD, pl_module)
        batchnorms = (m for m in system.teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        layers = [m for m in batchnorms if m.running_mean is not None and m.running_var is not None]
        if not layers or not len(inputs):
            return None
        sums: dict[nn.Module, list[Tensor]] = {}

        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            x = per_channel(args[0].float())
            # Moments about the running mean, summed over batches: small where the gap is, so little cancels.
            centred = x - cast(Tensor, module.running_mean).float()
            totals = [x.new_tensor(float(len(x))), centred.sum(0), centred.square().sum(0)]
            sums[module] = [a + b for a, b in zip(sums[module], totals, strict=True)] if module in sums else totals

        handles = [layer.register_forward_hook(record) for layer in layers]
        try:
            for batch in torch.split(inputs, self.batch_size):
                system.teacher(batch.to(system.device))
        finally:
            for handle in handles:
                handle.remove()
        gaps = []
        for layer in layers:
            count, first, second = sums[layer]
            eps = layer.eps
            shift = first / count  # the batch mean minus the running mean
            var = (second / count - shift.square()).clamp(min=0)
            running_var = cast(Tensor, layer.running_var).float() + eps
            gap = shift.abs() / running_var.sqrt() + torch.log((var + eps) / running_var).abs()
            gaps.append(float(gap.mean()))
        return max(gaps)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Draw this epoch's snapshot, compare on the probe sets, log the values."""
        epoch = trainer.current_epoch
        latest = self.snapshot(pl_module, epoch)
        self.snapshots[epoch] = latest
        if len(self.snapshots) > self.max_snapshots:
            self._thin(trainer)
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            save_atomic(latest, self.path(epoch))
        noise = torch.randn(len(latest), *latest.shape[1:], generator=torch.Generator().manual_seed(self.seed))
        probes = torch.cat(list(self.snapshots.values()))
        values = {
            **self.compare(pl_module, probes),
            **{f"latest_{k}": v for k, v in self.compare(pl_module, latest).items()},
            **{f"noise_{k}": v for k, v in self.compare(pl_module, noise).items()},
        }
        spread = self.class_spread(pl_module, latest)
        if spread is not None:
            values["latest_class_spread"] = spread
        gap = self.batchnorm_gap(pl_module, latest)
        if gap is not None:
            values["latest_bn_gap"] = gap
        if self.monitor not in values:  # the first epoch's end: the names depend on the module's fidelity hook
            raise ConfigError(
                "callbacks.datafree.monitor",
                f"is {self.monitor!r}, which the probe does not measure; choose one of {', '.join(sorted(values))}",
            )
        pl_module.log_dict({f"val_datafree/{k}": v for k, v in values.items()})
        # The real score of this epoch, where the run has real data (to measure the signal).
        real = trainer.callback_metrics.get(f"val/{getattr(pl_module, 'metric_name', '')}")
        self.history.append(
            {"epoch": epoch, **values, "probes": len(probes), "real": None if real is None else float(real)}
        )

    def selected(self) -> dict[str, Any] | None:
        """The epoch that ``monitor`` selects (the first of ties), as the ``ModelCheckpoint`` keeps it."""
        if not self.history:
            return None
        sign = -1.0 if self.mode == "min" else 1.0
        return dict(max(self.history, key=lambda h: (sign * h[self.monitor], -h["epoch"])))

    def preferred(self) -> dict[str, Any] | None:
        """The selected epoch where the signal rates it better than the last beyond its sampling noise, else ``None``.

        The run then delivers that epoch's student instead of the last one. For ``agreement``
        (higher is better, measured on counted probes) the margin is :func:`sampling_noise`; for
        other values, any margin.
        """
        chosen = self.selected()
        if chosen is None or chosen["epoch"] == self.history[-1]["epoch"]:
            return None
        last, sign = self.history[-1], (-1.0 if self.mode == "min" else 1.0)
        margin = sign * (chosen[self.monitor] - last[self.monitor])
        if self.monitor.endswith("agreement"):
            noise = sampling_noise(chosen[self.monitor], chosen.get("probes"), last[self.monitor], last.get("probes"))
        else:
            noise = 0.0
        return chosen if margin > noise else None

    def warnings(self, drop: float = 0.05, floor: float = 0.7, spread: float = 0.7, bn_gap: float = 0.5) -> list[str]:
        """What the signal says went wrong, as sentences with what to try (none if all looks well).

        Judged from the run's own probes only, so it works without real data: the student's
        agreement with the teacher on the probe set ``drop`` or more below its peak at the end (the
        student forgot what it had learnt: the game was unstable), falling over each of the last
        two epochs by ``drop / 2`` or more in all (it is still getting worse), below ``floor``
        (it is far from following the teacher), or the teacher's classes of the generator's latest samples spread
        less than ``spread`` (see :meth:`class_spread`: the generator collapsed onto a few
        classes, and the student learns little of the others), or, on a teacher with BatchNorm
        layers, the latest samples' statistics there ``bn_gap`` or more from the teacher's data
        (see :meth:`batchnorm_gap`: the teacher answers on inputs unlike its data, and agreeing
        with it there says little).

        A fall counts only where it is also larger than the probes' sampling noise
        (:func:`sampling_noise`): an agreement measured on a few hundred probes moves by a few
        hundredths from the draw of the probes alone. docs/datafree.md says how each threshold
        was set.

        Args:
            drop: How far below its peak the final agreement may be.
            floor: The lowest acceptable final agreement.
            spread: The lowest acceptable final class spread.
            bn_gap: The highest acceptable final BatchNorm gap.
        """
        values = [h["agreement"] for h in self.history]
        if not values:
            return []
        found, final = [], values[-1]

        def fell(start: int, by: float) -> bool:
            """Whether the agreement fell from history entry ``start`` to the last by ``by`` and beyond the noise."""
            first, last = self.history[start], self.history[-1]
            noise = sampling_noise(first["agreement"], first.get("probes"), last["agreement"], last.get("probes"))
            return bool(first["agreement"] - last["agreement"] >= max(by, noise))

        peak = max(range(len(values)), key=values.__getitem__)
        if fell(peak, drop):
            found.append(
                f"the student's agreement with the teacher on the run's own probes fell from {values[peak]:.3f} "
                f"(epoch {self.history[peak]['epoch']}) to {final:.3f}: it forgot what it had learnt"
            )
        elif len(values) >= 3 and values[-3] > values[-2] > final and fell(len(values) - 3, drop / 2):
            found.append(
                f"the student's agreement with the teacher on the run's own probes fell over the last two epochs "
                f"({values[-3]:.3f}, {values[-2]:.3f}, {final:.3f})"
            )
        if final < floor:
            found.append(f"the student agrees with the teacher on only {final:.0%} of the run's own probes")
        last_spread = self.history[-1].get("latest_class_spread")
        if last_spread is not None and last_spread < spread:
            found.append(
                f"the teacher puts the generator's latest samples in few of its classes (class spread "
                f"{last_spread:.2f}, 1 is even): the generator collapsed, and the student learns little of the rest"
            )
        last_gap = self.history[-1].get("latest_bn_gap")
        if last_gap is not None and last_gap >= bn_gap:
            found.append(
                f"the generator's latest samples are unlike the teacher's data: their statistics at its BatchNorm "
                f"layers are {last_gap:.2f} from those it learnt (0 would be its training data), so agreeing with it "
                "on them says little; the BatchNorm prior (system.objective.bn_prior, on in recipe=robust) pulls them "
                "closer, "
                "and dataset.mean and dataset.std must be the normalisation the teacher was trained with"
            )
        return found

    def _thin(self, trainer: Trainer) -> None:
        """Drop every other snapshot (the newest is always kept)."""
        epochs = sorted(self.snapshots)
        for epoch in epochs[-2::-2]:
            del self.snapshots[epoch]
            if trainer.is_global_zero:
                self.path(epoch).unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        """The history travels in checkpoints (the snapshots are on disk)."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history of a resumed run."""
        self.history = list(state_dict.get("history", []))
