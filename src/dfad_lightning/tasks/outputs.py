"""The run directory: no run overwrites another, and a stopped run can be resumed there."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from dfad_lightning.errors import ConfigError, RunInterrupted

RESULTS = "results.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class WritableRunDir(HydraCallback):
    """Check, before Hydra makes it, that the run's (or sweep's) directory can be created.

    Hydra creates ``hydra.run.dir`` before the task starts, and a directory that cannot be made
    (a path through a file, a read-only place) ends there in a traceback. This Hydra callback runs
    just before, makes the directory itself, and on failure prints one line naming the key and
    exits with status 2, as every other user error does.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Make ``hydra.run.dir``, or stop with one line naming it."""
        make_dir_or_exit(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Make ``hydra.sweep.dir``, or stop with one line naming it."""
        make_dir_or_exit(config.hydra.sweep.dir, "hydra.sweep.dir")


def make_dir_or_exit(path: str, key: str) -> None:
    """Create the folder ``path`` (and its parents), or print ``Error: <key>: ...`` and exit with status 2."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(
            f"Error: {key}: cannot create {path} ({err.strerror}); set it to a folder that can be written",
            file=sys.stderr,
        )
        sys.exit(2)


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


def resolve_ckpt_path(cfg: DictConfig, out: Path, networks: tuple[str, ...]) -> Path | None:
    """The checkpoint to resume from, checked to be a Lightning checkpoint of this task.

    ``ckpt_path=last``: this run directory's last checkpoint; ``auto``: the newest checkpoint of
    this directory if there is one, else a fresh start (for jobs that a cluster requeues with
    the same command); anything else: a path.

    Args:
        cfg: The run's config.
        out: The run directory.
        networks: Attribute names of the task's trained networks (``student``, ``generator``):
            a checkpoint of this task holds weights under each.

    Raises:
        ConfigError: There is no such checkpoint, or the file is not one of this task.
    """
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    if value == "auto":
        path = latest_checkpoint(out)
        return None if path is None else check_resumable(path, networks)
    path = latest_checkpoint(out) if value == "last" else Path(str(value)).expanduser()
    if path is None:
        raise ConfigError("ckpt_path", f"no checkpoint to resume in {out / LAST_CHECKPOINT.parent}")
    if not path.is_file():
        raise ConfigError("ckpt_path", f"no checkpoint at {path}")
    return check_resumable(path, networks)


def check_resumable(path: Path, networks: tuple[str, ...]) -> Path:
    """Return ``path`` if it is a full Lightning checkpoint of a task training ``networks``.

    Read only, before anything is written: a file that is not a checkpoint (or is cut short), a
    network's bare weights, a weights-only checkpoint or another task's are refused.

    Raises:
        ConfigError: Naming ``ckpt_path`` and what the file is.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle, zip and EOF errors alike: not a readable checkpoint
        raise ConfigError("ckpt_path", f"{path} is not a readable PyTorch checkpoint ({type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        raise ConfigError(
            "ckpt_path",
            f"{path} is not a Lightning checkpoint (bare weights?); resume from a run's checkpoints/last.ckpt",
        )
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise ConfigError("ckpt_path", f"{path} holds weights only (no optimizer or loop state): it cannot be resumed")
    keys = checkpoint["state_dict"]
    missing = [n for n in networks if not any(str(k).startswith(f"{n}.") for k in keys)]
    if missing:
        raise ConfigError(
            "ckpt_path",
            f"{path} is a checkpoint of another task: it has no weights for {', '.join(missing)} "
            f"(this task trains {', '.join(networks)})",
        )
    return path


def fit_resumable(
    trainer: Trainer, module: LightningModule, datamodule: LightningDataModule, ckpt_path: Path | None, out: Path
) -> None:
    """``trainer.fit``, turning a stop by SIGTERM or SIGINT into :class:`RunInterrupted`.

    Raises:
        RunInterrupted: The run saved its last checkpoint and stopped; it can be resumed.
        ConfigError: The checkpoint's weights do not fit this run's networks and options.
    """
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise RunInterrupted(
            f"stopped by a signal after saving {out / LAST_CHECKPOINT}. Resume with: "
            f"python train.py hydra.run.dir={out} ckpt_path=last (and the same overrides)"
        ) from None
    except RuntimeError as err:  # torch's load_state_dict: another architecture, width or stabiliser
        if ckpt_path is None or "Error(s) in loading state_dict" not in str(err):
            raise
        lines = str(err).splitlines()  # "Error(s) in loading state_dict for DFAD:", then one line per problem
        first = lines[min(1, len(lines) - 1)].strip()[:200]
        raise ConfigError(
            "ckpt_path",
            f"{ckpt_path} was saved by a run with other networks or options ({first}); "
            f"resume with the options it was started with{started_with(ckpt_path)}",
        ) from None


def started_with(checkpoint: Path) -> str:
    """``": <overrides>"`` as the run that wrote ``checkpoint`` recorded them, or ``""`` if it did not."""
    for run_dir in (checkpoint.parent, checkpoint.parent.parent):  # checkpoints/last.ckpt or hpc_ckpt_N.ckpt
        record = run_dir / ".hydra" / "overrides.yaml"
        if record.is_file():
            overrides = [str(o) for o in OmegaConf.load(record)]
            return f": {' '.join(overrides)}" if overrides else " (no overrides)"
    return ""
