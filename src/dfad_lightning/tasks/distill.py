"""``task=distill``: data-free adversarial distillation of the teacher into the student."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dfad_lightning.callbacks import DataFreeProbe, MaskGrid, SampleGrid
from dfad_lightning.files import save_atomic, write_json_atomic
from dfad_lightning.systems import DFAD
from dfad_lightning.systems.dfad import FINAL_STUDENT_PREFIXES
from dfad_lightning.tasks.build import (
    build_callbacks,
    build_datamodule,
    build_network,
    build_system,
    build_trainer,
    check_networks,
    uses_generator,
)
from dfad_lightning.tasks.outputs import RESULTS, fit_resumable, prepare_output_dir, resolve_ckpt_path
from dfad_lightning.tasks.teacher import load_teacher
from dfad_lightning.weights import load_weights, sha256

STUDENT_FILE = "student.pt"
TIME_TO_FRACTIONS = (0.9, 0.95)  # results.json says when the student first reached these fractions of the teacher


def distill(cfg: DictConfig) -> dict[str, Any]:
    """Distil the configured teacher into the student; write the run's outputs and ``results.json``.

    Returns:
        The results (also in ``results.json``), with ``objective`` set to the final student metric.
    """
    start = time.perf_counter()
    trained = ("student", "generator") if uses_generator(cfg) else ("student",)
    ckpt_path = resolve_ckpt_path(cfg, Path(cfg.paths.output_dir).resolve(), trained)  # reads only
    out = prepare_output_dir(cfg)
    teacher, teacher_file = load_teacher(cfg)
    # Seed after the teacher is ready, so a run is the same whether its teacher was cached or trained.
    L.seed_everything(cfg.seed, workers=True)
    student = build_network(cfg.model, "model")
    generator = build_network(cfg.generator, "generator") if uses_generator(cfg) else None
    check_networks(cfg, teacher, student, generator)
    datamodule = build_datamodule(cfg)
    fingerprint = {"path": str(teacher_file.resolve()), "sha256": sha256(teacher_file)}
    system = build_system(cfg, teacher, student, generator, teacher_fingerprint=fingerprint)
    trainer = build_trainer(cfg, out, callbacks=build_callbacks(cfg))
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]

    fit_resumable(trainer, system, datamodule, ckpt_path, out)
    if not trainer.is_global_zero:
        return {}

    delivered = delivered_student(system, trainer)
    save_atomic(
        delivered.state_dict() if delivered is not None else system.final_student.state_dict(), out / STUDENT_FILE
    )
    results = summarize(cfg, system, trainer, out, teacher_file, wall_time=time.perf_counter() - start)
    write_json_atomic(results, out / RESULTS)
    print(report(results))
    return results


def summarize(
    cfg: DictConfig, system: DFAD, trainer: Trainer, out: Path, teacher_file: Path, wall_time: float
) -> dict[str, Any]:
    """The machine-readable result of a distillation run."""
    teacher, final, best = (_number(t) for t in (system.teacher_score, system.last_score, system.best_score))
    samples = next((cb.last_path for cb in trainer.callbacks if isinstance(cb, SampleGrid | MaskGrid)), None)  # type: ignore[attr-defined]
    results: dict[str, Any] = {
        "task": "distill",
        "method": str(cfg.get("method", {}).get("name", "DFAD")),
        "recipe": str(cfg.get("recipe", {}).get("name", "paper")),
        "dataset": cfg.dataset.name,
        "metric": cfg.dataset.metric_name,
        "teacher": teacher,
        "student": {"final": final, "best": best, "best_epoch": int(system.best_epoch)},
        "ratio": round(final / teacher, 6) if teacher and final is not None else None,
        "real_data": cfg.dataset.get("test") is not None,  # whether the dataset has a split to evaluate on
        "datafree": datafree_summary(trainer),
        "iterations": system.iterations(trainer.global_step),
        "curve": system.curve,
        "time_to_teacher": {str(f): system.time_to(f) for f in TIME_TO_FRACTIONS},
        "epochs": trainer.current_epoch,
        "wall_time_s": round(wall_time, 2),
        "seed": cfg.seed,
        "teacher_checkpoint": str(teacher_file.resolve()),
        "output_dir": str(out),
        "student_weights": str(out / STUDENT_FILE),
        "samples": str(samples) if samples else None,
        "device": str(system.device) if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        **system.report(),
    }
    # What a sweeper maximises: the real final score, or without real data the data-free signal.
    signal = (results["datafree"] or {}).get("final", {}).get("agreement")
    results["objective"] = final if final is not None else signal
    return results


def delivered_student(system: DFAD, trainer: Trainer) -> nn.Module | None:
    """The student of the epoch the data-free signal prefers to the last one (``None``: the last one is delivered).

    Read from the checkpoint the signal kept (``datafree-best.ckpt``), where the probe rates its
    epoch better than the last beyond its sampling noise (:meth:`DataFreeProbe.preferred`).
    """
    probe = next((cb for cb in trainer.callbacks if isinstance(cb, DataFreeProbe)), None)  # type: ignore[attr-defined]
    keep = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)  # type: ignore[attr-defined]
    if probe is None or keep is None or not keep.best_model_path or probe.preferred() is None:
        return None
    student = copy.deepcopy(system.final_student)
    load_weights(student, keep.best_model_path, "callbacks.datafree_best", "model", FINAL_STUDENT_PREFIXES)
    return student


def _number(value: torch.Tensor) -> float | None:
    """A JSON number, or ``None`` for a score never measured (NaN: no real data)."""
    return None if bool(torch.isnan(value)) else round(float(value), 6)


def datafree_summary(trainer: Trainer) -> dict[str, Any] | None:
    """The data-free signal at the end, the epoch it selects and that checkpoint (if the callbacks ran)."""
    probe = next((cb for cb in trainer.callbacks if isinstance(cb, DataFreeProbe)), None)  # type: ignore[attr-defined]
    if probe is None or not probe.history:
        return None
    keep = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)  # type: ignore[attr-defined]
    selected, preferred = probe.selected(), probe.preferred()
    return {
        "final": {k: round(v, 6) for k, v in probe.history[-1].items() if k not in ("epoch", "real") and v is not None},
        "selected_epoch": selected["epoch"] if selected else None,
        "selected_real_score": selected["real"] if selected else None,
        "selected_checkpoint": keep.best_model_path or None if keep is not None else None,
        # Whether student.pt is the selected epoch's student (rated better than the last beyond the noise).
        "delivered_selected": preferred is not None and keep is not None and bool(keep.best_model_path),
        "warnings": probe.warnings(),
    }


def advice(recipe: str) -> str:
    """What to try when the data-free signal says the student is not following the teacher."""
    first = "" if recipe == "robust" else "recipe=robust (the recommended recipe), "
    return (
        f"try {first}more iterations (trainer.max_epochs), the student the signal selected "
        "(data-free selection above), or another generator LR (system.generator_optimizer.lr)"
    )


def report(results: dict[str, Any]) -> str:
    """The lines printed at the end of a distillation run."""
    name, student = results["metric"], results["student"]
    datafree = results.get("datafree") or {}
    signal = datafree.get("final", {})
    lines = ""
    if signal:
        lines = (
            f"  data-free teacher/student agreement on the run's own probes: {signal['agreement']:.4f}\n"
            f"  data-free selection: epoch {datafree['selected_epoch']}, {datafree['selected_checkpoint']}\n"
        )
        if datafree.get("delivered_selected"):
            real = datafree.get("selected_real_score")
            scored = "" if real is None else f" ({name} {real:.4f})"
            lines += (
                f"  {STUDENT_FILE} holds the selected epoch's student{scored}: the signal rates it above the last\n"
            )
    for warning in datafree.get("warnings", []):
        lines += f"  WARNING: {warning};\n    {advice(results.get('recipe', 'paper'))}\n"
    recipe = "" if results.get("recipe", "paper") == "paper" else f", {results['recipe']} recipe"
    header = f"\n{results['method']}{recipe} on {results['dataset']} ({results['iterations']} iterations, "
    header += f"{results['wall_time_s']:.1f} s)\n"
    outputs = f"  outputs: {results['output_dir']}  ({RESULTS}, {STUDENT_FILE}, checkpoints/, probes/, samples/, csv/)"
    if results["teacher"] is None:
        why = (
            "the dataset has no evaluation split"
            if not results["real_data"]
            else "no evaluation ran (trainer.check_val_every_n_epoch is larger than the epochs trained)"
        )
        return (
            f"{header}  No real data was used to evaluate: {why}, so the student is\n"
            f"  judged only by the data-free signal below, not by a real metric.\n{lines}{outputs}"
        )
    return (
        f"{header}"
        f"  teacher {name}:                       {results['teacher']:.4f}\n"
        f"  student {name}, final:                {student['final']:.4f}\n"
        f"  student {name}, best over training:   {student['best']:.4f} (epoch {student['best_epoch']})\n"
        f"  student/teacher (final):            {results['ratio']:.3f}\n"
        f"{lines}{outputs}"
    )
