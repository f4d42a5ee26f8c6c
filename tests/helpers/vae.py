"""A tiny randomly initialised AutoencoderKL standing in for the SD VAE in tests."""

import torch
from diffusers import AutoencoderKL

TINY_SCALE = 0.5  # distinctive, so reading the scaling factor from the config is observable


def tiny_vae() -> AutoencoderKL:
    """A randomly initialised 2-level AutoencoderKL: 4 latent channels, downsample 2."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=TINY_SCALE,
    ).eval()
