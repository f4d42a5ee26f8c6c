"""Shared fixtures: compose the real Hydra config, shrunk to a seconds-long CPU run inside ``tmp_path``."""

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from utils.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")  # tests never reach the network
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)
register_resolvers()

# A few-second training run of the quickstart model: 4 frames of 16x16 pixels.
TINY = [
    "data.num_frames=4",
    "data.resolution=16",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.dataset.num_videos=32",
    "backbone.patch_size=4",
    "sampler.num_steps=4",
    "trainer.max_steps=4",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.video_sampler.every_n_steps=2",
    "callbacks.video_sampler.num_videos=2",
    "logger=csv",
]


def compose_train(tmp_path: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """The real config ``conf/<config_name>.yaml`` with ``overrides``, writing under ``tmp_path``."""
    GlobalHydra.instance().clear()
    paths = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=[*paths, *overrides], return_hydra_config=False)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that shrink ``python train.py`` to a few CPU seconds."""
    return list(TINY)


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests of many calls on a few tokens, where a second thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
