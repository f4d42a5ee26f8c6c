"""The methods' LightningModules (Latte, APLA, AAPT's three stages) on one base (VideoModule)."""

from lightning_modules.aapt import AAPTAdapt, AAPTDistill, AAPTGan
from lightning_modules.apla import APLAFinetune, HyperLoss
from lightning_modules.base import VideoModule
from lightning_modules.latte_diffusion import LatteDiffusion

__all__ = [
    "AAPTAdapt",
    "AAPTDistill",
    "AAPTGan",
    "APLAFinetune",
    "HyperLoss",
    "LatteDiffusion",
    "VideoModule",
]
