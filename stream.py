"""Stream an AAPT generator into an mp4, one forward per frame: ``python stream.py ckpt_path=<ckpt>``."""

import sys

import hydra
from omegaconf import DictConfig

from utils.config import register_resolvers
from utils.lifecycle import run_logging
from utils.stream import stream

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="stream")
def main(cfg: DictConfig) -> None:
    with run_logging():  # the run log gets what the console shows; config mistakes read as one line
        stream(cfg, stdin=sys.stdin)


if __name__ == "__main__":
    main()
