"""Semantic segmentation: datasets on disk, mean IoU, focal loss, the subclass, and whole runs."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from hydra.utils import instantiate
from PIL import Image
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dfad_lightning.data import DFADDataModule
from dfad_lightning.data.segmentation import camvid, colorize, nyuv2
from dfad_lightning.errors import ConfigError
from dfad_lightning.losses import focal_loss
from dfad_lightning.metrics import MeanIoU
from dfad_lightning.networks import GeneratorB
from dfad_lightning.parts import StudentSteps
from dfad_lightning.systems import DFAD, SegmentationDFAD
from dfad_lightning.tasks import run

CAMVID_SPLITS = {"train": 6, "val": 2, "test": 4}


def write_pairs(images: Path, masks: Path, n: int, labels: int, size=(60, 40), seed=0) -> None:
    """``n`` random RGB images and masks with values in ``0..labels`` (inclusive), PNG files."""
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    w, h = size
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"img{i:03d}.png")
        # Blocky masks (4x4 cells): something a tiny network can learn.
        cells = rng.integers(0, labels + 1, (h // 4 + 1, w // 4 + 1), dtype=np.uint8)
        Image.fromarray(np.kron(cells, np.ones((4, 4), dtype=np.uint8))[:h, :w], mode="L").save(
            masks / f"img{i:03d}.png"
        )


def fake_camvid(root: Path) -> Path:
    for split, n in CAMVID_SPLITS.items():
        write_pairs(root / split, root / f"{split}annot", n, labels=11)
    return root


def fake_nyuv2(root: Path) -> Path:
    for split, n in (("train", 4), ("test", 3)):
        write_pairs(root / "image" / split, root / "seg13" / split, n, labels=13)
    return root


def test_camvid_pairs_resize_pad_with_void_and_crop(tmp_path):
    root = fake_camvid(tmp_path / "camvid")
    test = camvid(root, "test", short_side=20, pad_to=8)
    assert len(test) == 4
    image, mask = test[0]
    # 60x40 -> short side 20 -> 30x20 (w x h) -> padded to 32x24 with void.
    assert image.shape == (3, 24, 32) and mask.shape == (24, 32) and mask.dtype == torch.int64
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert (mask[20:] == 11).all() and (mask[:, 30:] == 11).all() and (image[:, 20:] == 0).all()
    assert set(mask.unique().tolist()) <= set(range(12))
    train = camvid(root, "train", short_side=20, crop=16)
    assert len(train) == 6 and train[0][0].shape == (3, 16, 16) and train[0][1].shape == (16, 16)


def test_nyuv2_reads_unlabelled_zero_as_void(tmp_path):
    root = fake_nyuv2(tmp_path / "nyu")
    data = nyuv2(root, "test", short_side=None, pad_to=1)
    raw = torch.from_numpy(np.asarray(Image.open(root / "seg13" / "test" / "img000.png"), dtype=np.int64))
    _, mask = data[0]
    assert len(data) == 3 and ((raw == 0) == (mask == 13)).all() and (mask[raw > 0] == raw[raw > 0] - 1).all()


def test_missing_or_incomplete_segmentation_roots_name_the_key_and_the_layout(tmp_path):
    with pytest.raises(ConfigError, match=r"^dataset\.root: .* does not exist; expected test, testannot"):
        camvid(tmp_path / "nowhere", "test")
    root = fake_camvid(tmp_path / "camvid")
    (root / "testannot" / "img001.png").unlink()
    with pytest.raises(ConfigError, match=r"^dataset\.root: 1 images in .* have no mask .*img001\.png"):
        camvid(root, "test")


def test_mean_iou_ignores_void_and_classes_that_never_occur():
    metric = MeanIoU(num_classes=3, ignore_index=3)
    target = torch.tensor([[0, 0, 1, 3]])
    preds = torch.tensor([[0, 1, 1, 2]])  # the void pixel's prediction is not counted
    metric.update(preds, target)
    # class 0: 1 / 2, class 1: 1 / 2, class 2: never occurs (the void pixel does not count).
    assert metric.per_class()[:2].tolist() == [0.5, 0.5] and torch.isnan(metric.per_class()[2])
    assert metric.compute().item() == pytest.approx(0.5)
    logits = torch.nn.functional.one_hot(preds, 3).permute(0, 2, 1).float().unsqueeze(-1)
    from_logits = MeanIoU(num_classes=3, ignore_index=3)
    from_logits.update(logits, target.unsqueeze(-1))
    assert from_logits.compute().item() == pytest.approx(0.5)


def test_focal_loss_ignores_void_pixels():
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    void = target.clone()
    void[0, 0, 0] = 4
    other = logits.clone()
    other[0, :, 0, 0] += 100.0  # a void pixel's logits change nothing
    assert torch.isclose(focal_loss(logits, void, ignore_index=4), focal_loss(other, void, ignore_index=4))
    assert torch.isclose(focal_loss(logits, target, gamma=0.0), torch.nn.functional.cross_entropy(logits, target))


def test_colorize_draws_void_black():
    picture = colorize(torch.tensor([[[0, 2]]]), [(255, 255, 255), (10, 10, 10)])
    assert (
        picture.shape == (1, 3, 1, 2) and picture[0, :, 0, 0].tolist() == [1, 1, 1] and picture[0, :, 0, 1].sum() == 0
    )


class TinySegmenter(nn.Module):
    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, classes, 1)
        )

    def forward(self, x):
        return self.body(x)


class FakeScenes(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 16, 16, generator=g), torch.randint(0, 5, (16, 16), generator=g)  # 4 = void


def tiny_system(learning: dict | None = None, **kwargs) -> SegmentationDFAD:
    """A seeded SegmentationDFAD of tiny networks, 4 classes of 16x16 scenes, k = 2 (``learning``: more options)."""
    learning = learning or {}
    L.seed_everything(0, verbose=False)
    return SegmentationDFAD(
        teacher=TinySegmenter(),
        student=TinySegmenter(width=4),
        generator=GeneratorB(nz=8, channels=3, image_size=16, ngf=4),
        metric=MeanIoU(4, ignore_index=4),
        metric_name="miou",
        class_names=["a", "b", "c", "d"],
        learning=partial(StudentSteps, steps=2, **learning),
        **kwargs,
    )


@pytest.fixture
def fit_tiny(fit, tmp_path):
    """Train ``system`` on noise for ``epochs`` of 2 iterations of batch 4, evaluating on FakeScenes."""

    def tiny(system: SegmentationDFAD, epochs: int) -> L.Trainer:
        data = DFADDataModule(nz=8, batch_size=4, student_steps=2, iterations_per_epoch=2, eval_dataset=FakeScenes)
        return fit(system, tmp_path, epochs, datamodule=data)

    return tiny


def test_segmentation_is_the_base_loop_with_per_class_iou(tmp_path, fit_tiny):
    assert SegmentationDFAD.training_step is DFAD.training_step  # the loop is shared, not copied
    system = tiny_system()
    teacher = system.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = fit_tiny(system, epochs=2)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert system.generator_loss(torch.zeros(1), torch.ones(1)).item() == pytest.approx(-np.log(2.0))  # -log(1 + D)
    assert "val/iou/a" in trainer.callback_metrics and "val/miou" in trainer.callback_metrics
    report = system.report()["per_class_iou"]
    assert list(report) == ["a", "b", "c", "d"]
    assert report["a"]["teacher"] == pytest.approx(float(system.teacher_iou[0]), abs=1e-6)
    assert float(system.student_iou.nanmean()) == pytest.approx(float(system.last_score), abs=1e-6)
    with pytest.raises(TypeError, match="MeanIoU"):
        SegmentationDFAD(teacher, teacher, system.generator, MulticlassAccuracy(4), "acc", class_names=["a"])


def test_the_replay_memory_keeps_the_teachers_per_pixel_outputs(fit_tiny):
    system = tiny_system(learning={"reuse": 2, "replay_size": 16})
    fit_tiny(system, epochs=1)
    memory = system.learning.memory
    assert memory is not None and memory.seen == 2 * 2 * 4 and memory.outputs.shape[1:] == (4, 16, 16)
    with torch.no_grad():  # what is replayed is what the frozen teacher says about each stored sample
        assert torch.allclose(memory.outputs[:8], system.teacher(memory.samples[:8]), atol=1e-5)


SEG_TINY = [
    "teacher=deeplab_resnet18",
    "dataset.image_size=[32,32]",
    "dataset.short_side=32",
    "dataset.crop=[32,32]",
    "data.batch_size=4",
    "data.iterations_per_epoch=2",
    "data.eval_batch_size=4",
    "system.learning.steps=2",
    "trainer.max_epochs=1",
    "teacher.training.epochs=1",
    "teacher.training.batch_size=4",
    "generator.ngf=8",
]


def test_camvid_user_command_without_a_teacher_says_what_to_set_and_how_to_train_one(make_cfg, tmp_path):
    cfg = make_cfg(
        "dataset=camvid", "model=deeplab_mbv2", f"paths.data_dir={fake_camvid(tmp_path / 'd' / 'camvid').parent}"
    )
    with pytest.raises(ConfigError, match=r"^teacher\.checkpoint: .*`python train\.py task=teacher dataset=camvid"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_camvid_teacher_then_distillation_end_to_end(make_cfg, tmp_path):
    data_dir = fake_camvid(tmp_path / "d" / "camvid").parent
    common = [*SEG_TINY, "dataset=camvid", f"paths.data_dir={data_dir}"]
    teacher = run(make_cfg(*common, "task=teacher", output_dir=tmp_path / "teacher"))
    assert 0.0 <= teacher["teacher"] <= 1.0
    results = run(make_cfg(*common, "model=deeplab_mbv2", f"teacher.checkpoint={teacher['checkpoint']}"))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metric"] == "miou" and saved["teacher"] == pytest.approx(teacher["teacher"], abs=1e-6)
    assert set(saved["per_class_iou"]) == {"sky", "building", "pole", "road", "pavement", "tree", "sign_symbol",
                                           "fence", "car", "pedestrian", "bicyclist"}  # fmt: skip
    assert 0.0 <= results["student"]["final"] <= 1.0
    for name in ("samples", "real"):
        picture = Image.open(tmp_path / "run" / "samples" / f"{name}_epoch_000.png")
        assert picture.size[0] > 32 * 4  # a grid of several images


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.image_size=[36,36]"], r"^generator: .*multiples of 16"),  # Generator-B's four x2 steps
        (["generator=generator_a", "dataset.image_size=[36,36]"], r"^teacher: cannot take .*divisible by 8"),
    ],
)
def test_image_sizes_the_networks_cannot_take_are_refused(make_cfg, tmp_path, overrides, message):
    data_dir = fake_camvid(tmp_path / "d" / "camvid").parent
    cfg = make_cfg(*SEG_TINY, "dataset=camvid", f"paths.data_dir={data_dir}", *overrides)
    torch.save(instantiate(cfg.teacher.net).state_dict(), tmp_path / "teacher.pt")
    cfg.teacher.checkpoint = str(tmp_path / "teacher.pt")
    with pytest.raises(ConfigError, match=message):
        run(cfg)


@pytest.mark.shared_data
def test_real_camvid_has_every_pair_with_labels_in_range(tmp_path):
    root = SHARED_DATA / "camvid"
    sizes = {split: len(camvid(root, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    test = camvid(root, "test", short_side=256)
    image, mask = test[0]
    assert image.shape == (3, 256, 344) and mask.shape == (256, 344)  # 480x360 -> 341x256, padded to 344
    assert mask.min() >= 0 and mask.max() <= 11 and (mask[:, 341:] == 11).all()
    palette = [(128, 128, 128)] * 11
    assert colorize(mask[None], palette).shape == (1, 3, 256, 344)


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_camvid_whole_path_on_the_cpu(make_cfg, tmp_path):
    common = [
        *SEG_TINY,
        "dataset=camvid",
        f"paths.data_dir={SHARED_DATA}",
        "dataset.short_side=64",
        "data.eval_batch_size=32",
    ]
    teacher = run(make_cfg(*common, "task=teacher", "teacher.training.batch_size=32", output_dir=tmp_path / "t"))
    results = run(make_cfg(*common, "model=deeplab_mbv2", f"teacher.checkpoint={teacher['checkpoint']}"))
    assert len(results["per_class_iou"]) == 11 and 0.0 < results["teacher"] < 1.0
    assert (tmp_path / "run" / "samples" / "real_epoch_000.png").is_file()


def test_a_crop_larger_than_the_images_or_an_empty_folder_names_the_key(tmp_path):
    root = fake_camvid(tmp_path / "camvid")
    with pytest.raises(ConfigError, match=r"^dataset\.crop: a 64x64 crop does not fit images of 20x30"):
        camvid(root, "train", short_side=20, crop=64)[0]
    for file in (root / "val").iterdir():
        file.unlink()
    with pytest.raises(ConfigError, match=r"^dataset\.root: .*val holds no images"):
        camvid(root, "val")
