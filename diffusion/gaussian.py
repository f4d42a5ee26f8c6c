"""Gaussian diffusion over video latents ``b f c h w``: schedule, losses, DDPM/DDIM steps and loops.

The semantics are those of IDDPM/DiT as used by Latte (written here from the papers and the facts of the
official Latte code's ``diffusion/`` package, DiT's with the channel axis moved to dim 2): epsilon prediction,
a learned-range variance (LEARNED_RANGE) when the model outputs ``2c`` channels, the loss MSE(eps) + VLB
(bits, with eps detached), and timestep respacing that maps each respaced index back to its original timestep
before calling the model. The channel axis is dim 2 because videos are ``b f c h w`` (frames before channels).

A ``model`` is any callable ``model(x, t, **model_kwargs)`` taking ``x`` of shape ``b f c h w`` and ``t`` a
LongTensor ``(b,)`` of original timesteps, and returning ``b f c_out h w`` with ``c_out = 2c`` (prediction,
then variance values) when ``learn_sigma`` and ``c_out = c`` (prediction) otherwise. The prediction is eps
(``prediction="epsilon"``, Latte's) or, as an option outside Latte, the clean x0 (``prediction="x0"``, loss
MSE(x0)): a small model trained briefly on pixels makes blurry x0 guesses where its eps guesses leave noise.

``GaussianDiffusion`` implements the objective interface (``diffusion/objective.py``): its times are
integer indices into its (respaced) grid, ``-1`` standing for the clean latents where ``step`` may jump to.
The configured samplers (``Sampler``: DDPM/DDIM on a respaced grid, DPM-Solver++) are in
``diffusion/sampling.py``.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion.objective import Model, NoisePrior, Objective, check_jump, draw_noise, mean_flat

Respacing = str | int | Sequence[int] | None


#################################################################################
#                          Gaussian Math Helpers                                #
#################################################################################


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


class GaussianDiffusion(Objective):
    """Gaussian diffusion on ``b f c h w`` latents (eps or x0 prediction), optionally respaced."""

    PREDICTIONS = ("epsilon", "x0")

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        learn_sigma: bool = True,
        timestep_respacing: Respacing = "",
        prediction: str = "epsilon",
    ):
        assert num_timesteps >= 2, "num_timesteps must be at least 2"
        if prediction not in self.PREDICTIONS:
            raise ValueError(
                f"diffusion.prediction={prediction!r} is unknown; expected one of {self.PREDICTIONS}"
            )
        self.base_num_timesteps = num_timesteps
        self.beta_schedule = beta_schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.learn_sigma = learn_sigma
        self.timestep_respacing = timestep_respacing
        self.prediction = prediction

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
            # index t + 1 holds abar_t, index 0 the clean latents' abar of 1
            "alphas_cumprod_after_clean": np.append(1.0, alphas_cumprod),
            "one_minus_alphas_cumprod": 1.0 - alphas_cumprod,
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
            setattr(self, name, torch.from_numpy(values))  # float64, CPU; _extract reads a copy on x's device
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}  # (table name, device) -> copy

    def __getstate__(self) -> dict:
        """Pickled (and deep-copied) without the tables' device copies: a CPU-only host can load it."""
        return {**self.__dict__, "_on_device": {}}

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion({self.beta_schedule}, T={self.base_num_timesteps}, "
            f"steps={self.num_timesteps}, learn_sigma={self.learn_sigma}, prediction={self.prediction})"
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
            prediction=self.prediction,
        )

    def _on(self, table: str, device: torch.device) -> torch.Tensor:
        """This diffusion's CPU table ``table`` (an attribute name) on ``device``, copied there once.

        important! Copied per call, each table would cost a host-device synchronisation (a blocking copy from
        pageable memory), 15 per Latte training step, each leaving the GPU idle while the host catches up
        (bench/RESULTS.md, "Host waits").
        """
        key = (table, torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = getattr(self, table).to(device)
        return self._on_device[key]

    def _extract(self, table: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Float64 schedule ``table`` at indices ``t`` (b,) or (b, f), to broadcast over x, in x's dtype."""
        assert x.ndim == 5, f"diffusion tensors are videos of shape (b, f, c, h, w), got {tuple(x.shape)}"
        out = self._on(table, x.device)[t.to(x.device)].to(x.dtype)
        return out.view(*t.shape, *[1] * (x.ndim - t.ndim))  # (b, 1, 1, 1, 1), or (b, f, 1, 1, 1) per frame

    def _alpha_bar(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """abar at indices ``t`` >= -1, where index -1 (the clean latents) has abar = 1."""
        return self._extract("alphas_cumprod_after_clean", t + 1, x)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original timesteps for respaced indices ``t`` (what the model is conditioned on; no rescaling)."""
        return self._on("timestep_map", t.device)[t]

    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Training timesteps drawn uniformly from this grid's indices: ``(batch,)`` long."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    #################################################################################
    #                          Forward Process q                                    #
    #################################################################################

    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._extract("one_minus_alphas_cumprod", t, x0).expand_as(x0)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x0).expand_as(x0)
        return mean, variance, log_variance

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        assert noise.shape == x0.shape, "noise must have the shape of x0"
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (``q_sample``); ``t`` (b,) or per frame (b, f)."""
        return self.q_sample(x0, t, noise)

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0)."""
        assert x0.shape == x_t.shape, "x0 and x_t must have the same shape"
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x0
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
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
                f"learn_sigma=True needs a model output of prediction then variance (b, f, 2c, h, w) = "
                f"{expected}, got {tuple(model_output.shape)}"
            )
            out, v = model_output.split(c, dim=2)  # (b, f, c, h, w) each
            min_log = self._extract("posterior_log_variance_clipped", t, x)
            max_log = self._extract("log_betas", t, x)
            frac = (v + 1) / 2  # v in [-1, 1] interpolates between beta_tilde_t and beta_t (log space)
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            assert model_output.shape == x.shape, (
                f"learn_sigma=False needs a model prediction of the input's shape {tuple(x.shape)}, "
                f"got {tuple(model_output.shape)}"
            )
            out = model_output
            variance = self._extract("fixed_large_variance", t, x).expand_as(x)
            log_variance = torch.log(variance)
        pred_xstart = self.to_x0(out, x, t)
        eps = out
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        if clip_denoised or self.prediction == "x0":
            eps = self.to_eps(pred_xstart, x, t)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x0 that the first c channels predict: x0 itself, or (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        out = model_output[:, :, : x_t.shape[2]]  # (b, f, c, h, w): without the variance channels
        if self.prediction == "x0":
            return out
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * out
        )

    def to_eps(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The eps that x_t and a clean ``x0`` imply: (x_t / sqrt(abar_t) - x0) / sqrt(1 / abar_t - 1)."""
        scale = self._extract("sqrt_recip_alphas_cumprod", t, x_t)  # (b, 1, 1, 1, 1)
        return (scale * x_t - x0) / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t)

    def p_mean_variance(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run the model at respaced indices ``t`` and return p(x_{t-1} | x_t) (mean, variance, ...)."""
        model_output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
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
        """Per-sample ``loss = mse + vb`` (b,): MSE of the prediction, VLB in bits (prediction detached).

        Also returns the prediction (``output``, eps or x0, without variance channels), its ``target`` (the
        noise or x0) and ``x_t``, each ``b f c h w``.
        """
        if noise is None:
            noise = draw_noise(x0.shape, noise_prior, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        c = x0.shape[2]
        prediction = model_output[:, :, :c]  # (b, f, c, h, w)
        target = x0 if self.prediction == "x0" else noise
        mse = mean_flat((target - prediction) ** 2)
        tensors = {"output": prediction, "target": target, "x_t": x_t}
        if not self.learn_sigma:
            vb = torch.zeros_like(mse)
            return {"loss": mse, "mse": mse, "vb": vb, **tensors}
        # important! The VLB only trains the variance channels: the prediction is detached here.
        frozen_output = torch.cat([prediction.detach(), model_output[:, :, c:]], dim=2)
        vb = self._vb_terms_bpd(frozen_output, x0, x_t, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb, **tensors}

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
        z = draw_noise(x.shape, noise_prior, generator, x.device, x.dtype)
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
        alpha_bar = self._extract("alphas_cumprod", t, x)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x)
        sample = self._ddim_update(p, x, alpha_bar, alpha_bar_prev, eta, noise_prior, generator)
        return {"sample": sample, "pred_xstart": p["pred_xstart"]}

    def step(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        model_kwargs: dict | None = None,
        eta: float = 0.0,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A DDIM jump from indices ``t`` to any earlier ``t_next`` (-1: clean latents); eta=0: no noise."""
        check_jump(t, t_next, earliest=-1)
        p = self.p_mean_variance(model, x_t, t, model_kwargs)
        alpha_bar, alpha_bar_next = self._alpha_bar(t, x_t), self._alpha_bar(t_next, x_t)
        return self._ddim_update(p, x_t, alpha_bar, alpha_bar_next, eta, noise_prior, generator)

    def _ddim_update(
        self,
        p: dict[str, torch.Tensor],
        x: torch.Tensor,
        alpha_bar: torch.Tensor,
        alpha_bar_next: torch.Tensor,
        eta: float,
        noise_prior: NoisePrior | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12) of x from abar to abar_next by p's x0 and eps; eta > 0: noise."""
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_next) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_next)
        )  # 0 where abar_next = 1: no noise on a step to the clean latents
        sample = (
            p["pred_xstart"] * torch.sqrt(alpha_bar_next)
            + torch.sqrt(1 - alpha_bar_next - sigma**2) * p["eps"]
        )
        if eta > 0:
            z = draw_noise(x.shape, noise_prior, generator, x.device, x.dtype)
            sample = sample + sigma * z
        return sample

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
            x = draw_noise(shape, noise_prior, generator, device, torch.float32)
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


def __getattr__(name: str):
    """``Sampler`` and ``classifier_free_guidance`` live in diffusion/sampling.py; old imports still work."""
    if name in ("Sampler", "classifier_free_guidance"):
        from diffusion import sampling  # here, not above: sampling.py imports this module

        return getattr(sampling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
