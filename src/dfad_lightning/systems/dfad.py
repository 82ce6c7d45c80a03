"""The DFAD LightningModule: the adversarial loop over teacher, student and the input-maker."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, TypeVar, cast

import torch
from lightning import LightningModule
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.optim import SGD, Adam, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.optimizer import ParamsT
from torchmetrics import Metric

from dfad_lightning import losses
from dfad_lightning.errors import ConfigError, NonFiniteLossError
from dfad_lightning.metrics import check_class_labels
from dfad_lightning.parts import Generated, Inputs, MovingAverage, Objective, StudentSteps
from dfad_lightning.parts.objective import Discrepancy, plain
from dfad_lightning.rules import Rule, check_arguments

# What a checkpoint's "dfad_format" says: 2 since the loop's parts (1 before, or no entry).
CHECKPOINT_FORMAT = 2
# State-dict names of format 1 and what they are called now (a format-1 checkpoint is renamed on loading).
FORMAT_1_NAMES = {"student_ema.": "average.model.", "memory.": "learning.memory.", "input_affine.": "inputs.affine."}
# Where a checkpoint keeps the student a run delivers (final_student): the moving average if there
# is one (its name now, then in format 1), else the student itself.
FINAL_STUDENT_PREFIXES = ("average.model.module.", "student_ema.module.", "student.")

OptimizerFactory = Callable[[ParamsT], Optimizer]  # parameters, or parameter groups
SchedulerFactory = Callable[[Optimizer], LRScheduler]
PartT = TypeVar("PartT", bound=nn.Module)

# The paper's optimizers for its MNIST row (Table 7; weight decay as the authors' MNIST script),
# which conf/train.yaml also sets: SGD with momentum for the student, Adam for the generator.
SGD_DEFAULT: OptimizerFactory = partial(SGD, lr=0.01, momentum=0.9, weight_decay=1e-4)
ADAM_DEFAULT: OptimizerFactory = partial(Adam, lr=1e-3)


def migrate_state(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint's state dict under today's names (the parts' submodules).

    >>> list(migrate_state({"student_ema.n_averaged": 1, "memory.samples": 2, "student.w": 3}))
    ['average.model.n_averaged', 'learning.memory.samples', 'student.w']
    """
    renamed = {}
    for key, value in state.items():
        old = next((o for o in FORMAT_1_NAMES if key.startswith(o)), None)
        renamed[FORMAT_1_NAMES[old] + key.removeprefix(old) if old else key] = value
    return renamed


def _part(name: str, factory: Callable[..., PartT], *args: Any, **kwargs: Any) -> PartT:
    """Build the part ``name``; an argument it refuses is named under it (``learning.steps``)."""
    try:
        return factory(*args, **kwargs)
    except ConfigError as err:
        raise err.under(name) from None


class DFAD(LightningModule):
    """Data-Free Adversarial Distillation (Fang et al. 2019) of a frozen teacher into a student.

    Each iteration has two stages. In the *imitation* stage the student takes ``k`` steps, each
    minimising the discrepancy D(T(x), S(x)) on a fresh batch of inputs x; in the *generation*
    stage the input-maker takes its step maximising D, with gradients flowing through the
    teacher and the student. The teacher never changes and stays in eval mode. Training batches
    are the noise of one iteration, ``(k + 1, B, nz)`` (see
    :class:`~dfad_lightning.data.DFADDataModule`); evaluation batches are real ``(x, y)`` pairs.

    The loop is made of parts, each a submodule built here from a factory (Hydra gives
    ``_partial_`` configs; Python users pass classes or partials):

    - ``inputs``: how inputs are made (:class:`~dfad_lightning.parts.Generated`: a generator's
      samples; noise or real images for the baselines);
    - ``objective``: what the input-maker optimises (:class:`~dfad_lightning.parts.Objective`:
      the adversarial term, priors, and a warm-up on the priors alone);
    - ``learning``: how the student learns on the inputs (:class:`~dfad_lightning.parts.StudentSteps`:
      ``k`` steps, reuse, minibatches, a replay memory);
    - ``average``: the student a run delivers (:class:`~dfad_lightning.parts.MovingAverage`).

    With their defaults the loop is the paper's algorithm. Subclasses adapt it to a task by
    overriding a few hooks:

    - :meth:`discrepancy`: the student's loss on one batch of outputs;
    - :meth:`generator_loss`: the input-maker's loss on one batch of outputs;
    - :meth:`priors`: the terms of that loss that need only the teacher (its whole loss in the warm-up);
    - :meth:`synthesize`: how a noise batch becomes inputs;
    - :meth:`augment`: how a training batch of those inputs is varied before the networks see it;
    - :meth:`validation_step`: how a real batch updates the evaluation metric;
    - :meth:`fidelity`: how teacher and student are compared on data-free probes;
    - :meth:`report`: task-specific results for ``results.json``.

    Args:
        teacher: The pretrained network; frozen here.
        student: The network to train.
        generator: Maps ``(B, nz)`` noise to inputs of the teacher; ``None`` where the inputs
            need none (noise or real images).
        metric: Evaluation metric of a network's outputs against real targets, a torchmetrics
            ``Metric``; its ``higher_is_better`` decides what "best" means. The teacher is
            measured with a clone of it.
        metric_name: Short name used in logs: ``val/<name>``, ``val/<name>_best``, ``val/teacher_<name>``.
        discrepancy: ``D(student_out, teacher_out)``, minimised by the student.
        inputs: Builds the inputs part from ``anchored`` (whether the BatchNorm prior acts).
        objective: Builds the input-maker's objective from the teacher.
        learning: Builds the student's updates from ``anchored``.
        average: Builds the delivered student from the student.
        student_optimizer: Builds the student's optimizer from its parameters.
        generator_optimizer: Builds the input-maker's optimizer from its parameter groups.
        student_scheduler: Builds the student's LR schedule, stepped once per epoch, or ``None``.
        generator_scheduler: Builds the input-maker's LR schedule, stepped once per epoch, or ``None``.
        checkpoint_teacher: Keep the teacher's weights in checkpoints (off: it is rebuilt from its own file).
        channels_last: Store the networks' weights, and so their activations, channels-last: the
            same arithmetic in the layout CPU convolutions prefer.
        nonfinite: What a NaN or infinite loss does: ``"stop"`` the run after that iteration,
            naming it and the last good checkpoint, or ``"skip"`` the step and count it in
            ``train/skipped_steps``.
        teacher_fingerprint: What identifies the teacher's weights (file and SHA-256); saved in
            checkpoints, and a checkpoint saved with another teacher is refused on resume.
    """

    # The ranges of the module's own arguments; the config schema checks the same rules under ``system.``.
    RULES: tuple[Rule, ...] = (
        Rule("channels_last", bool, doc="channels-last weights and activations (the same arithmetic; faster on CPUs)"),
        Rule("checkpoint_teacher", bool, doc="keep the frozen teacher's weights in checkpoints"),
        Rule("nonfinite", str, choices=("stop", "skip"),
             doc="a NaN or infinite loss stops the run (exit 3), or skips the step and counts it"),
    )  # fmt: skip

    teacher_score: Tensor
    last_score: Tensor
    best_score: Tensor
    best_epoch: Tensor
    skipped_steps: Tensor

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        generator: nn.Module | None,
        metric: Metric,
        metric_name: str,
        discrepancy: Discrepancy = losses.mae,
        inputs: Callable[..., Inputs] = Generated,
        objective: Callable[..., Objective] = Objective,
        learning: Callable[..., StudentSteps] = StudentSteps,
        average: Callable[..., MovingAverage] = MovingAverage,
        student_optimizer: OptimizerFactory = SGD_DEFAULT,
        generator_optimizer: OptimizerFactory = ADAM_DEFAULT,
        student_scheduler: SchedulerFactory | None = None,
        generator_scheduler: SchedulerFactory | None = None,
        checkpoint_teacher: bool = False,
        channels_last: bool = False,
        nonfinite: Literal["stop", "skip"] = "stop",
        teacher_fingerprint: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        check_arguments(self.RULES, locals())
        self.automatic_optimization = False
        self.teacher = teacher.requires_grad_(False).eval()
        self.student = student
        self.generator = generator
        self.student_metric = metric
        self.teacher_metric = metric.clone()
        self.metric_name = metric_name
        self._discrepancy = plain(discrepancy)
        # The objective first: whether its BatchNorm prior anchors the inputs to the teacher's
        # data decides the "auto" options of the inputs and of the student's updates.
        self.objective = _part("objective", objective, self.teacher)
        self.inputs = _part("inputs", inputs, anchored=self.objective.anchored)
        self.learning = _part("learning", learning, anchored=self.objective.anchored)
        self.average = _part("average", average, student)
        if self.inputs.uses_generator and generator is None:
            raise ValueError(f"{type(self.inputs).__name__} inputs need a generator")
        # Inputs that nothing trains (the baselines on noise or data) have no warm-up either.
        self.warmup = self.objective.warmup if self.inputs.trains else 0
        if self.inputs.needs_warmup and not self.warmup:
            raise ConfigError(
                "system.objective.warmup",
                f"must be at least 1 with {type(self.inputs).__name__} inputs: the warm-up makes the first inputs "
                "the student learns from",
            )
        self.student_optimizer = student_optimizer
        self.generator_optimizer = generator_optimizer
        self.student_scheduler = student_scheduler
        self.generator_scheduler = generator_scheduler
        self.checkpoint_teacher = checkpoint_teacher
        self.channels_last = channels_last
        self.nonfinite = nonfinite
        # A plain dict (Hydra hands DictConfigs), so checkpoints load with weights_only=True.
        self.teacher_fingerprint = dict(teacher_fingerprint) if teacher_fingerprint else None
        # The student's score after every evaluation, with the iterations and training time to it.
        self.curve: list[dict[str, float]] = []
        self._elapsed_before = 0.0  # training time of earlier starts of a resumed run
        self._started = time.perf_counter()
        # Scores live in buffers so that they travel with checkpoints and across devices.
        self.register_buffer("teacher_score", torch.tensor(float("nan")))
        self.register_buffer("last_score", torch.tensor(float("nan")))
        self.register_buffer("best_score", torch.tensor(float("nan")))
        self.register_buffer("best_epoch", torch.tensor(-1))
        self.register_buffer("skipped_steps", torch.tensor(0))

    # ----------------------------------------------------------------------------------------
    # Hooks for subclasses
    # ----------------------------------------------------------------------------------------

    def synthesize(self, z: Tensor) -> Tensor:
        """Turn one noise batch ``(B, nz)`` into a batch of inputs for teacher and student (the inputs part's).

        Called once per step of either stage; under ``torch.no_grad()`` in the imitation stage,
        with gradients in the generation stage.
        """
        return self.inputs.sample(self, z)

    def augment(self, x: Tensor) -> Tensor:
        """Vary a training batch of inputs before teacher and student see it (the default: unchanged).

        Called on every training batch that :meth:`synthesize` makes, in each stage (with
        gradients in the generation stage and the warm-up), not on the samples of evaluations
        and probes. The teacher labels what this returns, so any change of the input is sound,
        for any task; use ``self.global_step`` and ``self.global_rank`` to seed random changes,
        so that a resumed run repeats a straight one.
        """
        return x

    def discrepancy(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        """The student's loss: a scalar discrepancy between its outputs and the teacher's.

        Called in every student update (``teacher_out`` carries no gradient) and, through
        :meth:`generator_loss`, in the generation stage. The default is the configured
        ``discrepancy`` (the paper's mean absolute error).
        """
        return self._discrepancy(student_out, teacher_out)

    def generator_loss(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        """The input-maker's loss, a scalar to *minimise*; it must grow as the discrepancy shrinks.

        Called once per generation step; both outputs carry gradients back to the inputs. The
        default is the objective part's: its adversarial term of :meth:`discrepancy` (``-D`` or
        ``-log(1 + D)``) plus its priors.
        """
        return self.objective.loss(student_out, teacher_out, self.discrepancy, self.priors)

    def priors(self, teacher_out: Tensor) -> Tensor:
        """The terms of the input-maker's loss that need only the teacher (0 when none is set).

        Called right after the teacher's forward pass on the generated batch, whose BatchNorm
        statistics :class:`~dfad_lightning.losses.BatchNormPrior` recorded; alone, it is the
        loss of the warm-up.
        """
        return self.objective.priors(teacher_out)

    def synthesis_loss(self, x: Tensor, warmup: bool = False, inputs: Tensor | None = None) -> Tensor:
        """The input-maker's loss on a training batch ``x``: its priors alone in the warm-up, else its whole loss.

        The student and teacher see ``x`` with gradients; the priors of the inputs themselves
        (total variation, l2) are taken on ``inputs``, the batch before any variation (``x`` if ``None``).
        """
        loss = self.priors(self.teacher(x)) if warmup else self.generator_loss(self.student(x), self.teacher(x))
        if self.objective.has_image_priors:
            loss = loss + self.objective.image_priors(x if inputs is None else inputs)
        return loss

    def fidelity(self, student_out: Tensor, teacher_out: Tensor) -> dict[str, Tensor]:
        """How closely the student follows the teacher on one batch of data-free probes.

        Called by :class:`~dfad_lightning.callbacks.DataFreeProbe` at the end of every epoch, with
        both networks in eval mode and no gradients; returns named scalars, averaged over the
        probe set and logged as ``val_datafree/<name>``. The default: ``agreement``, the fraction
        of positions (samples, or pixels for dense outputs) where both pick the same class
        (argmax over dimension 1), and ``mae``, the mean absolute difference of the outputs.
        """
        return {
            "agreement": (student_out.argmax(1) == teacher_out.argmax(1)).float().mean(),
            "mae": (student_out - teacher_out).abs().mean(),
        }

    def top_classes(self, teacher_out: Tensor) -> Tensor | None:
        """The teacher's class of each probe, for the class-spread warning of the data-free signal.

        :class:`~dfad_lightning.callbacks.DataFreeProbe` measures how evenly the generator's latest
        samples spread over these classes; a generator that collapsed onto a few of them is
        caught there. The default: the top-1 class where the output is one score per class
        (``samples x classes``), and ``None`` (no such warning) for dense outputs, whose classes
        are uneven by nature (most pixels are road or sky). A task whose outputs are not classes
        (multi-label scores, regression) returns ``None``.
        """
        return teacher_out.argmax(1) if teacher_out.dim() == 2 and teacher_out.shape[1] > 1 else None

    def report(self) -> dict[str, Any]:
        """Task-specific results, added to ``results.json`` at the end of a run (default: none).

        Called once, after training, on the main process; values must be JSON-serialisable.
        """
        return {}

    # ----------------------------------------------------------------------------------------
    # The DFAD loop
    # ----------------------------------------------------------------------------------------

    def training_step(self, z: Tensor, batch_idx: int) -> None:
        """One DFAD iteration on the noise ``z`` of shape ``(k + 1, B, nz)``."""
        if z.shape[0] != self.student_steps + 1:
            raise ValueError(f"expected {self.student_steps + 1} noise batches per iteration, got {z.shape[0]}")
        opt_s, opts_in = self._optimizers()
        self.learning.resolve(z.shape[1])  # fits "auto" parts at the first iteration; then only checks
        if self._warming_up(batch_idx):  # the input-maker alone, on its priors
            loss_w = cast(Tensor, self.inputs.step(self, z[-1], opts_in, warmup=True))
            self._guard(loss_w.new_empty(0), loss_w.detach())
            self.log("train/loss_warmup", loss_w.detach(), prog_bar=True)
            return

        # Imitation stage: k student steps, each on a fresh sample that the teacher labels. The
        # inputs and the teacher are not trained here, so their forward passes need no graph.
        student_losses: list[Tensor] = []
        for z_i in z[:-1]:
            with torch.no_grad():
                x = self.augment(self.synthesize(z_i))
                teacher_out = self.teacher(x)
            student_losses += self.learning.learn(self, x, teacher_out, opt_s)

        # Generation stage: the input-maker's step against the current student (none for fixed inputs).
        loss_g = self.inputs.step(self, z[-1], opts_in)
        loss_g = torch.zeros((), device=z.device) if loss_g is None else loss_g.detach()
        self.average.update(self.student)  # after both stages: the student's BatchNorm statistics moved in both

        self._guard(torch.stack(student_losses), loss_g)
        self.log_dict({"train/loss_student": student_losses[-1], "train/loss_generator": loss_g}, prog_bar=True)

    def update(self, loss: Tensor, optimizer: LightningOptimizer) -> None:
        """One optimizer step on ``loss`` (skipped where ``nonfinite="skip"`` and the loss is not finite)."""
        if self._skip(loss):
            return
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def _optimizers(self) -> tuple[LightningOptimizer, list[LightningOptimizer]]:
        """The student's optimizer, and the input-maker's (none where the inputs are not trained)."""
        optimizers = self.optimizers()
        if isinstance(optimizers, list):
            return optimizers[0], optimizers[1:]
        return optimizers, []

    @property
    def student_steps(self) -> int:
        """Student steps per iteration (``k``): the learning part's."""
        return self.learning.steps

    @property
    def updates_per_student_step(self) -> int:
        """Student updates on each student step's sample: ``reuse`` passes of ``minibatches``."""
        return self.learning.updates_per_step

    @property
    def steps_per_iteration(self) -> int:
        """Optimizer steps per iteration (what Lightning's ``global_step`` counts): student's and input-maker's."""
        return self.student_steps * self.updates_per_student_step + self.inputs.optimizer_steps

    @property
    def warmup_iterations(self) -> int:
        """The iterations of the warm-up; a fraction of the run is resolved against the trainer's run.

        Inputs that must be made before the student learns (a pool) get at least one.
        """
        least = int(self.inputs.needs_warmup)
        if not self.warmup or not isinstance(self.warmup, float):
            return max(least, int(self.warmup))
        run = self._run_iterations()
        if run is None:
            raise ConfigError(
                "system.objective.warmup",
                f"a fraction of the run ({self.warmup}) needs a run of known length: set "
                "trainer.max_epochs, or give the warm-up as an integer number of iterations",
            )
        return max(least, round(self.warmup * run))

    def _run_iterations(self) -> int | None:
        """The iterations of the whole run (``max_epochs`` x batches per epoch), or ``None`` if unknown."""
        epochs, per_epoch = self.trainer.max_epochs, self.trainer.num_training_batches
        if epochs is None or epochs < 0 or math.isinf(per_epoch):
            return None
        return epochs * int(per_epoch)

    def iterations(self, global_step: int) -> int:
        """The iterations done after ``global_step`` optimizer steps (a warm-up iteration: the input-maker's steps)."""
        per_warmup = max(1, self.inputs.optimizer_steps)
        warmup = min(global_step, self.warmup_iterations * per_warmup)
        return warmup // per_warmup + (global_step - warmup) // self.steps_per_iteration

    def _warming_up(self, batch_idx: int) -> bool:
        """Whether this iteration is one of the warm-up's, the first of the run."""
        return self.current_epoch * self.trainer.num_training_batches + batch_idx < self.warmup_iterations

    @property
    def final_student(self) -> nn.Module:
        """The student a run delivers (the average part's): evaluated, probed, saved in ``student.pt``, exported."""
        return self.average.delivered(self.student)

    def _skip(self, loss: Tensor) -> bool:
        """In ``nonfinite="skip"`` mode, whether to skip this step (and count it)."""
        if self.nonfinite != "skip" or bool(torch.isfinite(loss)):
            return False
        self.skipped_steps += 1
        return True

    def _guard(self, student_losses: Tensor, loss_g: Tensor) -> None:
        """After an iteration: stop on a non-finite loss (``nonfinite="stop"``) or log the skipped steps."""
        if self.nonfinite == "stop":
            self._stop_if_nonfinite(student_losses, loss_g)
        else:
            self.log("train/skipped_steps", self.skipped_steps.float())

    def _stop_if_nonfinite(self, student_losses: Tensor, loss_g: Tensor) -> None:
        """Stop the run if any loss of this iteration is NaN or infinite (one host synchronisation).

        Raises:
            NonFiniteLossError: Naming the iteration, the loss and the last good checkpoint.
        """
        if bool(torch.isfinite(torch.cat([student_losses, loss_g.view(1)])).all()):
            return
        bad = ~torch.isfinite(student_losses)
        if bool(bad.any()):
            update, per_step = int(bad.nonzero()[0]), self.updates_per_student_step
            step = f"student step {update // per_step + 1} of {self.student_steps}"
            if per_step > 1:
                step += f", update {update % per_step + 1} of {per_step}"
            which, value = f"student loss ({step})", student_losses[update]
        else:  # a warm-up iteration has no student step
            which, value = "generator loss" if len(student_losses) else "generator loss (warm-up)", loss_g
        saved = [p for cb in self.trainer.checkpoint_callbacks if (p := getattr(cb, "path", None)) and p.is_file()]
        last = saved[0] if saved else "none written yet"
        iteration = self.iterations(self.trainer.global_step)
        raise NonFiniteLossError(
            f"the {which} is {float(value)} in iteration {iteration} (epoch {self.current_epoch}); "
            f"the weights after it are not trusted and were not saved. Last good checkpoint: {last}. "
            "Lower the learning rates, or set system.nonfinite=skip to skip such steps."
        )

    def on_train_epoch_end(self) -> None:
        """Step the LR schedules once per epoch (the paper's unit), after the epoch has run.

        Under manual optimization Lightning leaves schedulers alone; stepping them here, at the
        end of the epoch, keeps decays from landing one epoch early as in the authors' code.
        """
        for scheduler in self._schedulers():
            scheduler.step()
        opt_s, opts_in = self._optimizers()
        rates = {"train/lr_student": opt_s.param_groups[0]["lr"]}
        if opts_in:
            rates["train/lr_generator"] = opts_in[0].param_groups[0]["lr"]
        self.log_dict(rates)

    def configure_optimizers(self) -> Any:
        """The student's optimizer first, then the input-maker's (where it is trained), and their schedules.

        The generator's schedule follows the input-maker's first optimizer.
        """
        optimizers = [self.student_optimizer(self.student.parameters())]
        optimizers += self.inputs.optimizers(self, self.generator_optimizer)
        factories = (self.student_scheduler, self.generator_scheduler)
        schedulers = [factory(opt) for factory, opt in zip(factories, optimizers, strict=False) if factory is not None]
        return optimizers, schedulers

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    # Evaluation on real data
    # ----------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """The outputs of the student the run delivers (:attr:`final_student`)."""
        out: Tensor = self.final_student(x)
        return out

    @property
    def teacher_measured(self) -> bool:
        """Whether the teacher's score on the evaluation split is known (it is measured once)."""
        return not bool(torch.isnan(self.teacher_score))

    def on_validation_epoch_start(self) -> None:
        """Decide once per evaluation whether the teacher is measured in it."""
        self._measure_teacher = not self.teacher_measured

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Update the evaluation metric with one real batch ``(x, target)``."""
        x, target = batch
        outputs = self.final_student(x)
        if self._measure_teacher:  # the first evaluation: check the labels once
            check_class_labels(outputs, target)
            self.teacher_metric.update(self.teacher(x), target)
        self.student_metric.update(outputs, target)

    def on_validation_epoch_end(self) -> None:
        """Log the student's score, the best so far, and the teacher's score."""
        score = self.student_metric.compute()
        self.student_metric.reset()
        if self.trainer.sanity_checking:
            return
        if self._measure_teacher:
            self.teacher_score.fill_(self.teacher_metric.compute())
            self.teacher_metric.reset()
        self.last_score.fill_(score)
        elapsed = self._elapsed_before + time.perf_counter() - self._started
        point = {"epoch": self.current_epoch, "iterations": self.iterations(self.trainer.global_step)}
        self.curve.append({**point, "elapsed_s": round(elapsed, 2), "score": float(score)})
        if self._improves(score):
            self.best_score.fill_(score)
            self.best_epoch.fill_(self.current_epoch)
        name = self.metric_name
        self.log_dict(
            {
                f"val/{name}": score,
                f"val/{name}_best": self.best_score,
                f"val/teacher_{name}": self.teacher_score,
            },
            prog_bar=True,
        )

    def _improves(self, score: Tensor) -> bool:
        if torch.isnan(self.best_score):
            return True
        if self.student_metric.higher_is_better is False:
            return bool(score < self.best_score)
        return bool(score > self.best_score)

    # ----------------------------------------------------------------------------------------
    # Mode and checkpoints
    # ----------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Set the memory format of the networks before their optimizers are built."""
        if self.channels_last:
            for net in (self.teacher, self.student, self.generator, self.average.model):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        # Lightning warns about modules in eval mode at the start of training: the frozen teacher
        # is one on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)

    def time_to(self, fraction: float) -> float | None:
        """Training seconds until the student first scored ``fraction`` of the teacher (or ``None``: never, or unknown).

        Read from the per-epoch evaluation (:attr:`curve`), so to an epoch's end. For a metric where
        lower is better, "a fraction of the teacher" is the teacher's score divided by it.
        """
        if not self.teacher_measured:
            return None
        teacher = float(self.teacher_score)
        lower_better = self.student_metric.higher_is_better is False
        for point in self.curve:
            reached = point["score"] * fraction <= teacher if lower_better else point["score"] >= fraction * teacher
            if reached:
                return point["elapsed_s"]
        return None

    def on_train_start(self) -> None:
        """Start the training clock; refuse a warm-up that would leave the student no iteration of the run.

        Raises:
            ConfigError: The warm-up is at least the run's iterations.
        """
        self._started = time.perf_counter()
        if not self.warmup:
            return
        warmup, run = self.warmup_iterations, self._run_iterations()  # a fraction of a run of unknown length fails here
        if run is not None and warmup >= run:
            raise ConfigError(
                "system.objective.warmup",
                f"{warmup} warm-up iterations leave the student none of the run's {run} "
                "(trainer.max_epochs x data.iterations_per_epoch): lower it (0 turns the warm-up off) or train longer",
            )

    def train(self, mode: bool = True) -> DFAD:
        """Set train mode everywhere but in the teacher, which stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the format and which teacher was used; leave its weights out unless asked to keep them."""
        checkpoint["dfad_format"] = CHECKPOINT_FORMAT
        checkpoint["dfad_teacher"] = self.teacher_fingerprint
        checkpoint["dfad_curve"] = self.curve
        if not self.checkpoint_teacher:
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read a checkpoint of this format or the one before; refuse one of another teacher or input scale.

        A format-1 checkpoint (written before the loop's parts) is renamed to today's names; one
        saved without the teacher is filled with this one.

        Raises:
            ConfigError: The checkpoint was written by a newer version, trained against a teacher
                with other weights, or with a learnt input scale where there is none now (or the reverse).
        """
        version = int(checkpoint.get("dfad_format", 1))
        if version > CHECKPOINT_FORMAT:
            raise ConfigError(
                "ckpt_path",
                f"the checkpoint was written by a newer dfad-lightning (checkpoint format {version}; this version "
                f"reads formats 1 to {CHECKPOINT_FORMAT}): resume it with the version that wrote it",
            )
        if version == 1:
            checkpoint["state_dict"] = migrate_state(checkpoint["state_dict"])
        self.curve = list(checkpoint.get("dfad_curve", []))
        self._elapsed_before = self.curve[-1]["elapsed_s"] if self.curve else 0.0
        saved = checkpoint.get("dfad_teacher")
        current = self.teacher_fingerprint
        if saved and current and saved.get("sha256") != current.get("sha256"):
            raise ConfigError(
                "teacher.checkpoint",
                f"the checkpoint to resume was trained against the teacher {saved.get('path')} "
                f"(sha256 {saved.get('sha256', '?')[:12]}), not {current.get('path')} "
                f"(sha256 {current.get('sha256', '?')[:12]}); resume with the same teacher",
            )
        state = checkpoint["state_dict"]
        saved_affine = "inputs.affine.scale" in state
        if saved_affine != (self.inputs.affine is not None):  # e.g. a robust run begun before input_affine=auto
            raise ConfigError(
                "system.inputs.input_affine",
                f"the checkpoint to resume was trained {'with' if saved_affine else 'without'} a learnt scale and "
                f"shift of the generated inputs; resume with system.inputs.input_affine={str(saved_affine).lower()}",
            )
        for key, value in self.teacher.state_dict(prefix="teacher.").items():
            state.setdefault(key, value)
        self.learning.prepare_to_load(state, "learning.", self.device)
        self.inputs.prepare_to_load(state, "inputs.", self.device)
