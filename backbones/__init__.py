"""The shared network package: shared layers, Latte (+ causal streaming), its pretrained weights, VAEs."""

from backbones.autoencoders import DiffusersAutoencoderKL, IdentityAutoencoder
from backbones.latte import LATTE_SIZES, Latte, LatteCache
from backbones.pretrained import init_from_dit, load_official_latte

__all__ = [
    "LATTE_SIZES",
    "DiffusersAutoencoderKL",
    "IdentityAutoencoder",
    "Latte",
    "LatteCache",
    "init_from_dit",
    "load_official_latte",
]
