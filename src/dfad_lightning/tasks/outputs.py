"""The run directory: no run overwrites another, and a stopped run can be resumed there."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from dfad_lightning.errors import ConfigError, RunInterrupted

RESULTS = "results.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def prepare_output_dir(cfg: DictConfig) -> Path:
    """Check that the run may write to ``paths.output_dir``, then record its config there.

    A directory that holds a finished run (a ``results.json``) is never reused. One that holds
    an unfinished run (a last checkpoint) is reused only to resume it (``ckpt_path=last``).
    The config is saved under ``.hydra/`` only after these checks, so a refused start changes
    nothing on disk; a resumed run keeps the config of its first start.

    Raises:
        ConfigError: The directory belongs to another run.
    """
    out = Path(cfg.paths.output_dir).resolve()
    if (out / RESULTS).exists():
        raise ConfigError("hydra.run.dir", f"{out} already holds a finished run ({RESULTS}); choose another directory")
    if latest_checkpoint(out) is not None and cfg.get("ckpt_path") is None:
        raise ConfigError(
            "ckpt_path",
            f"{out} holds an unfinished run ({LAST_CHECKPOINT}); resume it with ckpt_path=last, "
            "or choose another hydra.run.dir",
        )
    record = out / ".hydra"
    if not (record / "config.yaml").exists():
        record.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, record / "config.yaml")
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.get()
            OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
    return out


def latest_checkpoint(out: Path) -> Path | None:
    """The newest of ``checkpoints/last.ckpt`` and Lightning's SLURM ``hpc_ckpt_N.ckpt`` in ``out``."""
    candidates = [p for p in (out / LAST_CHECKPOINT, *out.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def resolve_ckpt_path(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint to resume from.

    ``ckpt_path=last``: this run directory's last checkpoint; ``auto``: the newest checkpoint of
    this directory if there is one, else a fresh start (for jobs that a cluster requeues with
    the same command); anything else: a path.

    Raises:
        ConfigError: There is no such checkpoint.
    """
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    if value == "auto":
        return latest_checkpoint(out)
    path = latest_checkpoint(out) if value == "last" else Path(str(value)).expanduser()
    if path is None:
        raise ConfigError("ckpt_path", f"no checkpoint to resume in {out / LAST_CHECKPOINT.parent}")
    if not path.is_file():
        raise ConfigError("ckpt_path", f"no checkpoint at {path}")
    return path


def fit_resumable(
    trainer: Trainer, module: LightningModule, datamodule: LightningDataModule, ckpt_path: Path | None, out: Path
) -> None:
    """``trainer.fit``, turning a stop by SIGTERM or SIGINT into :class:`RunInterrupted`.

    Raises:
        RunInterrupted: The run saved its last checkpoint and stopped; it can be resumed.
    """
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise RunInterrupted(
            f"stopped by a signal after saving {out / LAST_CHECKPOINT}. Resume with: "
            f"python train.py hydra.run.dir={out} ckpt_path=last (and the same overrides)"
        ) from None
