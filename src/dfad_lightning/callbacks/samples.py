"""Pictures of what the generator makes, beside the real data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor
from torchvision.utils import make_grid, save_image


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Map normalised images back to ``[0, 1]`` for display.

    >>> denormalize(torch.zeros(1, 1, 2, 2), [0.5], [0.25]).unique()
    tensor([0.5000])
    """
    m = torch.tensor(list(mean), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


def side_by_side(left: Tensor, right: Tensor, nrow: int = 8) -> Tensor:
    """One picture: a grid of ``left`` images, a white gap, a grid of ``right`` images."""
    grids = [make_grid(batch, nrow=nrow, padding=2, pad_value=1.0) for batch in (left, right)]
    height = max(g.shape[1] for g in grids)
    grids = [torch.nn.functional.pad(g, (0, 0, 0, height - g.shape[1]), value=1.0) for g in grids]
    gap = torch.ones(grids[0].shape[0], height, 8)
    return torch.cat([grids[0], gap, grids[1]], dim=2)


def log_picture(trainer: Trainer, key: str, picture: Tensor) -> None:
    """Send a picture ``(3, H, W)`` in ``[0, 1]`` to every logger of the run that takes images.

    TensorBoard (``add_image``) and loggers with a ``log_image`` method (Weights & Biases,
    Neptune) receive it; the CSV logger takes no images (the PNG files are the record).
    """
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[picture], step=trainer.global_step)
        elif experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image(key, picture, global_step=trainer.global_step)


class SampleGrid(Callback):
    """After every evaluation, save generated samples (left) beside real evaluation images (right).

    The samples come from the same fixed noise every time, so the pictures of successive epochs
    show how the generator evolves. The generator runs in eval mode, as the whole module does
    during evaluation, so drawing pictures never changes training.

    Args:
        dirpath: Folder of the pictures, ``epoch_XXX.png``.
        mean: Per-channel mean of the teacher's input normalisation.
        std: Per-channel standard deviation of the teacher's input normalisation.
        nz: Latent size of the generator.
        num_images: Images in each half of the picture.
        seed: Seed of the fixed noise.
    """

    def __init__(
        self,
        dirpath: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        nz: int,
        num_images: int = 32,
        seed: int = 0,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.mean, self.std = list(mean), list(std)
        self.noise = torch.randn(num_images, nz, generator=torch.Generator().manual_seed(seed))
        self.num_real = num_images
        self.real: tuple[Tensor, Tensor] | None = None  # the first real images and their targets
        self.last_path: Path | None = None

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the first real images (and their targets) of the evaluation split."""
        if batch_idx == 0 and self.real is None:
            x, y = batch
            self.real = (x[: self.num_real].detach().float().cpu(), y[: self.num_real].detach().cpu())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save this epoch's picture (on the main process only)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        with torch.no_grad():
            fake = pl_module.synthesize(self.noise.to(pl_module.device)).float().cpu()  # type: ignore[operator]
        fake = denormalize(fake, self.mean, self.std)
        if self.real is None:  # a run without real data shows its samples alone
            picture = make_grid(fake, nrow=8, padding=2, pad_value=1.0)
        else:
            picture = side_by_side(fake, denormalize(self.real[0], self.mean, self.std))
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self.last_path = self.dirpath / f"epoch_{trainer.current_epoch:03d}.png"
        save_image(picture, self.last_path)
        log_picture(trainer, "samples", picture)
