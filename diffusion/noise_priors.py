"""Noise priors: the distribution of the Gaussian noise a video diffusion model is trained and sampled with.

A prior is a callable ``prior(shape, generator=None, device=None, dtype=None) -> Tensor`` that returns
noise of ``shape = (b, f, c, h, w)``. Every method uses one for the training noise, the initial sampling
noise and the noise each stochastic sampling step injects, so swapping the prior (``noise_prior=...``)
changes all three.
"""

import torch

Shape = tuple[int, ...] | torch.Size


def _check_video_shape(shape: Shape) -> None:
    """Assert that ``shape`` is a ``b f c h w`` video shape."""
    assert len(shape) == 5, f"noise priors draw video noise of shape (b, f, c, h, w), got {tuple(shape)}"


class IIDNoise:
    """Independent standard normal noise for every frame, channel and pixel (the usual diffusion prior)."""

    def __call__(self, shape: Shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        _check_video_shape(shape)
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)

    def __repr__(self) -> str:
        return "IIDNoise()"
