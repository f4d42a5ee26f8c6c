"""PYoCo noise priors: unit variance per frame, the promised correlation across frames, iid elsewhere."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusion.noise_priors import IIDNoise, MixedNoise, ProgressiveNoise
from tests.conftest import CONF_DIR

SHAPE = (256, 6, 4, 64, 64)  # 4.2M samples per frame: correlation standard error ~3e-4 per frame pair


def _frame_matrix(noise: torch.Tensor) -> torch.Tensor:
    """(f, samples) view: every pixel, channel and video is one sample of the f-dimensional frame vector."""
    return noise.double().transpose(0, 1).reshape(noise.shape[1], -1)


def _corr(noise: torch.Tensor) -> torch.Tensor:
    """Empirical (f, f) correlation matrix across frames."""
    return torch.corrcoef(_frame_matrix(noise))


def _lag_mean(corr: torch.Tensor, lag: int) -> float:
    """Mean of the correlations of all frame pairs ``lag`` apart."""
    return float(torch.diagonal(corr, offset=lag).mean())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_mixed_prior_correlates_every_frame_pair_by_alpha2_over_1_plus_alpha2(alpha):
    noise = MixedNoise(alpha)(SHAPE, generator=torch.Generator().manual_seed(0))
    variance = _frame_matrix(noise).var(dim=1)
    assert torch.allclose(variance, torch.ones_like(variance), atol=3e-3), variance
    corr, expected = _corr(noise), alpha**2 / (1 + alpha**2)
    for lag in range(1, SHAPE[1]):
        assert abs(_lag_mean(corr, lag) - expected) < 1e-3, (lag, _lag_mean(corr, lag), expected)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_progressive_prior_correlates_by_r_to_the_lag(alpha):
    noise = ProgressiveNoise(alpha)(SHAPE, generator=torch.Generator().manual_seed(1))
    variance = _frame_matrix(noise).var(dim=1)
    assert torch.allclose(variance, torch.ones_like(variance), atol=3e-3), variance
    corr, r = _corr(noise), alpha / math.sqrt(1 + alpha**2)
    for lag in range(1, SHAPE[1]):
        assert abs(_lag_mean(corr, lag) - r**lag) < 1e-3, (lag, _lag_mean(corr, lag), r**lag)


@pytest.mark.parametrize("prior", [IIDNoise(), MixedNoise(1.0), ProgressiveNoise(2.0)], ids=repr)
def test_priors_are_iid_across_pixels_and_channels(prior):
    noise = prior(SHAPE, generator=torch.Generator().manual_seed(2)).double()
    x = noise[:, :, 0, :, :-1].flatten()
    right = noise[:, :, 0, :, 1:].flatten()  # horizontal neighbour
    other_channel = noise[:, :, 1, :, :-1].flatten()
    assert abs(float(torch.corrcoef(torch.stack([x, right]))[0, 1])) < 2e-3
    assert abs(float(torch.corrcoef(torch.stack([x, other_channel]))[0, 1])) < 2e-3


def test_iid_prior_has_no_frame_correlation():
    corr = _corr(IIDNoise()(SHAPE, generator=torch.Generator().manual_seed(3)))
    off_diagonal = corr - torch.eye(SHAPE[1], dtype=corr.dtype)
    assert off_diagonal.abs().max() < 2e-3


@pytest.mark.parametrize("prior", [MixedNoise(1.0), ProgressiveNoise(2.0)], ids=repr)
def test_single_frame_and_alpha_zero_reduce_to_iid(prior):
    image = prior((2, 1, 3, 8, 8), generator=torch.Generator().manual_seed(4))
    iid = torch.randn((2, 1, 3, 8, 8), generator=torch.Generator().manual_seed(4))
    assert image.shape == (2, 1, 3, 8, 8)
    if isinstance(prior, ProgressiveNoise):
        assert torch.equal(image, iid), "a single frame of the AR(1) is its first innovation, N(0, I)"
    zero = type(prior)(0.0)(SHAPE, generator=torch.Generator().manual_seed(5))
    assert _corr(zero).sub(torch.eye(SHAPE[1], dtype=torch.float64)).abs().max() < 2e-3


@pytest.mark.parametrize("name", ["iid", "mixed", "progressive"])
def test_configs_build_reproducible_priors(name):
    prior = instantiate(OmegaConf.load(CONF_DIR / "noise_prior" / f"{name}.yaml"))
    a = prior((2, 4, 3, 8, 8), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    b = prior((2, 4, 3, 8, 8), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.equal(a, b) and a.dtype == torch.float64
    with pytest.raises(AssertionError, match="b, f, c, h, w"):
        prior((2, 3, 8, 8))


def test_negative_alpha_is_rejected():
    with pytest.raises(ValueError, match="alpha"):
        MixedNoise(-1.0)
    with pytest.raises(ValueError, match="alpha"):
        ProgressiveNoise(-0.5)
