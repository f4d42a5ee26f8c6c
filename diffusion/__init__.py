"""Gaussian diffusion (schedule, losses, respacing, samplers) and the noise priors every method shares."""

from diffusion.gaussian import (
    GaussianDiffusion,
    Sampler,
    discretized_gaussian_log_likelihood,
    normal_kl,
    space_timesteps,
)
from diffusion.noise_priors import IIDNoise, MixedNoise, ProgressiveNoise

__all__ = [
    "GaussianDiffusion",
    "IIDNoise",
    "MixedNoise",
    "ProgressiveNoise",
    "Sampler",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "space_timesteps",
]
