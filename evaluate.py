"""FVD/FID/KID/IS: ``python evaluate.py ckpt_path=<ckpt or official .pt>`` or ``videos_dir=<folder>``."""

import hydra
from omegaconf import DictConfig

from metrics.evaluation import evaluate
from utils.config import register_resolvers
from utils.distributed import leave_torchrun

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)
    leave_torchrun()  # under torchrun: after a failure torchrun ends the other ranks


if __name__ == "__main__":
    main()
