"""How inputs are made: a generator's samples (the paper), a pool of optimised inputs, or fixed images."""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from dfad_lightning.errors import ConfigError
from dfad_lightning.networks.generators import ScaleShift
from dfad_lightning.networks.modes import eval_mode
from dfad_lightning.parts.learning import stage_outputs
from dfad_lightning.parts.memory import ReplayMemory
from dfad_lightning.rules import Rule, check_arguments

if TYPE_CHECKING:
    from lightning.pytorch.core.optimizer import LightningOptimizer

    from dfad_lightning.systems.dfad import DFAD, OptimizerFactory

# input_affine: its scale and shift learn at this multiple of the generator's LR, so that Adam
# (about one LR per step) can move them across their range within a warm-up.
INPUT_AFFINE_LR_FACTOR = 10.0


class Inputs(nn.Module):
    """Where the inputs of a run come from; subclasses say how they are made and, if at all, trained.

    ``sample`` makes a batch for the student (in the imitation stage, without gradients) and for
    pictures and probes; ``step`` is the generation stage, the input-maker's move against the
    student (or ``None`` where nothing is trained), with the optimizers ``optimizers`` built.

    Args:
        input_affine: Learn a scale and shift of every input where that can be learnt (a
            generator's samples); ``"auto"``: where the inputs are also anchored to the teacher's data.
        anchored: Whether the BatchNorm prior acts (set by the system).
    """

    uses_generator: ClassVar[bool] = False  # whether the run needs a generator network
    needs_warmup: ClassVar[bool] = False  # whether the first iteration must make inputs before the student learns
    RULES: tuple[Rule, ...] = (
        Rule("input_affine", bool, also=("auto",),
             doc="a learnable scale and shift of every generated input; auto: where the BatchNorm prior acts"),
    )  # fmt: skip

    def __init__(self, input_affine: bool | Literal["auto"] = False, anchored: bool = False) -> None:
        super().__init__()
        check_arguments(Inputs.RULES, {"input_affine": input_affine})
        wants = anchored if input_affine == "auto" else bool(input_affine)
        if wants and not self.uses_generator:
            raise ConfigError(
                "input_affine",
                f"{type(self).__name__} inputs have no learnt scale and shift: set it to false or auto",
                relative=True,
            )
        self.affine = ScaleShift() if wants else None

    @property
    def trains(self) -> bool:
        """Whether the inputs are trained (a generation stage, and a warm-up, run)."""
        return self.optimizer_steps > 0

    @property
    def optimizer_steps(self) -> int:
        """The optimizer steps of one generation stage (what Lightning's ``global_step`` counts of it)."""
        return 0

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """One batch of inputs from one batch of noise ``z`` ``(B, nz)`` (or, for real images, the batch itself)."""
        raise NotImplementedError

    def optimizers(self, system: DFAD, factory: OptimizerFactory) -> list[Optimizer]:
        """The optimizers of the input-maker, from the configured factory (none where nothing is trained)."""
        return []

    def step(
        self, system: DFAD, z: Tensor, optimizers: Sequence[LightningOptimizer], warmup: bool = False
    ) -> Tensor | None:
        """Run the generation stage on the noise ``z``; return the input-maker's loss, or ``None`` (nothing trained)."""
        return None

    def prepare_to_load(self, state: dict[str, Any], prefix: str, device: torch.device) -> None:
        """Make what a checkpoint's state dict holds under ``prefix`` before it is loaded (nothing here)."""


class Generated(Inputs):
    """The generator's samples ``G(z)``, optionally scaled and shifted by a learnt scale and shift.

    Generator-A's last BatchNorm gives its samples a standard deviation of 1, which is the
    teacher's input only where the dataset's mean and std standardise its data; a learnt scale
    and shift (:class:`~dfad_lightning.networks.ScaleShift`, trained with the generator at
    ``INPUT_AFFINE_LR_FACTOR`` times its LR) lets the BatchNorm prior set the contrast instead.

    Args:
        input_affine: Learn a scale and shift of every sample. ``"auto"``: where the inputs are
            anchored to the teacher's data (the BatchNorm prior acts), which alone tells the contrast.
        anchored: Whether the BatchNorm prior acts (set by the system).
    """

    uses_generator = True

    @property
    def optimizer_steps(self) -> int:
        """One generator step per generation stage."""
        return 1

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """``G(z)``, scaled and shifted where the scale and shift are learnt."""
        assert system.generator is not None
        out: Tensor = system.generator(z)
        return out if self.affine is None else self.affine(out)

    def optimizers(self, system: DFAD, factory: OptimizerFactory) -> list[Optimizer]:
        """One optimizer: the generator's weights, and the scale and shift at ``INPUT_AFFINE_LR_FACTOR`` x its LR."""
        assert system.generator is not None
        groups: list[dict[str, Any]] = [{"params": list(system.generator.parameters())}]
        if self.affine is not None:
            groups.append({"params": list(self.affine.parameters())})
        optimizer = factory(groups)
        if self.affine is not None:
            optimizer.param_groups[1]["lr"] = INPUT_AFFINE_LR_FACTOR * optimizer.param_groups[0]["lr"]
        return [optimizer]

    def step(
        self, system: DFAD, z: Tensor, optimizers: Sequence[LightningOptimizer], warmup: bool = False
    ) -> Tensor | None:
        """One generator step on a fresh sample: on its priors alone in the warm-up, else on its whole loss.

        Gradients flow through teacher and student into the generator; toggling freezes the
        student's weights, so only the generator changes (and no student gradient is computed).
        The student stays in train mode, as in the authors' code: its BatchNorm uses, and records,
        this batch's statistics.
        """
        (optimizer,) = optimizers
        with system.toggled_optimizer(optimizer):
            x = system.augment(system.synthesize(z))
            loss = system.synthesis_loss(x, warmup)
            system.update(loss, optimizer)
        return loss


class NoiseImages(Inputs):
    """Standard normal images in the teacher's normalised input space (the paper's RANDOM baseline).

    Args:
        image_shape: ``(channels, height, width)`` of the images.
        **kwargs: As :class:`Inputs` (no scale and shift can be learnt here).
    """

    def __init__(self, image_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (channels, height, width), got {self.image_shape}")

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """Fresh noise images, as many as the noise batch has rows."""
        return torch.randn(len(z), *self.image_shape, device=z.device)


class RealImages(Inputs):
    """Real images that the training batches already are (KD on the original or on other data).

    It takes :class:`Inputs`' arguments; no scale and shift can be learnt here.
    """

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """The batch itself: images from a :class:`~dfad_lightning.data.TransferDataModule`."""
        return z


class InputPool(Inputs):
    """Inputs optimised directly, kept in a pool the student draws from (DeepInversion, Yin et al. 2020).

    Each generation stage starts a fresh batch from noise and optimises it for ``steps`` steps
    on the input-maker's objective (its priors and, after the warm-up, its adversarial term
    against the current student, which stays in eval mode), each step on a randomly jittered and
    flipped copy; the batch of the lowest loss joins the pool (a uniform sample of every batch
    made, with the teacher's outputs on it). The student's samples are drawn from the pool, as
    chosen by their noise batch: the same noise draws the same samples, so pictures and probes
    change nothing. The first iteration must be a warm-up: it fills the pool.

    Args:
        batch_size: Inputs optimised per generation stage (the run's batch size).
        image_shape: ``(channels, height, width)`` of the inputs.
        mean: The teacher's input normalisation, per channel: inputs are kept within the images
            it can come from (0 to 1 before normalisation).
        std: As ``mean``.
        steps: Optimisation steps per batch.
        pool_size: Inputs the pool keeps.
        jitter: The largest random translation of a step's copy, as a fraction of each side.
        flip: Whether a step's copy is mirrored left-right half of the time.
        **kwargs: As :class:`Inputs` (no scale and shift can be learnt here).
    """

    needs_warmup = True
    RULES: tuple[Rule, ...] = (
        Rule("steps", int, low=1, doc="method=deepinversion, fast: optimisation steps per batch of inputs"),
        Rule("pool_size", int, low=1, doc="method=deepinversion, fast: inputs the pool keeps for the student"),
        Rule("jitter", float, low=0, high=0.5, doc="the largest random translation of a step's copy of the inputs"),
    )

    def __init__(
        self,
        batch_size: int,
        image_shape: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        steps: int = 100,
        pool_size: int = 4096,
        jitter: float = 0.125,
        flip: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_arguments(InputPool.RULES, {"steps": steps, "pool_size": pool_size, "jitter": jitter})
        self.image_shape = tuple(int(s) for s in image_shape)
        self.steps, self.pool_size, self.jitter, self.flip = steps, pool_size, jitter, flip
        self.batch = nn.Parameter(torch.zeros(batch_size, *self.image_shape))
        mean_t, std_t = (torch.tensor([float(v) for v in values]).view(-1, 1, 1) for values in (mean, std))
        self.register_buffer("low", (0.0 - mean_t) / std_t, persistent=False)
        self.register_buffer("high", (1.0 - mean_t) / std_t, persistent=False)
        self.pool: ReplayMemory | None = None  # made at the first batch, when the teacher's output shape is known

    @property
    def optimizer_steps(self) -> int:
        """``steps`` optimizer steps per generation stage."""
        return self.steps

    def sample(self, system: DFAD, z: Tensor) -> Tensor:
        """``len(z)`` inputs of the pool, chosen by the noise ``z`` (the same noise, the same inputs)."""
        if self.pool is None or not self.pool.seen:
            raise RuntimeError("the pool of inputs is empty: its first batch is made in the warm-up")
        seed = int.from_bytes(hashlib.sha256(z.detach().cpu().numpy().tobytes()).digest()[:4], "big")
        chosen = torch.Generator().manual_seed(seed)
        index = torch.randint(len(self.pool), (len(z),), generator=chosen).to(self.pool.samples.device)
        return self.pool.samples[index].to(z.dtype)

    def optimizers(self, system: DFAD, factory: OptimizerFactory) -> list[Optimizer]:
        """One optimizer of the batch of inputs; its state starts afresh with every batch."""
        return [factory([self.batch])]

    def step(
        self, system: DFAD, z: Tensor, optimizers: Sequence[LightningOptimizer], warmup: bool = False
    ) -> Tensor | None:
        """Optimise a fresh batch of inputs against the current student; keep the best of it in the pool."""
        (optimizer,) = optimizers
        stream = self._stream(system)
        with torch.no_grad():
            self.batch.copy_(torch.randn(self.batch.shape, generator=stream).to(self.batch.device))
        optimizer.optimizer.state.clear()  # a new batch: no momentum from the last one
        loss, kept = self.optimise(system, optimizer, warmup, stream)
        self.remember(system, kept)
        return loss

    def optimise(
        self, system: DFAD, optimizer: LightningOptimizer, warmup: bool, stream: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``steps`` steps of ``optimizer`` on the input-maker's loss; the last loss, and the inputs of the lowest."""
        best, kept = math.inf, None
        with eval_mode(system.student), system.toggled_optimizer(optimizer):
            for _ in range(self.steps):
                x = self.make()
                loss = system.synthesis_loss(self.vary(x, stream), warmup, inputs=x)
                if kept is None or float(loss.detach()) < best:  # the inputs that gave it, before the step changes them
                    best, kept = float(loss.detach()), x.detach().clone()
                system.update(loss, optimizer)
                self.after_step()
        assert kept is not None
        return loss.detach(), kept

    def make(self) -> Tensor:
        """The inputs being optimised (here, the batch itself)."""
        return self.batch

    high: Tensor
    low: Tensor

    def after_step(self) -> None:
        """Keep the batch within the images the teacher's normalisation can come from."""
        with torch.no_grad():
            self.batch.copy_(torch.maximum(torch.minimum(self.batch, self.high), self.low))

    def vary(self, x: Tensor, stream: torch.Generator) -> Tensor:
        """A randomly translated (wrapping around) and, half of the time, mirrored copy of ``x``."""
        dy, dx = (round(side * self.jitter) for side in x.shape[-2:])
        shifts = [int(torch.randint(-d, d + 1, (), generator=stream)) for d in (dy, dx)]
        x = torch.roll(x, shifts=shifts, dims=(-2, -1))
        if self.flip and bool(torch.rand((), generator=stream) < 0.5):
            x = torch.flip(x, dims=(-1,))
        return x

    def remember(self, system: DFAD, kept: Tensor) -> None:
        """Add a batch and the teacher's outputs on it to the pool (made at the first batch)."""
        with torch.no_grad():
            teacher_out = system.teacher(kept)
        if self.pool is None:
            shapes = tuple(kept.shape[1:]), tuple(teacher_out.shape[1:])
            self.pool = ReplayMemory(self.pool_size, *shapes).to(kept.device)
        self.pool.push(kept, teacher_out)

    @staticmethod
    def _stream(system: DFAD) -> torch.Generator:
        """The random stream of one generation stage: one per (process, optimizer step), so a resumed run repeats."""
        return torch.Generator().manual_seed(hash((system.global_rank, system.global_step)) % 2**32)

    def prepare_to_load(self, state: dict[str, Any], prefix: str, device: torch.device) -> None:
        """Make the pool a checkpoint holds before it is loaded into it."""
        if self.pool is None and f"{prefix}pool.samples" in state:
            shape, output_shape = (tuple(state[f"{prefix}pool.{name}"].shape[1:]) for name in ("samples", "outputs"))
            self.pool = ReplayMemory(self.pool_size, shape, output_shape).to(device)


class MetaGenerator(InputPool):
    """A meta-learned generator: a few steps from it make each batch (Fast-Datafree, Fang et al. 2022).

    Each generation stage copies the generator and optimises the copy, with the batch's latent
    codes, for ``steps`` steps on the input-maker's objective, as :class:`InputPool` optimises
    inputs; the generator itself then takes one step on the sum of the copy's gradients
    (first-order MAML), so that it becomes a starting point from which a few steps suffice.
    The batch of the lowest loss joins the pool the student draws from.

    Args:
        nz: Latent size of the generator.
        latent_lr: Learning rate of the latent codes (Fast: 0.01 to 0.015).
        meta_lr: Learning rate of the generator's own step (Fast: the inner rate times the steps).
        **kwargs: As :class:`InputPool`.
    """

    uses_generator = True
    RULES: tuple[Rule, ...] = (
        Rule("latent_lr", float, low=0, doc="method=fast: learning rate of the latent codes"),
        Rule("meta_lr", float, low=0, doc="method=fast: learning rate of the generator's meta step"),
    )

    def __init__(self, nz: int, latent_lr: float = 0.01, meta_lr: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_arguments(MetaGenerator.RULES, {"latent_lr": latent_lr, "meta_lr": meta_lr})
        self.latent_lr, self.meta_lr = latent_lr, meta_lr
        self.latent = nn.Parameter(torch.zeros(self.batch.shape[0], nz))
        del self.batch  # the inputs are the copy's samples of the latent codes
        self._copy: list[nn.Module] = []  # the generator's copy, outside the state dict (remade every stage)
        self._total: list[Tensor] = []  # the sum of the copy's gradients over one stage

    @property
    def optimizer_steps(self) -> int:
        """``steps`` steps of the copy, and the generator's own."""
        return self.steps + 1

    def optimizers(self, system: DFAD, factory: OptimizerFactory) -> list[Optimizer]:
        """The copy's and the latent codes' optimizer (state afresh every batch), and the generator's."""
        assert system.generator is not None
        copy_ = copy.deepcopy(system.generator)
        self._copy = [copy_]
        groups: list[dict[str, Any]] = [{"params": list(copy_.parameters())}]
        groups.append({"params": [self.latent], "lr": self.latent_lr})
        inner = factory(groups)
        meta = factory([{"params": list(system.generator.parameters()), "lr": self.meta_lr}])
        return [inner, meta]

    def step(
        self, system: DFAD, z: Tensor, optimizers: Sequence[LightningOptimizer], warmup: bool = False
    ) -> Tensor | None:
        """Optimise a copy of the generator and the batch's codes; step the generator on the copy's gradients."""
        inner, meta = optimizers
        assert system.generator is not None
        (copy_,) = self._copy
        stream = self._stream(system)
        with torch.no_grad():
            copy_.load_state_dict(system.generator.state_dict())
            self.latent.copy_(torch.randn(self.latent.shape, generator=stream).to(self.latent.device))
        inner.optimizer.state.clear()
        self._total = [torch.zeros_like(p) for p in copy_.parameters()]
        loss, kept = self.optimise(system, inner, warmup, stream)
        with system.toggled_optimizer(meta):  # first-order MAML: the sum of the copy's gradients
            meta.zero_grad(set_to_none=True)
            for p, g in zip(system.generator.parameters(), self._total, strict=True):
                p.grad = g
            meta.step()
        self.remember(system, kept)
        return loss

    def make(self) -> Tensor:
        """The copy's samples of the latent codes."""
        out: Tensor = self._copy[0](self.latent)
        return out

    def after_step(self) -> None:
        """Add the copy's gradients of this step to the sum the generator steps on."""
        for t, p in zip(self._total, self._copy[0].parameters(), strict=True):
            if p.grad is not None:
                t.add_(p.grad)


class ContrastivePool(InputPool):
    """Contrastive model inversion (CMI, Fang et al. 2021): each batch made distinct from the ones before.

    Each generation stage re-initialises the generator and optimises it, with the batch's latent
    codes, for ``steps`` steps on the input-maker's objective plus a contrastive term: the
    teacher's features (the channel means of each of its stages) of two views of each sample, a
    global one (a crop of the padded image, mirrored half of the time) and a local one (a random
    crop of a quarter to the whole of it, resized), are projected by a small head; each local
    view must be closer to its own global view than to the others of the batch and to the
    features of earlier batches, kept in a memory bank. The batch of the lowest loss joins the
    pool the student learns from, and its features the bank.

    Args:
        nz: Latent size of the generator.
        contrast: Weight of the contrastive term (CMI: 0.8).
        temperature: Its temperature (CMI: 0.2).
        bank_size: Features of earlier samples kept in the bank.
        negatives: Earlier samples' features each step compares with.
        head_dim: Width of the head's projection.
        **kwargs: As :class:`InputPool`.
    """

    uses_generator = True
    RULES: tuple[Rule, ...] = (
        Rule("contrast", float, low=0, doc="method=cmi: weight of the contrastive term"),
        Rule("temperature", float, low=1e-12, doc="method=cmi: temperature of the contrastive term"),
        Rule("bank_size", int, low=1, doc="method=cmi: earlier samples' features kept in the memory bank"),
        Rule("negatives", int, low=0, doc="method=cmi: earlier samples' features each step compares with"),
    )

    def __init__(
        self,
        nz: int,
        contrast: float = 0.8,
        temperature: float = 0.2,
        bank_size: int = 4096,
        negatives: int = 1024,
        head_dim: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        values = {"contrast": contrast, "temperature": temperature, "bank_size": bank_size, "negatives": negatives}
        check_arguments(ContrastivePool.RULES, values)
        self.contrast, self.temperature, self.negatives, self.head_dim = contrast, temperature, negatives, head_dim
        self.bank_size = bank_size
        self.latent = nn.Parameter(torch.zeros(self.batch.shape[0], nz))
        del self.batch  # the inputs are the generator's samples of the latent codes
        self.head: nn.Module | None = None  # made with its optimizer, when the teacher's feature width is known
        self.bank: ReplayMemory | None = None  # features of earlier batches (local and global views)

    @property
    def optimizer_steps(self) -> int:
        """``steps`` steps of the generator and codes, and as many of the head."""
        return 2 * self.steps

    def optimizers(self, system: DFAD, factory: OptimizerFactory) -> list[Optimizer]:
        """The generator's and the codes' optimizer (state afresh every batch), and the head's."""
        assert system.generator is not None
        if self.head is None:
            width = sum(f.shape[1] for f in _stage_means(system.teacher, self._probe(system)))
            self._make_head(width, self.latent.device)
        assert self.head is not None
        groups: list[dict[str, Any]] = [{"params": list(system.generator.parameters())}, {"params": [self.latent]}]
        return [factory(groups), factory(list(self.head.parameters()))]

    def _probe(self, system: DFAD) -> Tensor:
        return torch.zeros(2, *self.image_shape, device=self.latent.device)

    def _make_head(self, width: int, device: torch.device) -> None:
        """The projection head for features of ``width`` (the channels of the teacher's stages)."""
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, self.head_dim)).to(device)

    def step(
        self, system: DFAD, z: Tensor, optimizers: Sequence[LightningOptimizer], warmup: bool = False
    ) -> Tensor | None:
        """Re-initialise the generator and codes, optimise them with the head; keep the best batch and its features."""
        inputs_opt, head_opt = optimizers
        assert system.generator is not None and self.head is not None
        stream = self._stream(system)
        with torch.no_grad():
            _reinitialise(system.generator, stream)
            self.latent.copy_(torch.randn(self.latent.shape, generator=stream).to(self.latent.device))
        inputs_opt.optimizer.state.clear()
        best, kept, features = math.inf, None, None
        with eval_mode(system.student), system.toggled_optimizer(inputs_opt):
            for _ in range(self.steps):
                x = system.generator(self.latent)
                global_view, local_view = _global_view(x, stream), _local_view(x, stream)
                loss = system.synthesis_loss(global_view, warmup, inputs=x)
                global_f = torch.cat(_stage_means(system.teacher, global_view), 1)
                local_f = torch.cat(_stage_means(system.teacher, local_view), 1)
                loss = loss + self.contrast * self._contrastive(local_f, global_f)
                if kept is None or float(loss.detach()) < best:
                    best, kept = float(loss.detach()), x.detach().clone()
                    features = torch.cat([local_f, global_f], 1).detach()
                if not system._skip(loss):
                    inputs_opt.zero_grad(set_to_none=True)
                    head_opt.zero_grad(set_to_none=True)
                    system.manual_backward(loss)
                    inputs_opt.step()
                    head_opt.step()
        assert kept is not None and features is not None
        self.remember(system, kept)
        if self.bank is None:
            self.bank = ReplayMemory(self.bank_size, (features.shape[1],), (0,)).to(features.device)
        self.bank.push(features, features.new_zeros(len(features), 0))
        return loss.detach()

    def _contrastive(self, local_f: Tensor, global_f: Tensor) -> Tensor:
        """Each local view against its own global view, the batch's others and the bank's (cross-entropy)."""
        assert self.head is not None
        if self.bank is not None and self.bank.seen and self.negatives:
            past, _ = self.bank.sample(min(self.negatives, len(self.bank)))
            past_local, past_global = past.chunk(2, dim=1)
            local_f, global_f = torch.cat([local_f, past_local]), torch.cat([global_f, past_global])
        projected = nn.functional.normalize(self.head(torch.cat([local_f, global_f])), dim=1)
        local_p, global_p = projected.chunk(2)
        logits = local_p @ global_p.detach().T / self.temperature
        losses = nn.functional.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
        current = self.latent.shape[0]
        if len(losses) == current:
            return losses.mean()
        return losses[:current].mean() + losses[current:].mean()  # the batch's own term keeps its weight

    def prepare_to_load(self, state: dict[str, Any], prefix: str, device: torch.device) -> None:
        """Make the pool, the head and the bank a checkpoint holds before it is loaded into them."""
        super().prepare_to_load(state, prefix, device)
        if self.head is None and f"{prefix}head.0.weight" in state:
            self._make_head(state[f"{prefix}head.0.weight"].shape[1], device)
        if self.bank is None and f"{prefix}bank.samples" in state:
            self.bank = ReplayMemory(self.bank_size, tuple(state[f"{prefix}bank.samples"].shape[1:]), (0,)).to(device)


def _stage_means(net: nn.Module, x: Tensor) -> list[Tensor]:
    """The channel means of each stage's output of ``net`` on ``x`` (CMI's features of a sample)."""
    with stage_outputs(net) as stages:
        net(x)
    return [s.float().mean((2, 3)) for s in stages]


def _reinitialise(net: nn.Module, stream: torch.Generator) -> None:
    """DCGAN's initialisation (as CMI's at every batch): weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=stream)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02, generator=stream)
            nn.init.zeros_(m.bias)


def _global_view(x: Tensor, stream: torch.Generator) -> Tensor:
    """A crop of each image padded by 4 pixels, at its own size, mirrored half of the time (one draw per batch)."""
    height, width = x.shape[-2:]
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    top, left = (int(torch.randint(0, 9, (), generator=stream)) for _ in range(2))
    view = padded[..., top : top + height, left : left + width]
    return torch.flip(view, dims=(-1,)) if bool(torch.rand((), generator=stream) < 0.5) else view


def _local_view(x: Tensor, stream: torch.Generator) -> Tensor:
    """A random crop of a quarter to the whole of each image, resized to its size, mirrored half of the time."""
    height, width = x.shape[-2:]
    scale = float(torch.empty(()).uniform_(0.25, 1.0, generator=stream))
    h, w = max(1, round(height * scale**0.5)), max(1, round(width * scale**0.5))
    top = int(torch.randint(0, height - h + 1, (), generator=stream))
    left = int(torch.randint(0, width - w + 1, (), generator=stream))
    view = nn.functional.interpolate(x[..., top : top + h, left : left + w], size=(height, width), mode="bilinear")
    return torch.flip(view, dims=(-1,)) if bool(torch.rand((), generator=stream) < 0.5) else view
