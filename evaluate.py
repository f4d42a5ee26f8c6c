"""FVD/FID/KID/IS: ``python evaluate.py ckpt_path=<ckpt or official .pt>`` or ``videos_dir=<folder>``."""

import hydra
from omegaconf import DictConfig

from metrics.evaluation import evaluate
from utils.config import register_resolvers
from utils.distributed import leave_torchrun
from utils.lifecycle import run_logging

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with run_logging():  # the run log gets what the console shows; config mistakes read as one line
        evaluate(cfg)
    leave_torchrun()  # under torchrun: after a failure torchrun ends the other ranks


if __name__ == "__main__":
    main()
