"""The methods' LightningModules (Latte, AAPT's three stages) on one base (VideoModule: EMA, NaN guard)."""

from lightning_modules.aapt import AAPTAdapt, AAPTDistill, AAPTGan
from lightning_modules.base import VideoModule
from lightning_modules.latte_diffusion import LatteDiffusion

__all__ = ["AAPTAdapt", "AAPTDistill", "AAPTGan", "LatteDiffusion", "VideoModule"]
