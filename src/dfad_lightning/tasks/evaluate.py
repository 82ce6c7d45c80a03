"""``task=eval``: measure the teacher (and a student, if given) on the dataset's evaluation split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from dfad_lightning.errors import ConfigError
from dfad_lightning.files import write_json_atomic
from dfad_lightning.systems import Supervised
from dfad_lightning.systems.dfad import FINAL_STUDENT_PREFIXES
from dfad_lightning.tasks.build import build_datamodule, build_metric, build_network, build_trainer
from dfad_lightning.tasks.outputs import RESULTS, prepare_output_dir
from dfad_lightning.tasks.teacher import load_teacher
from dfad_lightning.weights import load_weights


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``teacher`` and, with ``student_checkpoint=PATH``, the ``model`` network; write ``results.json``.

    Both networks see the real evaluation split normalised with the teacher's statistics, as in
    distillation.
    """
    start = time.perf_counter()
    if cfg.dataset.get("test") is None:
        raise ConfigError("dataset.test", f"dataset={cfg.dataset.name} has no evaluation split to score networks on")
    out = prepare_output_dir(cfg)
    teacher, teacher_file = load_teacher(cfg)
    student_file = cfg.get("student_checkpoint")
    student = None
    if student_file is not None:
        student = build_network(cfg.model, "model")
        load_weights(student, student_file, "student_checkpoint", "model", FINAL_STUDENT_PREFIXES)
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg, out, logger=False, callbacks=[], enable_checkpointing=False)

    def score(net: nn.Module) -> float:
        system = Supervised(net, build_metric(cfg), cfg.dataset.metric_name)
        trainer.validate(system, datamodule=datamodule, verbose=False)
        return round(system.score, 6)

    teacher_score = score(teacher)
    student_score = score(student) if student is not None else None
    results = {
        "task": "eval",
        "dataset": cfg.dataset.name,
        "metric": cfg.dataset.metric_name,
        "teacher": teacher_score,
        "student": student_score,
        "ratio": round(student_score / teacher_score, 6) if student_score is not None and teacher_score else None,
        "samples": len(datamodule.eval_dataset) if datamodule.eval_dataset is not None else 0,  # type: ignore[arg-type]
        "teacher_checkpoint": str(teacher_file.resolve()),
        "student_checkpoint": str(Path(student_file).resolve()) if student_file else None,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "output_dir": str(out),
        "objective": student_score if student_score is not None else teacher_score,
    }
    write_json_atomic(results, out / RESULTS)
    name = cfg.dataset.metric_name
    print(f"\nOn the {cfg.dataset.name} evaluation split ({results['samples']} samples):")
    print(f"  teacher {name}: {teacher_score:.4f}")
    if student_score is not None:
        print(f"  student {name}: {student_score:.4f}   student/teacher: {results['ratio']:.3f}")
    return results
