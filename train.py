"""Train a video diffusion model: ``python train.py`` runs the quickstart; see README for recipes."""

import hydra
from omegaconf import DictConfig

from utils.config import register_resolvers
from utils.lifecycle import run_logging
from utils.run import train

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Fit, and return the metric a sweeper optimises (``optimized_metric``), if any."""
    with run_logging():  # the run log gets what the console shows; config mistakes read as one line
        metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "")


if __name__ == "__main__":
    main()
