"""Sample videos from a checkpoint: ``python sample.py ckpt_path=<train.py ckpt or official Latte .pt>``."""

import hydra
from omegaconf import DictConfig

from utils.config import register_resolvers
from utils.run import sample

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
