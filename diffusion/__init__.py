"""Objectives (Gaussian diffusion, flow matching) behind one interface, their samplers, the noise priors."""

from diffusion.flow_matching import FlowMatching, shift_time
from diffusion.gaussian import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
    space_timesteps,
)
from diffusion.noise_priors import IIDNoise, MixedNoise, ProgressiveNoise
from diffusion.objective import Objective
from diffusion.sampling import (
    DPMSolverSampler,
    EulerSampler,
    InversionSampler,
    Sampler,
    SamplerBase,
    classifier_free_guidance,
)

__all__ = [
    "DPMSolverSampler",
    "EulerSampler",
    "FlowMatching",
    "GaussianDiffusion",
    "IIDNoise",
    "InversionSampler",
    "MixedNoise",
    "Objective",
    "ProgressiveNoise",
    "Sampler",
    "SamplerBase",
    "classifier_free_guidance",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "shift_time",
    "space_timesteps",
]
