"""The shared network package: shared layers, Latte, its pretrained weights, autoencoders."""

from backbones.autoencoders import DiffusersAutoencoderKL, IdentityAutoencoder
from backbones.latte import LATTE_SIZES, Latte
from backbones.pretrained import init_from_dit, load_official_latte

__all__ = [
    "LATTE_SIZES",
    "DiffusersAutoencoderKL",
    "IdentityAutoencoder",
    "Latte",
    "init_from_dit",
    "load_official_latte",
]
