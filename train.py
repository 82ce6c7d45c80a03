"""Train with Hydra: ``python train.py [group=option ...] [key=value ...]``; ``--help`` lists the groups."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run the configured task (``task=distill`` by default) in the Hydra run directory."""
    # Imported here, not at the top: ``--help``, ``--cfg job`` and ``-m ... --info`` then answer in
    # about a second instead of waiting seven for torch and Lightning to load.
    from dfad_lightning.allocator import keep_freed_memory
    from dfad_lightning.tasks import main as run_task

    keep_freed_memory()  # before the run allocates: freed activations are reused, not faulted in again
    return run_task(cfg)


if __name__ == "__main__":
    main()
