"""The DFAD DataModule: noise to train on, real data only to evaluate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms.v2 import functional as TF

from dfad_lightning.data.noise import NoiseStream
from dfad_lightning.errors import ConfigError


class Normalized(Dataset[tuple[Tensor, Any]]):
    """A dataset of ``(image, target)`` pairs with images normalised per channel.

    The statistics are the teacher's (the ones it was trained with), so the real evaluation
    data lives in the same input space as the generator's samples.

    Args:
        dataset: Yields ``(input, target)`` with ``input`` a float tensor ``(C, ...)``, e.g. an image
            ``(C, H, W)`` in ``[0, 1]``.
        mean: Per-channel mean.
        std: Per-channel standard deviation.
    """

    def __init__(self, dataset: Dataset[tuple[Tensor, Any]], mean: Sequence[float], std: Sequence[float]) -> None:
        self.dataset = dataset
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, target = self.dataset[index]
        # Statistics per channel (dimension 0), whatever the input's rank: images, vectors, volumes.
        shape = (-1,) + (1,) * (image.dim() - 1)
        return (image - self.mean.view(shape)) / self.std.view(shape), target


class Conformed(Dataset[tuple[Tensor, Any]]):
    """A dataset of ``(image, target)`` pairs with images brought to a network's input shape.

    Grey images become RGB (the channel repeated) and RGB images grey (ITU-R 601 luma); every
    image is resized to the target height and width. This lets any image dataset serve as
    transfer data for any teacher (KD-REL, KD-UNR), e.g. MNIST for a CIFAR-10 teacher.

    Args:
        dataset: Yields ``(image, target)`` with ``image`` a float tensor ``(C, H, W)`` in ``[0, 1]``.
        image_shape: The teacher's input ``(channels, height, width)``.
        key: Config key named when the channels cannot be converted.
    """

    def __init__(self, dataset: Dataset[tuple[Tensor, Any]], image_shape: Sequence[int], key: str) -> None:
        self.dataset = dataset
        self.channels, self.size = int(image_shape[0]), [int(s) for s in image_shape[1:]]
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, target = self.dataset[index]
        have = image.shape[0]
        if have != self.channels:
            if (have, self.channels) == (3, 1):
                image = TF.rgb_to_grayscale(image)
            elif have == 1:
                image = image.expand(self.channels, -1, -1)
            else:
                raise ConfigError(self.key, f"its images have {have} channels; the teacher takes {self.channels}")
        if list(image.shape[-2:]) != self.size:
            image = TF.resize(image, self.size, antialias=True)
        return image, target


class DFADDataModule(LightningDataModule):
    """Supplies the latent batches of every iteration, and the real split used to evaluate.

    Training batches are tensors ``(student_steps + 1, batch_size, nz)`` of fresh standard
    normal noise (see :class:`NoiseStream`), drawn on the training device, different on every
    process. The evaluation split is never used to train.

    Args:
        nz: Latent size of the generator.
        batch_size: Samples per step and per process.
        student_steps: Student steps per iteration (``k``); each iteration draws ``k + 1`` batches.
        iterations_per_epoch: Iterations in one epoch (the paper's unit is 50).
        seed: Base seed of the noise.
        eval_dataset: Builds the real evaluation split (images in ``[0, 1]``), or ``None``.
        mean: Per-channel mean the teacher expects.
        std: Per-channel standard deviation the teacher expects.
        eval_batch_size: Batch size of evaluation.
        num_workers: Worker processes for the evaluation loader.
    """

    def __init__(
        self,
        nz: int,
        batch_size: int,
        student_steps: int = 5,
        iterations_per_epoch: int = 50,
        seed: int = 0,
        eval_dataset: Callable[[], Dataset[Any]] | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        eval_batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.nz = nz
        self.batch_size = batch_size
        self.student_steps = student_steps
        self.iterations_per_epoch = iterations_per_epoch
        self.seed = seed
        self.eval_dataset_factory = eval_dataset
        self.mean, self.std = list(mean), list(std)
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.eval_dataset: Dataset[Any] | None = None

    def setup(self, stage: str) -> None:
        """Build the evaluation split (once per process)."""
        if self.eval_dataset is None and self.eval_dataset_factory is not None:
            self.eval_dataset = Normalized(self.eval_dataset_factory(), self.mean, self.std)

    def train_dataloader(self) -> NoiseStream:
        """The noise stream, on this process's device and seeded for its rank."""
        trainer = self.trainer
        return NoiseStream(
            batch_size=self.batch_size,
            nz=self.nz,
            draws=self.student_steps + 1,
            length=self.iterations_per_epoch,
            seed=self.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            device=trainer.strategy.root_device if trainer is not None else "cpu",
        )

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        """The real evaluation split, or no batches when the dataset has none."""
        if self.eval_dataset is None:
            return []
        trainer = self.trainer
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            self.eval_dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=on_gpu,
            persistent_workers=self.num_workers > 0,
        )


class SupervisedDataModule(LightningDataModule):
    """Real labelled data for training a teacher: a shuffled training split and the evaluation split.

    Args:
        train_dataset: Builds the training split (images in ``[0, 1]``).
        eval_dataset: Builds the evaluation split (images in ``[0, 1]``).
        mean: Per-channel mean of the input normalisation.
        std: Per-channel standard deviation of the input normalisation.
        batch_size: Training batch size.
        eval_batch_size: Evaluation batch size.
        num_workers: Worker processes per loader.
        seed: Seed of the shuffling.
    """

    def __init__(
        self,
        train_dataset: Callable[[], Dataset[Any]],
        eval_dataset: Callable[[], Dataset[Any]] | None,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.factories = {"train": train_dataset, "eval": eval_dataset}
        self.mean, self.std = list(mean), list(std)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, Dataset[Any]] = {}

    def setup(self, stage: str) -> None:
        """Build both splits (once per process)."""
        for split, factory in self.factories.items():
            if split not in self.datasets and factory is not None:
                self.datasets[split] = Normalized(factory(), self.mean, self.std)

    def train_dataloader(self) -> DataLoader[Any]:
        """The training split, reshuffled every epoch.

        Raises:
            ConfigError: The split is smaller than one batch (an epoch would train nothing).
        """
        size = len(self.datasets["train"])  # type: ignore[arg-type]
        if size < self.batch_size:
            raise ConfigError(
                "teacher.training.batch_size",
                f"is {self.batch_size}, but the training split holds {size} samples: with incomplete batches "
                "dropped, an epoch would have no batch and the teacher would stay untrained; lower it",
            )
        return DataLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,  # BatchNorm cannot train on a last batch of one sample
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        """The evaluation split, or no batches."""
        if "eval" not in self.datasets:
            return []
        return DataLoader(
            self.datasets["eval"],
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class TransferDataModule(DFADDataModule):
    """Real images in place of noise, for the knowledge-distillation baselines (KD-ORI, KD-REL, KD-UNR).

    Each training batch is ``(student_steps + 1, batch_size, C, H, W)`` images of ``train_dataset``
    (labels dropped, brought to ``image_shape`` if given, normalised with the teacher's
    statistics), drawn at random with replacement, so an epoch has ``iterations_per_epoch``
    iterations whatever the dataset's size. The evaluation split is the dataset's, as for DFAD.

    Args:
        train_dataset: Builds the transfer data (images in ``[0, 1]``).
        image_shape: The teacher's input ``(channels, height, width)``: transfer images of another
            shape are converted (see :class:`Conformed`). ``None`` takes them as they are.
        **kwargs: As :class:`DFADDataModule`.
    """

    def __init__(
        self, train_dataset: Callable[[], Dataset[Any]], image_shape: Sequence[int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.train_dataset_factory = train_dataset
        self.image_shape = image_shape
        self.train_dataset: Dataset[Any] | None = None

    def setup(self, stage: str) -> None:
        """Build the evaluation split and the transfer data."""
        super().setup(stage)
        if self.train_dataset is None:
            transfer = self.train_dataset_factory()
            if self.image_shape is not None:
                transfer = Conformed(transfer, self.image_shape, key="transfer")
            self.train_dataset = Normalized(transfer, self.mean, self.std)

    def train_dataloader(self) -> DataLoader[Any]:  # type: ignore[override]
        """Batches of ``student_steps + 1`` stacked image batches, drawn with a seeded sampler."""
        assert self.train_dataset is not None
        draws = self.student_steps + 1
        sampler = RandomSampler(
            self.train_dataset,  # type: ignore[arg-type]
            replacement=True,
            num_samples=self.iterations_per_epoch * draws * self.batch_size,
            generator=torch.Generator().manual_seed(self.seed),
        )

        def stack(samples: list[tuple[Tensor, Any]]) -> Tensor:
            images = torch.stack([image for image, _ in samples])
            return images.view(draws, self.batch_size, *images.shape[1:])

        return DataLoader(
            self.train_dataset, batch_size=draws * self.batch_size, sampler=sampler, collate_fn=stack,
            num_workers=self.num_workers, drop_last=True,
        )  # fmt: skip
