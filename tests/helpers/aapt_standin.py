"""A stand-in for AAPTGan's interface (backbone, ema, diffusion, autoencoder) and its checkpoint."""

from pathlib import Path

import torch
from torch import nn

from backbones import IdentityAutoencoder, Latte
from diffusion import FlowMatching
from lightning_modules import VideoModule


class StandInAAPT(VideoModule):
    """What stream.py and evaluate.py rely on of AAPTGan: a causal Latte generator, its EMA, flow matching."""

    def __init__(self, backbone: nn.Module, diffusion: FlowMatching, autoencoder: nn.Module):
        super().__init__(ema_decay=0.9)
        self.backbone, self.diffusion, self.autoencoder = backbone, diffusion, autoencoder
        self.add_ema("backbone")


def generator_config(size: int = 8, channels: int = 3, num_classes: int = 0, window: int = 3) -> dict:
    """A tiny causal rope Latte over [noise, previous frame] on channels, in Hydra form."""
    return {
        "_target_": "backbones.Latte",
        "size": "tiny",
        "patch_size": 4,
        "input_size": size,
        "in_channels": 2 * channels,
        "out_channels": channels,
        "learn_sigma": False,
        "num_frames": 4,
        "num_classes": num_classes,
        "temporal_mask": "causal",
        "temporal_pos": "rope",
        "window": window,
        "sink_frames": 1,
    }


def standin_config(size: int = 8, num_classes: int = 0, data_classes: int | None = None) -> dict:
    """The stored run config of a stand-in checkpoint: its module and its (synthetic, pixel) data."""
    module = {
        "_target_": "tests.helpers.aapt_standin.StandInAAPT",
        "backbone": generator_config(size, 3, num_classes),
        "diffusion": {"_target_": "diffusion.FlowMatching"},
        "autoencoder": {"_target_": "backbones.IdentityAutoencoder", "latent_channels": 3, "downsample": 1},
    }
    data = {
        "_target_": "datamodules.VideoDataModule",
        "dataset": {"_target_": "datamodules.SyntheticVideos", "_partial_": True, "num_videos": 8, "seed": 0},
        "num_frames": 4,
        "resolution": size,
        "num_classes": num_classes if data_classes is None else data_classes,
        "batch_size": 2,
        "num_workers": 0,
        "pin_memory": False,
    }
    return {"module": module, "data": data, "seed": 0}


def perturbed(module: StandInAAPT, seed: int = 0) -> StandInAAPT:
    """The module with its zero-initialised weights (adaLN-Zero, output layer) made random, EMA = live."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.backbone.parameters():
            if param.requires_grad and not param.any():
                param.normal_(std=0.05)
    module.reset_ema()
    return module.eval()


def save_standin(
    path: Path, size: int = 8, num_classes: int = 0, data_classes: int | None = None
) -> StandInAAPT:
    """Write a Lightning-style checkpoint of a stand-in (load_module reads it) and return the module."""
    from hydra.utils import instantiate

    config = standin_config(size, num_classes, data_classes)
    module = perturbed(instantiate(config["module"]))
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("autoencoder.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)
    return module


def tiny_standin(size: int = 8, num_classes: int = 0) -> StandInAAPT:
    """A stand-in built directly (no checkpoint): identity autoencoder, pixels 3 x size x size."""
    generator = Latte(**{k: v for k, v in generator_config(size, 3, num_classes).items() if k != "_target_"})
    return perturbed(StandInAAPT(generator, FlowMatching(), IdentityAutoencoder(3, 1)))
