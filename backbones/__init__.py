"""The shared network package: layers, Latte (+ causal streaming), discriminators, pretrained weights, VAE."""

from backbones.autoencoders import DiffusersAutoencoderKL, IdentityAutoencoder
from backbones.discriminators import FrameDiscriminator
from backbones.latte import LATTE_SIZES, Latte, LatteCache
from backbones.pretrained import fit_latte_weights, init_from_dit, load_official_latte

__all__ = [
    "LATTE_SIZES",
    "DiffusersAutoencoderKL",
    "FrameDiscriminator",
    "IdentityAutoencoder",
    "Latte",
    "LatteCache",
    "fit_latte_weights",
    "init_from_dit",
    "load_official_latte",
]
