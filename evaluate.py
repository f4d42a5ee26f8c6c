"""FVD/FID/KID/IS: ``python evaluate.py ckpt_path=<ckpt or official .pt>`` or ``videos_dir=<folder>``."""

import hydra
from omegaconf import DictConfig

from metrics.evaluation import evaluate
from utils.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
