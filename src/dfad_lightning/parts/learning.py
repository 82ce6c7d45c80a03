"""How the student learns in the imitation stage: its steps, the updates on each sample, and replay."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from dfad_lightning import losses
from dfad_lightning.errors import ConfigError
from dfad_lightning.parts.memory import ReplayMemory
from dfad_lightning.rules import POSITIVE, Rule, check_arguments

if TYPE_CHECKING:
    from lightning.pytorch.core.optimizer import LightningOptimizer

    from dfad_lightning.systems.dfad import DFAD

REPLAY_DTYPES = ("float32", "bfloat16", "float16")
# minibatches="auto": up to this many parts where the BatchNorm prior anchors the samples, none
# smaller than AUTO_MIN_PART samples (docs/recipe.md says why).
AUTO_MINIBATCHES = 4
AUTO_MIN_PART = 32
REPLAY_WARN_BYTES = 2**30  # a replay memory above this size warns (see StudentSteps._new_memory)


def auto_minibatches(batch_size: int) -> int:
    """The parts ``minibatches="auto"`` takes a batch in where the BatchNorm prior acts.

    Examples:
        >>> [auto_minibatches(b) for b in (8, 63, 64, 128, 256)]
        [1, 1, 2, 4, 4]
    """
    return min(AUTO_MINIBATCHES, max(1, batch_size // AUTO_MIN_PART))


@contextmanager
def stage_outputs(net: nn.Module) -> Iterator[list[Tensor]]:
    """Record the output of each stage of ``net`` in the block: per spatial size, the last 4-D output of a module.

    A container's output comes after its children's, so each size's last output is the stage's
    own (a ResNet's ``layer2``, a LeNet's pooling); 1x1 maps are left out. The list is filled,
    finest stage first, when the block ends.
    """
    found: dict[tuple[int, int], Tensor] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Any) -> None:
        if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2:] != (1, 1):
            size = (int(output.shape[-2]), int(output.shape[-1]))
            found.pop(size, None)  # re-inserted: the order is that of the last output
            found[size] = output

    handles = [m.register_forward_hook(record) for m in net.modules()]
    stages: list[Tensor] = []
    try:
        yield stages
    finally:
        for handle in handles:
            handle.remove()
        stages.extend(found.values())


class StudentSteps(nn.Module):
    """The imitation stage's student updates: ``steps`` steps per iteration, each on a fresh sample.

    Each sample (made by the input-maker and labelled by the teacher once) gets ``reuse`` passes,
    each pass ``minibatches`` updates on a part of it; with a replay memory, every update adds
    ``replay_fraction`` of its size in past samples, with the teacher's stored outputs on them.
    With its defaults this is the paper's imitation stage: one update on each fresh sample.

    Args:
        steps: Student steps per iteration (``k``, 5 in the paper).
        reuse: Passes over each step's sample.
        minibatches: Updates per pass, each on its share of the sample (at least 2 samples a part,
            for BatchNorm). ``"auto"``: :func:`auto_minibatches` of the batch size where the
            samples are anchored to the teacher's data (the BatchNorm prior acts), else 1.
        replay_size: Samples kept in a :class:`~dfad_lightning.parts.memory.ReplayMemory` of every
            sample, with the teacher's outputs; ``0``: no replay.
        replay_fraction: Each update adds this fraction of its size from the memory, drawn anew.
        replay_dtype: How the memory stores samples and outputs (``"bfloat16"`` halves it).
        attention: Weight of :func:`~dfad_lightning.losses.attention_transfer` in the student's
            loss: the student also matches the teacher's spatial attention at each stage (ZSKT;
            a teacher pass more per update). ``0``: the discrepancy alone.
        anchored: Whether a prior anchors the samples to the teacher's data (set by the system).
    """

    RULES = (
        Rule("steps", int, low=1, doc="k: student steps per iteration, each on a fresh sample"),
        Rule("reuse", int, low=1, doc="passes over each step's sample (made and labelled once)"),
        Rule("minibatches", int, low=1, also=("auto",),
             doc="updates per pass, each on a part of the sample; auto: 4 where the BatchNorm prior acts, "
                 "none below 32 samples, else 1"),
        Rule("replay_size", int, low=0, why="0: no replay",
             doc="samples in a replay memory of every sample, with the teacher's outputs"),
        Rule("replay_fraction", float, low=POSITIVE, doc="each update adds this fraction of its batch from the memory"),
        Rule("replay_dtype", str, choices=REPLAY_DTYPES, doc="how the memory stores samples; bfloat16 halves it"),
        Rule("attention", float, low=0, doc="weight of the attention-transfer term in the student's loss (ZSKT)"),
    )  # fmt: skip

    def __init__(
        self,
        steps: int = 5,
        reuse: int = 1,
        minibatches: int | Literal["auto"] = 1,
        replay_size: int = 0,
        replay_fraction: float = 0.5,
        replay_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attention: float = 0.0,
        anchored: bool = False,
    ) -> None:
        super().__init__()
        check_arguments(self.RULES, locals())
        self.steps, self.reuse = steps, reuse
        # "auto" where the samples are anchored: resolved against the batch size at the first step.
        self._auto = minibatches == "auto" and anchored
        self.minibatches: int = (AUTO_MINIBATCHES if anchored else 1) if minibatches == "auto" else int(minibatches)
        self.replay_size, self.replay_fraction = replay_size, replay_fraction
        self.replay_dtype: torch.dtype = getattr(torch, replay_dtype)
        self.attention = attention
        # Made at the first sample, when its shape is known (see remember).
        self.memory: ReplayMemory | None = None

    @property
    def updates_per_step(self) -> int:
        """Student updates on each step's sample: ``reuse`` passes of ``minibatches``."""
        return self.reuse * self.minibatches

    def resolve(self, batch_size: int) -> None:
        """Fit the parts to the batch size, once (``"auto"``), and refuse parts of fewer than 2 samples.

        Raises:
            ConfigError: A part would hold fewer than 2 samples (the student's BatchNorm needs 2).
        """
        if self._auto:
            self.minibatches, self._auto = auto_minibatches(batch_size), False
        if self.minibatches > 1 and batch_size < 2 * self.minibatches:
            raise ConfigError(
                "system.learning.minibatches",
                f"{self.minibatches} minibatches of a batch of {batch_size} leave fewer than 2 samples in each "
                "(BatchNorm needs 2): lower it, or raise data.batch_size",
            )

    def learn(self, system: DFAD, x: Tensor, teacher_out: Tensor, optimizer: LightningOptimizer) -> list[Tensor]:
        """The student's updates on one step's sample ``x`` and the teacher's outputs on it; their losses."""
        found = []
        for x_m, teacher_m in self._parts(x, teacher_out) * self.reuse:  # reuse passes over the parts
            x_s, teacher_s = self._replayed(x_m, teacher_m)
            loss = self.loss(system, x_s, teacher_s)
            found.append(loss.detach())
            system.update(loss, optimizer)
        self._remember(x, teacher_out)
        return found

    def loss(self, system: DFAD, x: Tensor, teacher_out: Tensor) -> Tensor:
        """The student's loss on the inputs ``x``: the discrepancy, plus the attention term where it has a weight."""
        if not self.attention:
            return system.discrepancy(system.student(x), teacher_out)
        with stage_outputs(system.student) as student_stages:
            student_out = system.student(x)
        with torch.no_grad(), stage_outputs(system.teacher) as teacher_stages:
            system.teacher(x)
        transfer = losses.attention_transfer(student_stages, teacher_stages)
        return system.discrepancy(student_out, teacher_out) + self.attention * transfer

    def _parts(self, x: Tensor, teacher_out: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``x`` and the teacher's outputs on it in ``minibatches`` parts of (nearly) equal size."""
        if self.minibatches == 1:
            return [(x, teacher_out)]
        return list(zip(x.tensor_split(self.minibatches), teacher_out.tensor_split(self.minibatches), strict=True))

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
                f"{device.type} and in every checkpoint; lower system.learning.replay_size, or set "
                "system.learning.replay_dtype=bfloat16 to halve it",
                stacklevel=2,
            )
        return ReplayMemory(self.replay_size, shape, output_shape, self.replay_dtype).to(device)

    def prepare_to_load(self, state: dict[str, Any], prefix: str, device: torch.device) -> None:
        """Make the memory a checkpoint's state dict holds under ``prefix`` before it is loaded into it."""
        if self.replay_size and self.memory is None and f"{prefix}memory.samples" in state:
            shape, output_shape = (tuple(state[f"{prefix}memory.{name}"].shape[1:]) for name in ("samples", "outputs"))
            self.memory = self._new_memory(shape, output_shape, device)
