"""The methods' LightningModules, on one base (VideoModule: EMA, NaN guard, RNG, checkpoints)."""

from lightning_modules.apla import APLAFinetune, HyperLoss
from lightning_modules.base import VideoModule
from lightning_modules.latte_diffusion import LatteDiffusion

__all__ = ["APLAFinetune", "HyperLoss", "LatteDiffusion", "VideoModule"]
