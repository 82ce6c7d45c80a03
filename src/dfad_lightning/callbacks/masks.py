"""Pictures of segmentation: generated samples and real images with the masks each network predicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from lightning import LightningModule, Trainer
from torch import Tensor
from torchvision.utils import make_grid, save_image

from dfad_lightning.callbacks.samples import SampleGrid, denormalize, log_picture
from dfad_lightning.data.segmentation import colorize
from dfad_lightning.systems import DFAD


class MaskGrid(SampleGrid):
    """After every evaluation, save two pictures of what teacher and student see (the paper's Fig. 10).

    ``samples_epoch_NNN.png``: generated samples from fixed noise (first row), the teacher's
    predicted masks (second) and the student's (third). ``real_epoch_NNN.png``: the first real
    evaluation images, their ground truth, the teacher's and the student's predictions. Masks are
    drawn in the dataset's palette, void in black. Both are also sent to image-taking loggers.
    The fixed noise and the kept real batch are :class:`SampleGrid`'s.

    Args:
        dirpath: Folder of the pictures.
        mean: Per-channel mean of the teacher's input normalisation.
        std: Per-channel standard deviation of the teacher's input normalisation.
        nz: Latent size of the generator.
        palette: RGB colour of every class.
        num_images: Generated samples in the picture.
        num_real: Real images in the picture.
        seed: Seed of the fixed noise.
    """

    def __init__(
        self,
        dirpath: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        nz: int,
        palette: Sequence[Sequence[int]],
        num_images: int = 8,
        num_real: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(dirpath, mean, std, nz, num_images, seed)
        self.palette = [tuple(int(c) for c in rgb) for rgb in palette]
        self.num_real = num_real

    def rows(self, pl_module: LightningModule, x: Tensor, *masks: Tensor) -> Tensor:
        """One picture: the images, then each mask set, then the teacher's and the student's predictions."""
        system = cast(DFAD, pl_module)
        with torch.no_grad():
            x_dev = x.to(system.device)
            predicted = [net(x_dev).argmax(1).cpu() for net in (system.teacher, system.final_student)]
        images = denormalize(x.float().cpu(), self.mean, self.std)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        tiles = torch.cat([images, *(colorize(m, self.palette) for m in (*masks, *predicted))])
        grid: Tensor = make_grid(tiles, nrow=len(x), padding=2, pad_value=1.0)
        return grid

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save this epoch's pictures (main process only; the module is in eval mode here)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        epoch = trainer.current_epoch
        with torch.no_grad():
            fake = cast(DFAD, pl_module).synthesize(self.noise.to(pl_module.device)).cpu()
        pictures = {"samples": self.rows(pl_module, fake)}
        if self.real is not None:
            pictures["real"] = self.rows(pl_module, self.real[0], self.real[1])
        for name, picture in pictures.items():
            path = self.dirpath / f"{name}_epoch_{epoch:03d}.png"
            save_image(picture, path)
            log_picture(trainer, f"masks/{name}", picture)
            self.last_path = path if name == "samples" else self.last_path
