"""The shared network package: Latte (and its official-checkpoint import) and the autoencoders."""

from backbones.autoencoders import DiffusersAutoencoderKL, IdentityAutoencoder
from backbones.latte import LATTE_SIZES, Latte, load_official_latte

__all__ = ["LATTE_SIZES", "DiffusersAutoencoderKL", "IdentityAutoencoder", "Latte", "load_official_latte"]
