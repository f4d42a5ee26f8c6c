"""Sample videos from a checkpoint: ``python sample.py ckpt_path=<train.py ckpt or official Latte .pt>``."""

import hydra
from omegaconf import DictConfig

from utils.config import register_resolvers
from utils.lifecycle import run_logging
from utils.run import sample

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with run_logging():  # the run log gets what the console shows; config mistakes read as one line
        sample(cfg)


if __name__ == "__main__":
    main()
