"""The run directory: what a run writes there, and the rule that no run overwrites another."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dfad_lightning.errors import ConfigError

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
    if (out / LAST_CHECKPOINT).exists() and cfg.get("ckpt_path") is None:
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


def resolve_ckpt_path(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint to resume from: ``ckpt_path=last`` means this run directory's last one.

    Raises:
        ConfigError: There is no such checkpoint.
    """
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    path = out / LAST_CHECKPOINT if value == "last" else Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt_path", f"no checkpoint at {path}")
    return path
