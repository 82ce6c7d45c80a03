"""Real image datasets in their usual on-disk layouts, as ``(image in [0, 1], label)`` pairs.

Every dataset here reads files that are already on disk: a missing or incomplete root fails at
once with a :class:`~dfad_lightning.errors.ConfigError` that names the config key and the files
expected. Downloading is opt-in (``download: true``, for users with internet).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from dfad_lightning.errors import ConfigError
from dfad_lightning.networks.generators import as_size

Split = Literal["train", "test"]
Transform = Callable[[Tensor], Tensor]


def to_image_tensor(size: int | Sequence[int] | None = None) -> v2.Compose:
    """PIL image or uint8 tensor -> float ``(C, H, W)`` in ``[0, 1]``, resized to ``size`` if given."""
    steps: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if size is not None:
        steps.append(v2.Resize(as_size(size), antialias=True))
    return v2.Compose(steps)


def cifar_augment(size: int | Sequence[int] = 32) -> v2.Compose:
    """The usual CIFAR training augmentation: random crop with 4 pixels of padding, horizontal flip."""
    return v2.Compose([v2.RandomCrop(as_size(size), padding=4), v2.RandomHorizontalFlip()])


def require_files(root: Path, names: Sequence[str], key: str, hint: str = "") -> None:
    """Fail with a message naming ``key`` and every expected file if any is missing under ``root``.

    Raises:
        ConfigError: Some of the files are missing.
    """
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        where = f"{root} does not exist" if not root.exists() else f"{root} lacks {', '.join(missing)}"
        raise ConfigError(key, f"{where}; expected {', '.join(names)} under it.{' ' + hint if hint else ''}")


class _Transformed(Dataset[tuple[Tensor, int]]):
    """Base of the datasets below: applies an optional augmentation after loading."""

    augment: Transform | None = None

    def _finish(self, image: Tensor) -> Tensor:
        return self.augment(image) if self.augment is not None else image


# --------------------------------------------------------------------------------------------
# IDX files (MNIST and its relatives)
# --------------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): MNIST's format for images and labels.

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "x.idx")
    >>> _ = open(f, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(f).tolist()
    [7, 8, 9]

    Raises:
        ValueError: The file is not an IDX file, or holds fewer values than its header says.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except gzip.BadGzipFile:
        raise ValueError(f"{path} is not a gzip file (name it without .gz if it is a raw IDX file)") from None
    dtypes: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[0] or data[1] or data[2] not in dtypes:
        raise ValueError(f"{path} is not an IDX file (its first bytes are not an IDX magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) < expected:
        raise ValueError(
            f"{path} is cut short: its header announces {shape}, which needs {expected} bytes, not {len(data)}"
        )
    array: np.ndarray = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return array.reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if ``path`` ends in ``.gz``), as :func:`read_idx` reads it.

    How to bring any labelled images to ``dataset=idx``: images ``(N, H, W)`` or ``(N, H, W, C)``,
    labels ``(N,)``.

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "x.idx.gz")
    >>> write_idx(f, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> read_idx(f).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx writes uint8 arrays, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array).tobytes())


def _read_idx_as(path: str | Path, key: str, kind: str) -> np.ndarray:
    """An IDX file of ``kind`` (``"images"``: uint8 ``(N, H, W)`` or ``(N, H, W, C)``; ``"labels"``: integers ``(N,)``).

    Raises:
        ConfigError: Naming ``key``: the file is not an IDX file, or not one of ``kind``.
    """
    try:
        array = read_idx(path)
    except ValueError as err:
        raise ConfigError(key, str(err)) from None
    if kind == "images" and not (array.ndim in (3, 4) and array.dtype == np.uint8):
        other = " (a labels file?)" if array.ndim == 1 else ""
        raise ConfigError(
            key,
            f"{path} holds {array.dtype} values of shape {array.shape}{other}: "
            "images are uint8, (N, H, W) or (N, H, W, C)",
        )
    if kind == "labels" and not (array.ndim == 1 and np.issubdtype(array.dtype, np.integer)):
        other = " (an images file?)" if array.ndim in (3, 4) else ""
        raise ConfigError(
            key, f"{path} holds {array.dtype} values of shape {array.shape}{other}: labels are integers, (N,)"
        )
    return array


class IDXDataset(_Transformed):
    """Images and labels from a pair of IDX files (gzipped or not), resized to ``image_size``.

    Args:
        images: IDX file of uint8 images ``(N, H, W)`` or ``(N, H, W, C)``.
        labels: IDX file of ``N`` integer labels.
        image_size: Output side or ``(height, width)``; ``None`` keeps the files' size.
        augment: Optional transform of each ``[0, 1]`` image tensor (for training a teacher).
        key: Config key named in errors: one for both files, or the keys of ``images`` and ``labels``.
    """

    def __init__(
        self,
        images: str | Path,
        labels: str | Path,
        image_size: int | Sequence[int] | None = None,
        augment: Transform | None = None,
        key: str | Sequence[str] = "dataset",
    ) -> None:
        image_key, label_key = (key, key) if isinstance(key, str) else key
        for path, path_key in ((Path(images), image_key), (Path(labels), label_key)):
            if not path.is_file():
                raise ConfigError(path_key, f"no file at {path}")
        image_array, label_array = _read_idx_as(images, image_key, "images"), _read_idx_as(labels, label_key, "labels")
        pixels = torch.from_numpy(image_array.copy())
        pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        self.images = pixels.float().div_(255.0)
        if image_size is not None and self.images.shape[-2:] != as_size(image_size):
            self.images = F.interpolate(self.images, size=as_size(image_size), mode="bilinear", align_corners=False)
        self.targets = torch.from_numpy(label_array.astype(np.int64))
        if len(self.targets) != len(self.images):
            raise ConfigError(
                label_key, f"{images} holds {len(self.images)} images but {labels} {len(self.targets)} labels"
            )
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self._finish(self.images[index]), int(self.targets[index])


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist(
    root: str | Path,
    split: Split = "train",
    image_size: int | Sequence[int] = 32,
    augment: Transform | None = None,
    download: bool = False,
) -> IDXDataset:
    """MNIST from its four IDX files, gzipped or not, in ``root`` or in torchvision's ``root/MNIST/raw``.

    Images are resized from 28x28 to ``image_size`` (32 in the paper, for LeNet-5). With
    ``download``, torchvision fetches the files into ``root/MNIST/raw`` first if they are not there.
    """
    base = Path(root)
    names = MNIST_FILES[split]
    if download:
        from torchvision.datasets import MNIST

        MNIST(str(base), train=split == "train", download=True)  # a no-op where the files are there
    for folder in (base, base / "MNIST" / "raw"):
        for suffix in ("", ".gz"):
            if all((folder / (n + suffix)).exists() for n in names):
                images, labels = (folder / (n + suffix) for n in names)
                return IDXDataset(images, labels, image_size, augment, key="paths.data_dir")
    expected = [n + ".gz" for n in names]
    hint = "(MNIST's IDX files, gzipped or not; or torchvision's MNIST/raw; or set dataset.download=true)"
    require_files(base, expected, "paths.data_dir", hint)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Folders of images (a class per folder), CIFAR, Caltech101
# --------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}


class _ImageFiles(_Transformed):
    """Base of the datasets of image files: ``samples`` of ``(path, label)``, read in ``mode`` ("L" or "RGB")."""

    samples: list[tuple[Path, int]]
    mode: str = "RGB"
    to_tensor: v2.Compose

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as img:
            image = self.to_tensor(img.convert(self.mode))
        return self._finish(image), label


def list_class_folders(root: Path, key: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes (sub-folder names, sorted) and every ``(image file, class index)`` under ``root``.

    Raises:
        ConfigError: ``root`` is missing or holds no class folders with images.
    """
    if not root.is_dir():
        raise ConfigError(key, f"{root} does not exist; expected one sub-folder of images per class under it")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise ConfigError(key, f"{root} holds no images in class sub-folders (<root>/<class>/<image>)")
    return classes, samples


class ImageFolderDataset(_ImageFiles):
    """Images in one sub-folder per class (sorted names give the labels), torchvision's ``ImageFolder`` layout.

    With ``split`` set, only one part of the folder is read: the folder is split per class into a
    training and a held-out part (seeded by ``split_seed``, written to ``split_file`` the first
    time and reused ever after, as :class:`Caltech101` does), so that one folder of labelled
    images can train a teacher and evaluate students on disjoint images.

    Args:
        root: Folder of class folders.
        image_size: Output side or ``(height, width)``; ``None`` keeps each file's size.
        channels: 1 (grey) or 3 (RGB): images are converted on loading.
        augment: Optional transform of each ``[0, 1]`` image tensor.
        key: Config key named in errors.
        split: ``"train"`` or ``"test"``: that part of a split of the folder; ``None``: every image.
        split_file: Where the split is kept (needed with ``split``); ``{folder}`` in it stands for the
            folder (its name and a hash of its absolute path), so that each folder keeps its own split.
        split_seed: Seed of the split.
        test_fraction: Fraction of each class held out.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | Sequence[int] | None = None,
        channels: int = 3,
        augment: Transform | None = None,
        key: str = "paths.data_dir",
        split: Split | None = None,
        split_file: str | Path | None = None,
        split_seed: int = 0,
        test_fraction: float = 0.2,
    ) -> None:
        folder = Path(root)
        self.classes, self.samples = list_class_folders(folder, key)
        if split is not None:
            if split_file is None:
                raise ValueError("a split of the folder needs a split_file to keep it in")
            path = Path(str(split_file).replace("{folder}", folder_slug(folder)))
            part = load_or_make_split(path, folder, self.samples, self.classes, split_seed, test_fraction)
            chosen = set(part[split])
            self.samples = [(f, y) for f, y in self.samples if str(f.relative_to(folder)) in chosen]
        self.mode = {1: "L", 3: "RGB"}[channels]
        self.to_tensor = to_image_tensor(image_size)
        self.augment = augment


class CIFAR(_Transformed):
    """CIFAR-10 or CIFAR-100 in torchvision's layout (``cifar-10-batches-py`` / ``cifar-100-python`` under ``root``).

    Args:
        root: The folder holding torchvision's CIFAR folder.
        split: ``"train"`` or ``"test"``.
        num_classes: 10 or 100.
        augment: Optional transform of each ``[0, 1]`` image tensor (e.g. :func:`cifar_augment`).
        download: Download the dataset if it is missing (needs internet).
    """

    def __init__(
        self,
        root: str | Path,
        split: Split = "train",
        num_classes: Literal[10, 100] = 10,
        augment: Transform | None = None,
        download: bool = False,
    ) -> None:
        from torchvision.datasets import CIFAR10, CIFAR100

        cls, folder = {10: (CIFAR10, "cifar-10-batches-py"), 100: (CIFAR100, "cifar-100-python")}[num_classes]
        if not download:
            require_files(Path(root), [folder], "paths.data_dir", "(or set dataset.download=true to fetch it)")
        self.data = cls(str(root), train=split == "train", download=download)
        self.to_tensor = to_image_tensor()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.data[index]
        return self._finish(self.to_tensor(image)), int(label)


class Caltech101(_ImageFiles):
    """Caltech101 (``101_ObjectCategories``) with a seeded, disjoint train/test split kept on disk.

    The first time a split is asked for, it is drawn per class with ``split_seed`` (a fraction
    ``test_fraction`` of each class held out), written to ``split_file`` and reused ever after,
    so train and test never overlap and every run sees the same split. The background class is
    left out (101 classes).

    Args:
        root: The folder holding ``101_ObjectCategories`` (directly or under ``caltech101/``).
        split: ``"train"`` or ``"test"``.
        image_size: Output side or ``(height, width)`` (128 in the paper).
        split_file: Where the split is kept; default ``<root>/split-seed<seed>.json``.
        split_seed: Seed of the split.
        test_fraction: Fraction of each class held out.
        augment: Optional transform of each ``[0, 1]`` image tensor.
        download: Have torchvision fetch and unpack the images into ``root/caltech101`` first if
            they are not there (needs internet).
    """

    def __init__(
        self,
        root: str | Path,
        split: Split = "train",
        image_size: int | Sequence[int] = 128,
        split_file: str | Path | None = None,
        split_seed: int = 0,
        test_fraction: float = 0.2,
        augment: Transform | None = None,
        download: bool = False,
    ) -> None:
        base = Path(root)
        if download:
            from torchvision.datasets import Caltech101 as TorchvisionCaltech101

            TorchvisionCaltech101(str(base), download=True)  # a no-op where the images are there
        folder = next(
            (p for p in (base / "101_ObjectCategories", base / "caltech101" / "101_ObjectCategories") if p.is_dir()),
            base / "101_ObjectCategories",
        )
        classes, samples = list_class_folders(folder, "paths.data_dir")
        keep = [c for c in classes if c != "BACKGROUND_Google"]
        index = {c: i for i, c in enumerate(keep)}
        self.classes = keep
        split_path = Path(split_file) if split_file else base / f"split-seed{split_seed}.json"
        chosen = set(load_or_make_split(split_path, folder, samples, classes, split_seed, test_fraction)[split])
        self.samples = [
            (f, index[classes[label]])
            for f, label in samples
            if classes[label] in index and str(f.relative_to(folder)) in chosen
        ]
        self.to_tensor = to_image_tensor(image_size)
        self.augment = augment


def folder_slug(folder: Path) -> str:
    """A file-name-safe name of ``folder``: its name and 8 hex digits of its absolute path.

    >>> folder_slug(Path("/data/cifar10/test"))
    'test-a9b0e3ac'
    """
    absolute = str(folder.expanduser().resolve())
    return f"{folder.name}-{hashlib.sha256(absolute.encode()).hexdigest()[:8]}"


def load_or_make_split(
    path: Path, folder: Path, samples: list[tuple[Path, int]], classes: list[str], seed: int, test_fraction: float
) -> dict[str, list[str]]:
    """Read a saved split, or draw one per class (seeded) and save it; files relative to ``folder``.

    Raises:
        ConfigError: A saved split names files that are not there (another copy of the data).
    """
    if path.exists():
        split: dict[str, list[str]] = json.loads(path.read_text())
        present = {str(f.relative_to(folder)) for f, _ in samples}
        if not set(split["train"]) | set(split["test"]) <= present:
            raise ConfigError(
                "dataset.split_file",
                f"{path} names images that are not under {folder} (a split of another folder?): "
                "give this folder a file of its own",
            )
        return split
    rng = random.Random(seed)
    split = {"train": [], "test": []}
    for label in range(len(classes)):
        files = sorted(str(f.relative_to(folder)) for f, y in samples if y == label)
        rng.shuffle(files)
        n_test = max(1, round(len(files) * test_fraction)) if len(files) > 1 else 0
        split["test"] += sorted(files[:n_test])
        split["train"] += sorted(files[n_test:])
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {**split, "seed": seed, "test_fraction": test_fraction}
    path.write_text(json.dumps(record, indent=1))
    return split
