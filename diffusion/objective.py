"""The objective interface: what training modules and samplers need from Gaussian diffusion or flow matching.

An objective fixes how clean latents ``x0`` (``b f c h w``) are noised to ``x_t`` at a time ``t``, what the
model predicts there, its training loss, and how to step from one time to any earlier one. Times are the
objective's own: integer steps of a Gaussian diffusion, floats in [0, 1] for flow matching; ``t`` holds one
time per video ``(b,)`` (or one per frame ``(b, f)`` where a method says so). ``model_timesteps(t)`` is
what the backbone's timestep embedding receives. The noise is always given or drawn from a noise prior
(PYoCo, ``diffusion/noise_priors.py``), so the prior shapes training and sampling alike.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

Model = Callable[..., torch.Tensor]
NoisePrior = Callable[..., torch.Tensor]


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def draw_noise(
    shape: Sequence[int],
    noise_prior: NoisePrior | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Gaussian noise of ``shape`` from ``noise_prior``, or i.i.d. standard normal when it is None."""
    if noise_prior is None:
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return noise_prior(tuple(shape), generator=generator, device=device, dtype=dtype)


def per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Times ``(b,)`` or ``(b, f)`` as a tensor that broadcasts over ``x`` (b, f, c, h, w), in x's dtype."""
    assert x.ndim == 5, f"objective tensors are videos of shape (b, f, c, h, w), got {tuple(x.shape)}"
    assert t.shape == x.shape[: t.ndim] and t.ndim <= 2, (
        f"t must have shape (b,) or (b, f) = {tuple(x.shape[:2])} for x of shape {tuple(x.shape)}, "
        f"got {tuple(t.shape)}"
    )
    return t.to(device=x.device, dtype=x.dtype).view(*t.shape, *[1] * (x.ndim - t.ndim))


def check_jump(t: torch.Tensor, t_next: torch.Tensor, earliest: float) -> None:
    """Assert that a step jumps back from times ``t`` to ``t_next`` in [earliest, t] where that costs nothing,
    on CPU tensors. important! On a GPU the check would make the host wait for the GPU at every sampler or
    training step; the CPU tests run every caller."""
    if t.device.type == "cpu" and t_next.device.type == "cpu":
        assert bool((t_next <= t).all() and (t_next >= earliest).all()), (
            f"step jumps back in time to [{earliest}, t]: got t={t.tolist()}, t_next={t_next.tolist()}"
        )


class Objective(ABC):
    """A training objective and its reverse-time step, shared by every module and sampler."""

    learn_sigma: bool  # whether the model outputs variance channels after its c prediction channels

    @abstractmethod
    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Training times, one per sample: ``(batch,)``."""

    @abstractmethod
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the backbone is conditioned on at times ``t``."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noisy latents x_t of clean latents ``x0`` with ``noise`` at times ``t``."""

    @abstractmethod
    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample ``loss`` (b,), and the model's ``output``, its ``target`` and the ``x_t`` it saw."""

    @abstractmethod
    def to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean latents that ``model_output`` at (x_t, t) predicts."""

    @abstractmethod
    def step(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        model_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Jump from x_t at times ``t`` to an earlier time ``t_next`` (any, not only the next grid step)."""
