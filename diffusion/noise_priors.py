"""Noise priors: the distribution of the Gaussian noise a video diffusion model is trained and sampled with.

A prior is a callable ``prior(shape, generator=None, device=None, dtype=None) -> Tensor`` that returns
noise of ``shape = (b, f, c, h, w)``. Every method uses one for the training noise, the initial sampling
noise and the noise each stochastic sampling step injects, so swapping the prior (``noise_prior=...``)
changes all three.

PYoCo (Ge et al., ICCV 2023) correlates the noise across frames while every frame stays N(0, I) and
pixels and channels stay independent:

* mixed: eps^i = eps_shared + eps_ind^i, with Var(eps_shared) = a²/(1+a²) and Var(eps_ind^i) = 1/(1+a²),
  so any two frames correlate by a²/(1+a²);
* progressive: eps^0 ~ N(0, I), eps^i = r·eps^(i-1) + eps_ind^i with r = a/sqrt(1+a²), an AR(1) whose
  correlation at lag k is r^k.

a = 0 gives back the iid prior, and a single frame (an image) is always iid.
"""

import math

import torch

Shape = tuple[int, ...] | torch.Size


def _check_video_shape(shape: Shape) -> tuple[int, ...]:
    """Assert that ``shape`` is a ``b f c h w`` video shape and return it as a tuple."""
    assert len(shape) == 5, f"noise priors draw video noise of shape (b, f, c, h, w), got {tuple(shape)}"
    return tuple(shape)


class IIDNoise:
    """Independent standard normal noise for every frame, channel and pixel (the usual diffusion prior)."""

    def __call__(self, shape: Shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        return torch.randn(_check_video_shape(shape), generator=generator, device=device, dtype=dtype)

    def __repr__(self) -> str:
        return "IIDNoise()"


class MixedNoise:
    """PYoCo mixed prior: one draw shared by all frames plus an independent draw per frame."""

    def __init__(self, alpha: float = 1.0):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def __call__(self, shape: Shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        b, f, c, h, w = _check_video_shape(shape)
        a2 = self.alpha**2
        draw = dict(generator=generator, device=device, dtype=dtype)
        shared = torch.randn((b, 1, c, h, w), **draw)  # (b, 1, c, h, w): one draw for every frame
        own = torch.randn((b, f, c, h, w), **draw)  # (b, f, c, h, w): one draw per frame
        return math.sqrt(a2 / (1 + a2)) * shared + math.sqrt(1 / (1 + a2)) * own  # (b, f, c, h, w)

    def __repr__(self) -> str:
        return f"MixedNoise(alpha={self.alpha})"


class ProgressiveNoise:
    """PYoCo progressive prior: an AR(1) over frames, correlation (a/sqrt(1+a²))^k at lag k."""

    def __init__(self, alpha: float = 2.0):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def __call__(self, shape: Shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        b, f, c, h, w = _check_video_shape(shape)
        r = self.alpha / math.sqrt(1 + self.alpha**2)
        innovations = torch.randn((b, f, c, h, w), generator=generator, device=device, dtype=dtype)
        innovations[:, 1:] *= math.sqrt(1 - r**2)  # = 1/sqrt(1+a²): keeps every frame at unit variance
        frames = [innovations[:, 0]]
        for i in range(1, f):
            frames.append(r * frames[-1] + innovations[:, i])
        return torch.stack(frames, dim=1)  # (b, f, c, h, w)

    def __repr__(self) -> str:
        return f"ProgressiveNoise(alpha={self.alpha})"
