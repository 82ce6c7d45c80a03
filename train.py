"""Train with Hydra: ``python train.py [group=option ...] [key=value ...]``; ``--help`` lists the groups."""

import hydra
from omegaconf import DictConfig

from dfad_lightning.tasks import main as run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run the configured task (``task=distill`` by default) in the Hydra run directory."""
    return run_task(cfg)


if __name__ == "__main__":
    main()
