"""The real-image datasets: layouts on disk, the errors for missing data, Caltech101's split."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfad_lightning.data.images import (
    CIFAR,
    Caltech101,
    IDXDataset,
    ImageFolderDataset,
    folder_slug,
    mnist,
    read_idx,
    write_idx,
)
from dfad_lightning.errors import ConfigError
from dfad_lightning.tasks import run


def fake_mnist(folder, n=6, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n, dtype=np.uint8) % 10)


def test_read_idx_roundtrip_gzipped_and_raw(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)


@pytest.mark.parametrize(("sub", "gz"), [("", True), ("MNIST/raw", False)])
def test_mnist_reads_idx_files_in_root_or_torchvision_layout(tmp_path, sub, gz):
    fake_mnist(tmp_path / sub if sub else tmp_path, gz=gz)
    data = mnist(tmp_path, "test", image_size=32)
    image, label = data[3]
    assert len(data) == 6 and image.shape == (1, 32, 32) and label == 3
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_missing_mnist_names_the_key_and_the_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^paths\.data_dir: .*does not exist; expected t10k-images-idx3-ubyte\.gz"):
        mnist(tmp_path / "nowhere", "test")


def test_idx_dataset_refuses_mismatched_files(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((3, 4, 4), np.uint8))
    write_idx(tmp_path / "y.gz", np.zeros(2, np.uint8))
    with pytest.raises(ConfigError, match=r"3 images but .* 2 labels"):
        IDXDataset(tmp_path / "x.gz", tmp_path / "y.gz", key="dataset.files")


def test_a_missing_idx_file_names_its_own_key(tmp_path, make_cfg):
    """``dataset=idx`` takes four files: the message names the one that is missing, by its key."""
    fake_mnist(tmp_path)
    files = {
        "train_images": tmp_path / "train-images-idx3-ubyte.gz",
        "train_labels": tmp_path / "train-labels-idx1-ubyte.gz",
        "test_images": tmp_path / "t10k-images-idx3-ubyte.gz",
        "test_labels": tmp_path / "nowhere" / "labels.gz",
    }
    overrides = [f"dataset.files.{k}={v}" for k, v in files.items()]
    cfg = make_cfg("task=teacher", "dataset=idx", "dataset.num_classes=10", *overrides)
    with pytest.raises(ConfigError, match=r"^dataset\.files\.test_labels: no file at .*nowhere/labels\.gz$"):
        run(cfg)


@pytest.mark.parametrize(
    ("swap", "key", "detail"),
    [
        ("labels_as_images", "dataset.files.train_images", r"shape \(12,\) \(a labels file\?\): images are uint8"),
        ("images_as_labels", "dataset.files.train_labels", r"shape \(12, 28, 28\) \(an images file\?\): labels are"),
        ("not_idx", "dataset.files.train_images", "is not an IDX file"),
        ("cut_short", "dataset.files.train_images", r"is cut short: its header announces \(12, 28, 28\)"),
        ("not_gzip", "dataset.files.train_images", "is not a gzip file"),
    ],
)
def test_a_wrong_idx_file_is_named_by_its_key_with_what_it_holds(tmp_path, make_cfg, swap, key, detail):
    fake_mnist(tmp_path, n=12)
    images, labels = tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    files = {"train_images": images, "train_labels": labels}
    if swap == "labels_as_images":
        files["train_images"] = labels
    elif swap == "images_as_labels":
        files["train_labels"] = images
    elif swap == "not_idx":
        files["train_images"] = tmp_path / "notes.txt"
        files["train_images"].write_text("hello")
    elif swap == "cut_short":
        files["train_images"] = tmp_path / "short.idx"
        files["train_images"].write_bytes(gzip.decompress(images.read_bytes())[:1000])
    else:
        files["train_images"] = tmp_path / "raw.gz"
        files["train_images"].write_bytes(gzip.decompress(images.read_bytes()))
    overrides = [f"dataset.files.{k}={v}" for k, v in files.items()]
    test = [
        f"dataset.files.test_images={tmp_path / 't10k-images-idx3-ubyte.gz'}",
        f"dataset.files.test_labels={tmp_path / 't10k-labels-idx1-ubyte.gz'}",
    ]
    cfg = make_cfg("task=teacher", "dataset=idx", "dataset.num_classes=10", *overrides, *test)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .*{detail}"):
        run(cfg)


def fake_folder(root, classes, per_class=3, size=(20, 24)):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, color=(10 * i, 100, 200)).save(root / c / f"{i}.png")


def test_image_folder_labels_follow_sorted_class_folders(tmp_path):
    fake_folder(tmp_path, ["cat", "airplane", "dog"])
    data = ImageFolderDataset(tmp_path, image_size=16, channels=3)
    assert data.classes == ["airplane", "cat", "dog"]
    image, label = data[4]
    assert image.shape == (3, 16, 16) and label == 1
    grey = ImageFolderDataset(tmp_path, image_size=(8, 12), channels=1)
    assert grey[0][0].shape == (1, 8, 12)


def test_image_folder_without_class_folders_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderDataset(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        ImageFolderDataset(tmp_path / "empty")


def test_dataset_image_folder_names_dataset_root_the_key_the_user_set(tmp_path, make_cfg):
    (tmp_path / "train" / "cat").mkdir(parents=True)  # a class folder without images
    cfg = make_cfg("task=teacher", "dataset=image_folder", f"dataset.root={tmp_path}", "dataset.image_size=[32,32]",
                   "dataset.num_classes=2")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^dataset\.root: .*train holds no images in class sub-folders"):
        run(cfg)


def test_missing_cifar_suggests_download(tmp_path):
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py.*dataset\.download=true"):
        CIFAR(tmp_path, "test")


def test_caltech101_split_is_seeded_disjoint_saved_and_reused(tmp_path):
    root = tmp_path / "caltech101"
    fake_folder(root / "101_ObjectCategories", ["BACKGROUND_Google", "ant", "bee", "cow"], per_class=5)
    split_file = tmp_path / "split.json"
    train = Caltech101(root, "train", image_size=32, split_file=split_file)
    test = Caltech101(root, "test", image_size=32, split_file=split_file)
    assert train.classes == ["ant", "bee", "cow"]  # the background class is left out
    assert {p for p, _ in train.samples}.isdisjoint({p for p, _ in test.samples})
    assert len(train) + len(test) == 15 and len(test) == 3  # one of five per class
    saved = json.loads(split_file.read_text())
    assert saved["seed"] == 0 and len(saved["test"]) == 4  # the background's held-out image too
    # Reused as saved, even with another seed asked for, and the same on every machine.
    again = Caltech101(root, "test", image_size=32, split_file=split_file, split_seed=1)
    assert again.samples == test.samples
    fresh = Caltech101(root, "test", image_size=32, split_file=tmp_path / "other.json")
    assert fresh.samples == test.samples
    image, label = test[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int) and torch.all(image <= 1)


def test_split_folder_keeps_one_split_per_folder_by_default(make_cfg, tmp_path):
    """The default split_file used to be one file for every folder: a second folder was refused."""
    for name in ("flowers", "birds"):
        fake_folder(tmp_path / name, ["a", "b"], per_class=5)
    cfg = make_cfg("dataset=split_folder", f"dataset.root={tmp_path / 'flowers'}", "dataset.num_classes=2",
                   "dataset.image_size=[32,32]")  # fmt: skip
    template = cfg.dataset.split_file
    assert "{folder}" in template and template.endswith("-seed0-test0.2.json")
    parts = {}
    for name in ("flowers", "birds", "flowers"):
        train = ImageFolderDataset(tmp_path / name, split="train", split_file=template)
        test = ImageFolderDataset(tmp_path / name, split="test", split_file=template)
        assert len(train) == 8 and len(test) == 2  # a fifth of each class held out
        parts.setdefault(name, []).append([p for p, _ in test.samples])
    assert parts["flowers"][0] == parts["flowers"][1]  # read back, not drawn again
    for name in ("flowers", "birds"):  # each folder's own file, its name and a hash of its path in it
        assert Path(template.replace("{folder}", folder_slug(tmp_path / name))).is_file()


def test_caltech101_refuses_a_split_of_other_images(tmp_path):
    root = tmp_path / "c"
    fake_folder(root / "101_ObjectCategories", ["ant"], per_class=2)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["ant/9.png"], "test": []}))
    with pytest.raises(ConfigError, match=r"dataset\.split_file"):
        Caltech101(root, "train", split_file=split_file)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test: the layouts below must be found as they are."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_mnist_download_uses_the_files_torchvisions_download_leaves(tmp_path, no_network):
    fake_mnist(tmp_path / "MNIST" / "raw", gz=False)  # torchvision keeps the unpacked files there
    data = mnist(tmp_path, "train", image_size=32, download=True)
    assert len(data) == 6 and data[0][0].shape == (1, 32, 32)


def test_caltech101_download_uses_the_folder_torchvisions_download_leaves(tmp_path, no_network):
    root = tmp_path / "caltech101"
    fake_folder(root / "caltech101" / "101_ObjectCategories", ["BACKGROUND_Google", "ant", "bee"], per_class=5)
    (root / "caltech101" / "Annotations").mkdir()
    data = Caltech101(root, "test", image_size=32, split_file=tmp_path / "split.json", download=True)
    assert data.classes == ["ant", "bee"] and len(data) == 2


def test_cifar_download_uses_the_batches_torchvisions_download_leaves(tmp_path, no_network, monkeypatch):
    import pickle

    import torchvision.datasets.cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # The files are fakes: accept them where torchvision checks the real ones' MD5 sums.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    data = CIFAR(tmp_path, "test", download=True)
    assert len(data) == 4 and data[1][0].shape == (3, 32, 32) and data[1][1] == 1
