"""Gaussian diffusion over video latents ``b f c h w``: schedule, losses, DDPM/DDIM samplers and CFG.

The semantics are those of IDDPM/DiT as used by Latte (written here from the papers and the facts of the
official Latte code's ``diffusion/`` package, DiT's with the channel axis moved to dim 2): epsilon prediction,
a learned-range variance (LEARNED_RANGE) when the model outputs ``2c`` channels, the loss MSE(eps) + VLB
(bits, with eps detached), and timestep respacing that maps each respaced index back to its original timestep
before calling the model. The channel axis is dim 2 because videos are ``b f c h w`` (frames before channels).

A ``model`` is any callable ``model(x, t, **model_kwargs)`` taking ``x`` of shape ``b f c h w`` and ``t`` a
LongTensor ``(b,)`` of original timesteps, and returning ``b f c_out h w`` with ``c_out = 2c`` (eps, then
variance values) when ``learn_sigma`` and ``c_out = c`` (eps) otherwise.
"""

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

Model = Callable[..., torch.Tensor]
NoisePrior = Callable[..., torch.Tensor]
Respacing = str | int | Sequence[int] | None


#################################################################################
#                          Gaussian Math Helpers                                #
#################################################################################


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def _draw_noise(
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


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    tensor = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor))
    logvar1, logvar2 = (
        torch.as_tensor(v, dtype=tensor.dtype, device=tensor.device) for v in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF by the tanh approximation (the one IDDPM's decoder likelihood uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Elementwise log-probability (nats) of ``x`` in [-1, 1] under N(means, exp(log_scales)^2) in 256 bins.

    Each value owns a bin of width 2/255 centred on it; the two edge bins extend to -inf and +inf.
    """
    assert x.shape == means.shape == log_scales.shape, "x, means and log_scales must have the same shape"
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


#################################################################################
#                          Schedules and Respacing                              #
#################################################################################


def get_beta_schedule(
    beta_schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Betas (float64, length ``num_timesteps``) of a named schedule: "linear" or "squaredcos_cap_v2"."""
    if beta_schedule == "linear":
        scale = 1000.0 / num_timesteps  # keeps the schedule's shape when T != 1000
        return np.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=np.float64)
    if beta_schedule == "squaredcos_cap_v2":
        alpha_bar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        steps = range(num_timesteps)
        betas = [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999) for i in steps
        ]
        return np.array(betas, dtype=np.float64)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected 'linear' or 'squaredcos_cap_v2'")


def space_timesteps(num_timesteps: int, section_counts: Respacing) -> list[int]:
    """Sorted timesteps of a ``num_timesteps`` process kept by a respacing.

    ``""``/``None`` keeps all. ``"250"`` or ``"10,15,20"`` cuts the process into equal sections and keeps that
    many evenly spaced steps in each (first and last step of the section included, ``round(k * stride)`` with
    the stride summed in floating point as IDDPM does, which decides its ties).
    ``"ddimN"`` keeps ``range(0, T, stride)`` for the integer stride giving exactly N steps.
    """
    if section_counts is None or section_counts == "":
        return list(range(num_timesteps))
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"timestep_respacing {section_counts!r}: no integer stride gives {desired} of {num_timesteps}"
        )
    if isinstance(section_counts, int):
        counts = [section_counts]
    elif isinstance(section_counts, str):
        counts = [int(c) for c in section_counts.split(",")]
    else:
        counts = [int(c) for c in section_counts]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 0 < count <= size:
            raise ValueError(
                f"timestep_respacing {section_counts!r}: cannot keep {count} of a section of {size}"
            )
        stride, position = ((size - 1) / (count - 1) if count > 1 else 1.0), 0.0
        for _ in range(count):  # a running float sum, as IDDPM's space_timesteps: its ties round as Latte's
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


#################################################################################
#                            Gaussian Diffusion                                 #
#################################################################################


class GaussianDiffusion:
    """Epsilon-prediction Gaussian diffusion on ``b f c h w`` latents, optionally respaced to fewer steps."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        learn_sigma: bool = True,
        timestep_respacing: Respacing = "",
    ):
        assert num_timesteps >= 2, "num_timesteps must be at least 2"
        self.base_num_timesteps = num_timesteps
        self.beta_schedule = beta_schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.learn_sigma = learn_sigma
        self.timestep_respacing = timestep_respacing

        base_betas = get_beta_schedule(beta_schedule, num_timesteps, beta_start, beta_end)
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        kept = space_timesteps(num_timesteps, timestep_respacing)
        assert len(kept) >= 2, "a diffusion needs at least 2 steps (the t=0 log-variance borrows index 1)"
        alphas_cumprod = base_alphas_cumprod[kept]
        betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])  # beta'_i from the kept abar
        self.num_timesteps = len(kept)
        self.timestep_map = torch.tensor(kept, dtype=torch.long)  # respaced index -> original timestep

        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        schedule = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            # posterior_variance[0] is 0, so its log takes index 1's value
            "posterior_log_variance_clipped": np.log(
                np.append(posterior_variance[1], posterior_variance[1:])
            ),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * np.sqrt(1.0 - betas)
            / (1.0 - alphas_cumprod),
            "log_betas": np.log(betas),
            "fixed_large_variance": np.append(posterior_variance[1], betas[1:]),
        }
        for name, values in schedule.items():
            setattr(self, name, torch.from_numpy(values))  # float64, CPU; cast per call by _extract

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion({self.beta_schedule}, T={self.base_num_timesteps}, "
            f"steps={self.num_timesteps}, learn_sigma={self.learn_sigma})"
        )

    def respace(self, section_counts: Respacing) -> "GaussianDiffusion":
        """A new diffusion over the same base schedule keeping the steps of ``section_counts``."""
        return GaussianDiffusion(
            num_timesteps=self.base_num_timesteps,
            beta_schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            learn_sigma=self.learn_sigma,
            timestep_respacing=section_counts,
        )

    @staticmethod
    def _extract(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gather float64 schedule ``values`` at indices ``t`` as ``(b, 1, 1, 1, 1)`` in x's dtype/device."""
        assert x.ndim == 5, f"diffusion tensors are videos of shape (b, f, c, h, w), got {tuple(x.shape)}"
        out = values.to(x.device)[t.to(x.device)].to(x.dtype)
        return out.view(-1, 1, 1, 1, 1)

    def _model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original timesteps for respaced indices ``t`` (what the model is conditioned on; no rescaling)."""
        return self.timestep_map.to(t.device)[t]

    #################################################################################
    #                          Forward Process q                                    #
    #################################################################################

    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
        variance = self._extract(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        log_variance = self._extract(self.log_one_minus_alphas_cumprod, t, x0).expand_as(x0)
        return mean, variance, log_variance

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        assert noise.shape == x0.shape, "noise must have the shape of x0"
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0)."""
        assert x0.shape == x_t.shape, "x0 and x_t must have the same shape"
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._extract(self.posterior_variance, t, x_t).expand_as(x_t)
        log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    #################################################################################
    #                          Reverse Process p                                    #
    #################################################################################

    def _output_to_distribution(
        self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False
    ) -> dict[str, torch.Tensor]:
        """Turn a raw model output at (x, t) into p(x_{t-1} | x_t): mean, variance, x0 and eps predictions."""
        b, f, c = x.shape[:3]
        if self.learn_sigma:
            expected = (b, f, 2 * c, *x.shape[3:])
            assert model_output.shape == expected, (
                f"learn_sigma=True needs a model output of eps then variance (b, f, 2c, h, w) = {expected}, "
                f"got {tuple(model_output.shape)}"
            )
            eps, v = model_output.split(c, dim=2)  # (b, f, c, h, w) each
            min_log = self._extract(self.posterior_log_variance_clipped, t, x)
            max_log = self._extract(self.log_betas, t, x)
            frac = (v + 1) / 2  # v in [-1, 1] interpolates between beta_tilde_t and beta_t (log space)
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            assert model_output.shape == x.shape, (
                f"learn_sigma=False needs the model to output eps of the input's shape {tuple(x.shape)}, "
                f"got {tuple(model_output.shape)}"
            )
            eps = model_output
            variance = self._extract(self.fixed_large_variance, t, x).expand_as(x)
            log_variance = torch.log(variance)
        pred_xstart = (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x) * x
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x) * eps
        )
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
            eps = (self._extract(self.sqrt_recip_alphas_cumprod, t, x) * x - pred_xstart) / self._extract(
                self.sqrt_recipm1_alphas_cumprod, t, x
            )
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def p_mean_variance(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run the model at respaced indices ``t`` and return p(x_{t-1} | x_t) (mean, variance, ...)."""
        model_output = model(x, self._model_timesteps(t), **(model_kwargs or {}))
        return self._output_to_distribution(model_output, x, t, clip_denoised)

    #################################################################################
    #                               Training Loss                                   #
    #################################################################################

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample ``loss = mse + vb`` (shape (b,)): MSE on eps plus the VLB in bits with eps detached."""
        if noise is None:
            noise = _draw_noise(x0.shape, noise_prior, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, self._model_timesteps(t), **(model_kwargs or {}))
        c = x0.shape[2]
        eps = model_output[:, :, :c]  # (b, f, c, h, w)
        mse = mean_flat((noise - eps) ** 2)
        if not self.learn_sigma:
            vb = torch.zeros_like(mse)
            return {"loss": mse, "mse": mse, "vb": vb}
        # important! The VLB only trains the variance channels: eps is detached here.
        frozen_output = torch.cat([eps.detach(), model_output[:, :, c:]], dim=2)
        vb = self._vb_terms_bpd(frozen_output, x0, x_t, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def _vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample VLB term in bits: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or decoder NLL at t=0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self._output_to_distribution(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / math.log(2.0)
        log_likelihood = discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        decoder_nll = -mean_flat(log_likelihood) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, decoder_nll, kl)

    #################################################################################
    #                                  Samplers                                     #
    #################################################################################

    def p_sample(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step: x_{t-1} = mean + 1[t != 0] exp(log_var / 2) z, z from the noise prior."""
        p = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised)
        z = _draw_noise(x.shape, noise_prior, generator, x.device, x.dtype)
        nonzero = (t != 0).to(x.dtype).view(-1, 1, 1, 1, 1)  # no noise on the last step
        sample = p["mean"] + nonzero * torch.exp(0.5 * p["log_variance"]) * z
        return {"sample": sample, "pred_xstart": p["pred_xstart"]}

    def ddim_sample(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step from index t to t-1 of this grid, using only the model's eps (eta=0: no noise)."""
        p = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised)
        alpha_bar = self._extract(self.alphas_cumprod, t, x)
        alpha_bar_prev = self._extract(self.alphas_cumprod_prev, t, x)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        sample = (
            p["pred_xstart"] * torch.sqrt(alpha_bar_prev)
            + torch.sqrt(1 - alpha_bar_prev - sigma**2) * p["eps"]
        )
        if eta > 0:
            z = _draw_noise(x.shape, noise_prior, generator, x.device, x.dtype)
            nonzero = (t != 0).to(x.dtype).view(-1, 1, 1, 1, 1)
            sample = sample + nonzero * sigma * z
        return {"sample": sample, "pred_xstart": p["pred_xstart"]}

    def _sample_loop(
        self,
        step: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
        shape: Sequence[int],
        noise: torch.Tensor | None,
        noise_prior: NoisePrior | None,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        progress: bool,
    ) -> torch.Tensor:
        """Run ``step(x, t)`` from index T'-1 down to 0 starting at ``noise`` (or a draw from the prior)."""
        shape = tuple(shape)
        assert len(shape) == 5, f"samplers generate videos of shape (b, f, c, h, w), got {shape}"
        if noise is None:
            x = _draw_noise(shape, noise_prior, generator, device, torch.float32)
        else:
            assert tuple(noise.shape) == shape, (
                f"initial noise has shape {tuple(noise.shape)}, expected {shape}"
            )
            x = noise.to(device) if device is not None else noise
        indices = range(self.num_timesteps - 1, -1, -1)
        for i in tqdm(indices, disable=not progress, desc="sampling"):
            t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
            with torch.no_grad():
                x = step(x, t)["sample"]
        return x

    def p_sample_loop(
        self,
        model: Model,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
        model_kwargs: dict | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """Ancestral DDPM sampling over this diffusion's (respaced) grid; returns ``b f c h w`` samples."""
        step = lambda x, t: self.p_sample(model, x, t, model_kwargs, noise_prior, generator, clip_denoised)
        return self._sample_loop(step, shape, noise, noise_prior, generator, device, progress)

    def ddim_sample_loop(
        self,
        model: Model,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
        model_kwargs: dict | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """DDIM sampling over this diffusion's (respaced) grid; returns ``b f c h w`` samples."""
        step = lambda x, t: self.ddim_sample(
            model, x, t, model_kwargs, noise_prior, generator, eta, clip_denoised
        )
        return self._sample_loop(step, shape, noise, noise_prior, generator, device, progress)


#################################################################################
#                        Classifier-Free Guidance                               #
#################################################################################


def classifier_free_guidance(model: Model, cfg_scale: float, null_class: int) -> Model:
    """Wrap ``model`` so that its eps channels are guided: eps = uncond + cfg_scale * (cond - uncond).

    The guided model runs ``model`` once on ``cat([x, x])`` with ``y = cat([y, null_class])``. All ``c`` eps
    channels are guided; the learned-variance channels (if any) are the conditional half's. Other model
    kwargs are passed through unchanged. With ``cfg_scale == 1`` or ``y=None`` it is the plain model.
    """

    def guided(
        x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **model_kwargs
    ) -> torch.Tensor:
        if y is None or cfg_scale == 1:
            return model(x, t, **model_kwargs) if y is None else model(x, t, y=y, **model_kwargs)
        c = x.shape[2]
        y_null = torch.full_like(y, null_class)
        out = model(
            torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, y_null]), **model_kwargs
        )  # (2b, f, c_out, h, w)
        cond, uncond = out.chunk(2, dim=0)  # (b, f, c_out, h, w) each
        eps = uncond[:, :, :c] + cfg_scale * (cond[:, :, :c] - uncond[:, :, :c])  # (b, f, c, h, w)
        return torch.cat([eps, cond[:, :, c:]], dim=2)  # (b, f, c_out, h, w)

    return guided


#################################################################################
#                                   Sampler                                     #
#################################################################################


class Sampler:
    """A configured sampling recipe (DDPM or DDIM, step count, eta, CFG scale) run on any diffusion."""

    METHODS = ("ddpm", "ddim")

    def __init__(
        self,
        method: str = "ddpm",
        num_steps: int | str = 250,
        eta: float = 0.0,
        cfg_scale: float = 1.0,
        progress: bool = False,
    ):
        if method not in self.METHODS:
            raise ValueError(f"sampler method {method!r} is unknown; expected one of {self.METHODS}")
        valid_int = isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps > 0
        valid_str = isinstance(num_steps, str) and re.fullmatch(r"ddim\d+|\d+(,\d+)*", num_steps) is not None
        if not (valid_int or valid_str):
            raise ValueError(
                f"sampler num_steps must be a positive int or a respacing ('250', 'ddim50'): {num_steps!r}"
            )
        if eta < 0:
            raise ValueError(f"sampler eta must be >= 0, got {eta}")
        if method == "ddpm" and eta != 0:
            raise ValueError(f"sampler eta={eta} is only used by method='ddim'; set eta=0 for method='ddpm'")
        self.method = method
        self.num_steps = num_steps
        self.eta = float(eta)
        self.cfg_scale = float(cfg_scale)
        self.progress = progress

    @property
    def name(self) -> str:
        """Short tag for metric names, e.g. "ddpm250" or "ddim50-eta0.0-cfg7.0"."""
        steps = str(self.num_steps).replace(",", "_")
        if steps.startswith("ddim"):
            steps = steps[len("ddim") :] + "stride"
        name = f"{self.method}{steps}"
        if self.method == "ddim":
            name += f"-eta{self.eta}"
        if self.cfg_scale != 1:
            name += f"-cfg{self.cfg_scale}"
        return name

    def __repr__(self) -> str:
        return (
            f"Sampler(method={self.method!r}, num_steps={self.num_steps!r}, eta={self.eta}, "
            f"cfg_scale={self.cfg_scale}, progress={self.progress})"
        )

    def __call__(
        self,
        model: Model,
        diffusion: GaussianDiffusion,
        shape: Sequence[int],
        *,
        y: torch.Tensor | None = None,
        null_class: int | None = None,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample ``b f c h w`` latents with ``model`` on ``diffusion`` respaced to ``num_steps``."""
        assert len(shape) == 5, f"samplers generate videos of shape (b, f, c, h, w), got {tuple(shape)}"
        spaced = diffusion.respace(str(self.num_steps))
        model_kwargs = {} if y is None else {"y": y}
        if y is not None and self.cfg_scale != 1:
            if null_class is None:
                raise ValueError(
                    "null_class is required for classifier-free guidance (cfg_scale != 1 with labels y)"
                )
            model = classifier_free_guidance(model, self.cfg_scale, null_class)
        kwargs = dict(
            noise=noise,
            noise_prior=noise_prior,
            generator=generator,
            model_kwargs=model_kwargs,
            device=device,
            progress=self.progress,
        )
        if self.method == "ddim":
            return spaced.ddim_sample_loop(model, shape, eta=self.eta, **kwargs)
        return spaced.p_sample_loop(model, shape, **kwargs)
