"""The DFAD LightningModule: the adversarial loop over teacher, student and generator."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, cast

import torch
from lightning import LightningModule
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.optim import SGD, Adam, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.optimizer import ParamsT
from torch.optim.swa_utils import AveragedModel
from torchmetrics import Metric

from dfad_lightning import losses
from dfad_lightning.errors import ConfigError, NonFiniteLossError
from dfad_lightning.metrics import check_class_labels
from dfad_lightning.networks.generators import ScaleShift
from dfad_lightning.rules import POSITIVE, Rule, check_arguments
from dfad_lightning.systems.memory import ReplayMemory

REPLAY_DTYPES = ("float32", "bfloat16", "float16")
# student_minibatches="auto": up to this many parts where the BatchNorm prior acts, none smaller
# than AUTO_MIN_PART samples (docs/recipe.md says why).
AUTO_MINIBATCHES = 4
AUTO_MIN_PART = 32
# input_affine: its scale and shift learn at this multiple of the generator's LR, so that Adam
# (about one LR per step) can move them across their range within a warm-up.
INPUT_AFFINE_LR_FACTOR = 10.0
REPLAY_WARN_BYTES = 2**30  # a replay memory above this size warns (see DFAD._new_memory)
# Where a DFAD checkpoint keeps the student a run delivers (final_student): the moving average
# if there is one, else the student itself.
FINAL_STUDENT_PREFIXES = ("student_ema.module.", "student.")

OptimizerFactory = Callable[[ParamsT], Optimizer]  # parameters, or parameter groups
SchedulerFactory = Callable[[Optimizer], LRScheduler]
Discrepancy = Callable[[Tensor, Tensor], Tensor]
Adversarial = Callable[[Tensor], Tensor]

# The paper's optimizers for its MNIST row (Table 7; weight decay as the authors' MNIST script),
# which conf/train.yaml also sets: SGD with momentum for the student, Adam for the generator.
SGD_DEFAULT: OptimizerFactory = partial(SGD, lr=0.01, momentum=0.9, weight_decay=1e-4)
ADAM_DEFAULT: OptimizerFactory = partial(Adam, lr=1e-3)


def auto_minibatches(batch_size: int) -> int:
    """The parts ``student_minibatches="auto"`` takes a batch in where the BatchNorm prior acts.

    >>> [auto_minibatches(b) for b in (8, 63, 64, 128, 256)]
    [1, 1, 2, 4, 4]
    """
    return min(AUTO_MINIBATCHES, max(1, batch_size // AUTO_MIN_PART))


def _plain(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` as a plain :class:`functools.partial` if it is a subclass of one, else ``fn`` itself.

    Hydra's ``_partial_: true`` gives a partial that re-checks Hydra's target policy on every
    call, a cost comparable to a small network's update on a CPU; the target, arguments and
    result stay the same.
    """
    if isinstance(fn, partial) and type(fn) is not partial:
        return partial(fn.func, *fn.args, **fn.keywords)
    return fn


class DFAD(LightningModule):
    """Data-Free Adversarial Distillation (Fang et al. 2019) of a frozen teacher into a student.

    A generator G turns noise into inputs x = G(z). Each iteration has two stages: in the
    *imitation* stage the student takes ``student_steps`` steps minimising the discrepancy
    D(T(x), S(x)) on fresh samples of the fixed generator; in the *generation* stage G takes one
    step maximising D on a fresh sample, with gradients flowing through the teacher and the
    student. The teacher never changes and stays in eval mode. Training batches are the noise of
    one iteration, ``(student_steps + 1, B, nz)`` (see :class:`~dfad_lightning.data.DFADDataModule`);
    evaluation batches are real ``(x, y)`` pairs.

    With its defaults this is the paper's algorithm. The other options steady the game (the
    recommended recipe, ``recipe=robust``, sets them; ``docs/recipe.md`` says why each).

    Subclasses adapt the method to a task by overriding a few hooks:

    - :meth:`discrepancy`: the student's loss on one batch of outputs;
    - :meth:`generator_loss`: the generator's loss on one batch of outputs;
    - :meth:`priors`: the terms of that loss that need only the teacher (its whole loss in the
      warm-up);
    - :meth:`synthesize`: how a noise batch becomes inputs;
    - :meth:`augment`: how a training batch of those inputs is varied before the networks see it;
    - :meth:`validation_step`: how a real batch updates the evaluation metric;
    - :meth:`fidelity`: how teacher and student are compared on data-free probes;
    - :meth:`report`: task-specific results for ``results.json``.

    Args:
        teacher: The pretrained network; frozen here.
        student: The network to train.
        generator: Maps ``(B, nz)`` noise to inputs of the teacher.
        metric: Evaluation metric of a network's outputs against real targets, a torchmetrics
            ``Metric``; its ``higher_is_better`` decides what "best" means. The teacher is
            measured with a clone of it.
        metric_name: Short name used in logs: ``val/<name>``, ``val/<name>_best``,
            ``val/teacher_<name>``.
        discrepancy: ``D(student_out, teacher_out)``, minimised by the student.
        adversarial: Turns D into the generator's loss (``losses.negative`` is ``-D``).
        student_steps: Student steps per generator step (``k``).
        student_reuse: Student updates on each student step's sample, which the generator makes
            and the teacher labels once.
        student_minibatches: Each of those passes takes the sample in this many parts, one update
            each (at least 2 samples a part, for BatchNorm). ``"auto"``: :func:`auto_minibatches`
            of the batch size where the BatchNorm prior acts, else 1.
        student_optimizer: Builds the student's optimizer from its parameters.
        generator_optimizer: Builds the generator's optimizer from its parameter groups.
        student_scheduler: Builds the student's LR schedule, stepped once per epoch, or ``None``.
        generator_scheduler: Builds the generator's LR schedule, stepped once per epoch, or ``None``.
        checkpoint_teacher: Keep the teacher's weights in checkpoints (off: it is rebuilt from
            its own file).
        channels_last: Store the three networks' weights, and so their activations,
            channels-last: the same arithmetic in the layout CPU convolutions prefer.
        nonfinite: What a NaN or infinite loss does: ``"stop"`` the run after that iteration,
            naming it and the last good checkpoint, or ``"skip"`` the step and count it in
            ``train/skipped_steps``.
        teacher_fingerprint: What identifies the teacher's weights (file and SHA-256); saved in
            checkpoints, and a checkpoint saved with another teacher is refused on resume.
        train_generator: Run the generation stage; ``False`` for baselines whose inputs come
            from elsewhere.
        ema_decay: Keep an exponential moving average of the student's weights and BatchNorm
            statistics, updated once per iteration with the decay ``min(ema_decay, (1 + n) /
            (10 + n))`` after ``n`` updates; it is then the student evaluated, probed and
            exported (:attr:`final_student`). ``None``: no average.
        replay_size: Samples kept in a :class:`~dfad_lightning.systems.memory.ReplayMemory` of
            everything the generator made, with the teacher's outputs; ``0``: no replay.
        replay_fraction: Each student update adds ``replay_fraction * B`` samples from the
            memory to its ``B`` fresh ones, drawn anew for every update.
        replay_dtype: How the memory stores samples and outputs: ``"float32"``, or
            ``"bfloat16"`` / ``"float16"`` at half the size.
        balance: Weight of :func:`~dfad_lightning.losses.class_balance` of the teacher's outputs
            in the generator's loss.
        one_hot: Weight of :func:`~dfad_lightning.losses.one_hot` of the teacher's outputs in
            the generator's loss.
        bn_prior: Weight of :class:`~dfad_lightning.losses.BatchNormPrior` of the teacher in the
            generator's loss (nothing on a teacher without BatchNorm layers).
        generator_warmup: The first iterations train the generator alone, one step each on the
            priors: an integer is a number of iterations, a float below 1 a fraction of the run's.
            Needs a prior; ``0``: none.
        input_affine: Scale and shift every generated input by a learnable scale and shift (one
            each, :class:`~dfad_lightning.networks.ScaleShift`), trained with the generator at
            ``INPUT_AFFINE_LR_FACTOR`` times its LR, so that the BatchNorm prior can set the
            inputs' contrast. ``"auto"``: where the BatchNorm prior acts.
    """

    # The ranges of the arguments; the config schema checks the same rules under ``system.``.
    RULES: tuple[Rule, ...] = (
        Rule("student_steps", int, low=1, doc="k: student steps per generator step"),
        Rule("student_reuse", int, low=1, doc="student updates on each student step's sample (made and labelled once)"),
        Rule("student_minibatches", int, low=1, also=("auto",),
             doc="parts each pass takes the sample in, one update each; auto: 4 where the BatchNorm prior acts, "
                 "none below 32 samples, else 1"),
        Rule("channels_last", bool, doc="channels-last weights and activations (the same arithmetic; faster on CPUs)"),
        Rule("checkpoint_teacher", bool, doc="keep the frozen teacher's weights in checkpoints"),
        Rule("nonfinite", str, choices=("stop", "skip"),
             doc="a NaN or infinite loss stops the run (exit 3), or skips the step and counts it"),
        Rule("train_generator", bool, doc="run the generation stage (off in the baselines that need no generator)"),
        Rule("ema_decay", float, low=0, high=1, nullable=True, why="or null: no moving average",
             doc="moving average of the student's weights, per iteration; it is the student evaluated and exported"),
        Rule("replay_size", int, low=0, why="0: no replay",
             doc="samples in a replay memory of everything the generator made, with the teacher's outputs"),
        Rule("replay_fraction", float, low=POSITIVE,
             doc="each student update adds this fraction of its batch from the memory"),
        Rule("replay_dtype", str, choices=REPLAY_DTYPES, doc="how the memory stores samples; bfloat16 halves it"),
        Rule("balance", float, low=0, doc="weight of the class-balance prior on the teacher's outputs"),
        Rule("one_hot", float, low=0, doc="weight of the one-hot (confidence) prior on the teacher's outputs"),
        Rule("bn_prior", float, low=0, doc="weight of the BatchNorm-statistics prior of the teacher"),
        Rule("generator_warmup", "count_or_fraction",
             doc="the first iterations train the generator alone on its priors"),
        Rule("input_affine", bool, also=("auto",),
             doc="a learnable scale and shift of every generated input; auto: where the BatchNorm prior acts"),
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
        generator: nn.Module,
        metric: Metric,
        metric_name: str,
        discrepancy: Discrepancy = losses.mae,
        adversarial: Adversarial = losses.negative,
        student_steps: int = 5,
        student_reuse: int = 1,
        student_minibatches: int | Literal["auto"] = 1,
        student_optimizer: OptimizerFactory = SGD_DEFAULT,
        generator_optimizer: OptimizerFactory = ADAM_DEFAULT,
        student_scheduler: SchedulerFactory | None = None,
        generator_scheduler: SchedulerFactory | None = None,
        checkpoint_teacher: bool = False,
        channels_last: bool = False,
        nonfinite: Literal["stop", "skip"] = "stop",
        teacher_fingerprint: dict[str, str] | None = None,
        train_generator: bool = True,
        ema_decay: float | None = None,
        replay_size: int = 0,
        replay_fraction: float = 0.5,
        replay_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        balance: float = 0.0,
        one_hot: float = 0.0,
        bn_prior: float = 0.0,
        generator_warmup: float = 0,
        input_affine: bool | Literal["auto"] = False,
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
        self._discrepancy = _plain(discrepancy)
        self._adversarial = _plain(adversarial)
        self.student_steps, self.student_reuse = student_steps, student_reuse
        self.student_optimizer = student_optimizer
        self.generator_optimizer = generator_optimizer
        self.student_scheduler = student_scheduler
        self.generator_scheduler = generator_scheduler
        self.checkpoint_teacher = checkpoint_teacher
        self.channels_last = channels_last
        self.nonfinite = nonfinite
        # A plain dict (Hydra hands DictConfigs), so checkpoints load with weights_only=True.
        self.teacher_fingerprint = dict(teacher_fingerprint) if teacher_fingerprint else None
        self.train_generator = train_generator
        self.student_ema = self._average(student, ema_decay) if ema_decay is not None else None
        # Made at the first student step, when the shape of a sample is known (see _replayed).
        self.memory: ReplayMemory | None = None
        self.replay_size, self.replay_fraction = replay_size, replay_fraction
        self.replay_dtype: torch.dtype = getattr(torch, replay_dtype)
        self.prior_weights = {"balance": balance, "one_hot": one_hot, "bn_prior": bn_prior}
        self.bn_prior = losses.BatchNormPrior(self.teacher) if bn_prior else None
        # What "auto" options follow: whether the BatchNorm prior acts (a prior, on BatchNorm layers).
        prior_acts = self.bn_prior is not None and len(self.bn_prior) > 0
        # "auto" where the prior acts: resolved against the batch size at each step (AUTO_MINIBATCHES until then).
        self._auto_minibatches = student_minibatches == "auto" and prior_acts
        if student_minibatches == "auto":
            student_minibatches = AUTO_MINIBATCHES if prior_acts else 1
        self.student_minibatches: int = student_minibatches
        wants_affine = prior_acts if input_affine == "auto" else bool(input_affine)
        self.input_affine = ScaleShift() if wants_affine else None
        if not train_generator:  # baselines on noise or data: no generator to warm up
            generator_warmup = 0
        if generator_warmup and not (balance or one_hot or prior_acts):
            raise ConfigError(
                "system.generator_warmup",
                "trains the generator on its priors alone, and none acts here: set system.balance or "
                "system.one_hot above 0 (system.bn_prior acts only on a teacher with BatchNorm layers), "
                "or system.generator_warmup=0",
            )
        self.generator_warmup = generator_warmup
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
        """Turn one noise batch ``(B, nz)`` into a batch of inputs for teacher and student.

        Called once per step of either stage; under ``torch.no_grad()`` in the imitation stage,
        with gradients in the generation stage.
        """
        out: Tensor = self.generator(z)
        return out if self.input_affine is None else self.input_affine(out)

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

        Called in every student step (``teacher_out`` carries no gradient) and, through
        :meth:`generator_loss`, in the generator step. The default is the configured
        ``discrepancy`` (the paper's mean absolute error).
        """
        return self._discrepancy(student_out, teacher_out)

    def generator_loss(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        """The generator's loss, a scalar to *minimise*; it must grow as the discrepancy shrinks.

        Called once per iteration, in the generation stage; both outputs carry gradients back
        to the generator. The default applies the configured ``adversarial`` objective to
        :meth:`discrepancy` (``-D`` or ``-log(1 + D)``) and adds the configured :meth:`priors`.
        """
        return self._adversarial(self.discrepancy(student_out, teacher_out)) + self.priors(teacher_out)

    def priors(self, teacher_out: Tensor) -> Tensor:
        """The weighted priors of the generator's loss on the teacher's outputs (0 when none is set).

        Called by :meth:`generator_loss` right after the teacher's forward pass on the generated
        batch, whose BatchNorm statistics :class:`~dfad_lightning.losses.BatchNormPrior` recorded.
        """
        w = self.prior_weights
        total = torch.zeros((), device=teacher_out.device)
        if w["balance"]:
            total = total + w["balance"] * losses.class_balance(teacher_out)
        if w["one_hot"]:
            total = total + w["one_hot"] * losses.one_hot(teacher_out)
        if self.bn_prior is not None:
            total = total + w["bn_prior"] * self.bn_prior.loss().to(teacher_out.device)
        return total

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

    @property
    def updates_per_student_step(self) -> int:
        """Student updates on each student step's sample: ``student_reuse`` passes of ``student_minibatches``."""
        return self.student_reuse * self.student_minibatches

    @property
    def steps_per_iteration(self) -> int:
        """Optimizer steps per iteration (what Lightning's ``global_step`` counts): student's and generator's."""
        return self.student_steps * self.updates_per_student_step + int(self.train_generator)

    @property
    def warmup_iterations(self) -> int:
        """The iterations of the generator warm-up; a fraction of the run is resolved against the trainer's run."""
        if not self.generator_warmup or not isinstance(self.generator_warmup, float):
            return int(self.generator_warmup)
        run = self._run_iterations()
        if run is None:
            raise ConfigError(
                "system.generator_warmup",
                f"a fraction of the run ({self.generator_warmup}) needs a run of known length: set "
                "trainer.max_epochs, or give the warm-up as an integer number of iterations",
            )
        return round(self.generator_warmup * run)

    def _run_iterations(self) -> int | None:
        """The iterations of the whole run (``max_epochs`` x batches per epoch), or ``None`` if unknown."""
        epochs, per_epoch = self.trainer.max_epochs, self.trainer.num_training_batches
        if epochs is None or epochs < 0 or math.isinf(per_epoch):
            return None
        return epochs * int(per_epoch)

    def iterations(self, global_step: int) -> int:
        """The iterations done after ``global_step`` optimizer steps (a warm-up iteration is one step)."""
        warmup = min(global_step, self.warmup_iterations)
        return warmup + (global_step - warmup) // self.steps_per_iteration

    def training_step(self, z: Tensor, batch_idx: int) -> None:
        """One DFAD iteration on the noise ``z`` of shape ``(student_steps + 1, B, nz)``."""
        if z.shape[0] != self.student_steps + 1:
            raise ValueError(f"expected {self.student_steps + 1} noise batches per iteration, got {z.shape[0]}")
        opt_s, opt_g = cast(list[LightningOptimizer], self.optimizers())
        if self._auto_minibatches:
            self.student_minibatches = auto_minibatches(z.shape[1])
        self._check_minibatches(z.shape[1])  # at the first iteration, not a warm-up later
        if self._warming_up(batch_idx):
            self._warmup_step(z[-1], opt_g)
            return

        # Imitation stage: k student steps, each on a fresh sample of the fixed generator.
        # Neither G nor T is trained here, so their forward passes need no graph. With
        # student_reuse r > 1 the student takes r updates on each sample: making and labelling
        # a sample costs several times a student update, and the student is what learns slowest.
        # With student_minibatches m > 1 each pass takes the sample in m parts, one update each:
        # more updates from the same arithmetic. With replay on, each update adds past samples, drawn
        # anew, with the teacher's stored outputs.
        student_losses = []
        for z_i in z[:-1]:
            with torch.no_grad():
                x = self.augment(self.synthesize(z_i))
                teacher_out = self.teacher(x)
            for x_m, teacher_m in self._minibatches(x, teacher_out) * self.student_reuse:  # r passes over the parts
                x_s, teacher_s = self._replayed(x_m, teacher_m)
                loss_s = self.discrepancy(self.student(x_s), teacher_s)
                student_losses.append(loss_s.detach())
                if self._skip(loss_s):
                    continue
                opt_s.zero_grad(set_to_none=True)
                self.manual_backward(loss_s)
                opt_s.step()
            self._remember(x, teacher_out)

        # Generation stage: one generator step on a fresh sample, maximising the discrepancy (with
        # the configured priors, see generator_loss). Gradients flow through T and S into G;
        # toggling freezes the student's weights so that only G changes (and no student gradient
        # is computed). The student stays in train mode, as in the authors' code: its BatchNorm
        # uses, and records, this batch's statistics.
        # (Baselines whose inputs do not come from a trained generator skip this stage.)
        loss_g = torch.zeros((), device=z.device)
        if self.train_generator:
            with self.toggled_optimizer(opt_g):
                x = self.augment(self.synthesize(z[-1]))
                loss_g = self.generator_loss(self.student(x), self.teacher(x))
                if not self._skip(loss_g):
                    opt_g.zero_grad(set_to_none=True)
                    self.manual_backward(loss_g)
                    opt_g.step()

        if self.student_ema is not None:  # after both stages: the student's BatchNorm statistics moved in both
            self.student_ema.update_parameters(self.student)

        self._guard(torch.stack(student_losses), loss_g.detach())
        self.log_dict({"train/loss_student": loss_s.detach(), "train/loss_generator": loss_g.detach()}, prog_bar=True)

    def _warming_up(self, batch_idx: int) -> bool:
        """Whether this iteration is one of the first ``generator_warmup`` of the run."""
        return self.current_epoch * self.trainer.num_training_batches + batch_idx < self.warmup_iterations

    def _warmup_step(self, z: Tensor, opt_g: LightningOptimizer) -> None:
        """One generator step on its priors alone: the student waits for samples worth learning from."""
        with self.toggled_optimizer(opt_g):
            loss_g = self.priors(self.teacher(self.augment(self.synthesize(z))))
            if not self._skip(loss_g):
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(loss_g)
                opt_g.step()
        self._guard(loss_g.new_empty(0), loss_g.detach())
        self.log("train/loss_warmup", loss_g.detach(), prog_bar=True)

    def _check_minibatches(self, batch_size: int) -> None:
        """Refuse ``student_minibatches`` parts that would hold fewer than 2 samples each.

        Raises:
            ConfigError: A part would hold fewer than 2 samples (the student's BatchNorm needs 2).
        """
        parts = self.student_minibatches
        if parts > 1 and batch_size < 2 * parts:
            raise ConfigError(
                "system.student_minibatches",
                f"{parts} minibatches of a batch of {batch_size} leave fewer than 2 samples in each "
                "(BatchNorm needs 2): lower it, or raise data.batch_size",
            )

    def _minibatches(self, x: Tensor, teacher_out: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``x`` and the teacher's outputs on it in ``student_minibatches`` parts of (nearly) equal size."""
        parts = self.student_minibatches
        if parts == 1:
            return [(x, teacher_out)]
        return list(zip(x.tensor_split(parts), teacher_out.tensor_split(parts), strict=True))

    def _replayed(self, x: Tensor, teacher_out: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` and the teacher's outputs on it, each with ``replay_fraction * len(x)`` past ones appended, if any."""
        if self.memory is None or not self.memory.seen:
            return x, teacher_out
        past, past_out = self.memory.sample(max(1, round(self.replay_fraction * len(x))))
        return torch.cat([x, past.to(x.dtype)]), torch.cat([teacher_out, past_out.to(teacher_out.dtype)])

    def _remember(self, x: Tensor, teacher_out: Tensor) -> None:
        """Offer a sample and the teacher's outputs on it to the replay memory (made at the first call), if any."""
        if not self.replay_size:
            return
        if self.memory is None:
            self.memory = self._new_memory(tuple(x.shape[1:]), tuple(teacher_out.shape[1:]), x.device)
        self.memory.push(x, teacher_out)

    def _new_memory(self, shape: tuple[int, ...], output_shape: tuple[int, ...], device: torch.device) -> ReplayMemory:
        """The replay memory for samples of ``shape`` and outputs of ``output_shape``; first a warning if large."""
        size = ReplayMemory.nbytes(self.replay_size, shape, output_shape, self.replay_dtype)
        if size > REPLAY_WARN_BYTES:
            warnings.warn(
                f"the replay memory holds {self.replay_size} samples of {'x'.join(map(str, shape))} and the teacher's "
                f"outputs on them in {str(self.replay_dtype).removeprefix('torch.')}: {size / 2**30:.1f} GiB on the "
                f"{device.type} and in every checkpoint; lower system.replay_size, or set "
                "system.replay_dtype=bfloat16 to halve it",
                stacklevel=2,
            )
        return ReplayMemory(self.replay_size, shape, output_shape, self.replay_dtype).to(device)

    @staticmethod
    def _average(student: nn.Module, decay: float) -> AveragedModel:
        """A frozen copy of the student that follows its weights and buffers as a warmed-up EMA."""

        @torch.no_grad()
        def ema(
            averaged: tuple[Tensor, ...] | list[Tensor],
            current: tuple[Tensor, ...] | list[Tensor],
            updates: Tensor | int,
        ) -> None:
            n = float(updates)
            weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
            if averaged[0].is_floating_point():
                torch._foreach_lerp_(averaged, current, weight)
            else:  # BatchNorm's batch counters: follow the student
                torch._foreach_copy_(averaged, current)

        average = AveragedModel(student, multi_avg_fn=ema, use_buffers=True)
        return average.requires_grad_(False)

    @property
    def final_student(self) -> nn.Module:
        """The student a run delivers: the moving average of its weights if ``ema_decay`` is set, else itself.

        It is the one evaluated, probed by the data-free signal, written to ``student.pt`` and exported.
        """
        return self.student if self.student_ema is None else self.student_ema.module

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
        opt_s, opt_g = cast(list[LightningOptimizer], self.optimizers())
        self.log_dict(
            {"train/lr_student": opt_s.param_groups[0]["lr"], "train/lr_generator": opt_g.param_groups[0]["lr"]},
        )

    def configure_optimizers(self) -> Any:
        """The student's optimizer first, the generator's second, and their schedules."""
        opt_s = self.student_optimizer(self.student.parameters())
        groups = [{"params": list(self.generator.parameters())}]
        if self.input_affine is not None:
            groups.append({"params": list(self.input_affine.parameters())})
        opt_g = self.generator_optimizer(groups)
        if self.input_affine is not None:  # its own LR: see INPUT_AFFINE_LR_FACTOR
            opt_g.param_groups[1]["lr"] = INPUT_AFFINE_LR_FACTOR * opt_g.param_groups[0]["lr"]
        pairs = ((self.student_scheduler, opt_s), (self.generator_scheduler, opt_g))
        schedulers = [factory(opt) for factory, opt in pairs if factory is not None]
        return [opt_s, opt_g], schedulers

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    # ----------------------------------------------------------------------------------------
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
            for net in (self.teacher, self.student, self.generator, self.student_ema):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        # Lightning warns about modules in eval mode at the start of training: the frozen teacher
        # is one on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)

    def on_train_start(self) -> None:
        """Refuse a warm-up that would leave the student no iteration of the run.

        Raises:
            ConfigError: ``generator_warmup`` is at least the run's iterations.
        """
        if not self.generator_warmup:
            return
        warmup, run = self.warmup_iterations, self._run_iterations()  # a fraction of a run of unknown length fails here
        if run is not None and warmup >= run:
            raise ConfigError(
                "system.generator_warmup",
                f"{warmup} warm-up iterations leave the student none of the run's {run} "
                "(trainer.max_epochs x data.iterations_per_epoch): lower it (0 turns the warm-up off) or train longer",
            )

    def train(self, mode: bool = True) -> DFAD:
        """Set train mode everywhere but in the teacher, which stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which teacher was used; leave its weights out unless asked to keep them."""
        checkpoint["dfad_teacher"] = self.teacher_fingerprint
        if not self.checkpoint_teacher:
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another teacher; fill one saved without the teacher with this one.

        Raises:
            ConfigError: The checkpoint was trained against a teacher with other weights, or with
                ``input_affine`` on where it is now off (or the reverse).
        """
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
        saved_affine = "input_affine.scale" in state
        if saved_affine != (self.input_affine is not None):  # e.g. a robust run begun before input_affine=auto
            raise ConfigError(
                "system.input_affine",
                f"the checkpoint to resume was trained {'with' if saved_affine else 'without'} a learnt scale and "
                f"shift of the generated inputs; resume with system.input_affine={str(saved_affine).lower()}",
            )
        for key, value in self.teacher.state_dict(prefix="teacher.").items():
            state.setdefault(key, value)
        if self.replay_size and self.memory is None and "memory.samples" in state:
            shape, output_shape = (tuple(state[f"memory.{name}"].shape[1:]) for name in ("samples", "outputs"))
            self.memory = self._new_memory(shape, output_shape, self.device)
