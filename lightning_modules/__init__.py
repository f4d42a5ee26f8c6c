"""LightningModules of the framework's methods."""

from lightning_modules.latte_diffusion import LatteDiffusion

__all__ = ["LatteDiffusion"]
