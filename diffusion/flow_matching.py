"""Flow matching (rectified flow) over video latents ``b f c h w``: a straight path from data to noise.

x_t = (1 - t) x0 + t eps for t in [0, 1] (t = 0 data, t = 1 noise); the model predicts the velocity
v = dx_t/dt = eps - x0 and is trained by MSE. Training times are U(0, 1) pushed towards the noise end by the
shift of SD3 (Esser et al. 2024), shift(t, s) = s t / (1 + (s - 1) t); sampling integrates the ODE
backwards on the same shifted grid. The backbone sees ``t * timestep_scale``: with the default 1000 the
Latte timestep embedder, built for the integer steps 0..999 of Gaussian diffusion, sees the same range.
"""

import torch

from diffusion.objective import Model, NoisePrior, Objective, check_jump, draw_noise, mean_flat, per_sample


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """shift(t, s) = s t / (1 + (s - 1) t): fixes 0 and 1, increases with t; s > 1 moves t towards noise."""
    return shift * t / (1 + (shift - 1) * t)


class FlowMatching(Objective):
    """Velocity-prediction flow matching on ``b f c h w`` latents with shifted uniform training times.

    Every method takes times ``t`` of shape (b,) or one per frame (b, f).
    """

    def __init__(self, shift: float = 1.0, timestep_scale: float = 1000.0, learn_sigma: bool = False):
        if shift <= 0:
            raise ValueError(f"diffusion.shift must be > 0 (1: no shift), got {shift}")
        if timestep_scale <= 0:
            raise ValueError(f"diffusion.timestep_scale must be > 0, got {timestep_scale}")
        if learn_sigma:
            raise ValueError(
                "diffusion.learn_sigma must be false for flow matching: the model predicts the velocity only"
            )
        self.shift = float(shift)
        self.timestep_scale = float(timestep_scale)
        self.learn_sigma = False

    def __repr__(self) -> str:
        return f"FlowMatching(shift={self.shift}, timestep_scale={self.timestep_scale})"

    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Training times shift(u, s), u ~ U(0, 1): ``(batch,)`` float."""
        u = torch.rand((batch,), generator=generator, device=device)
        return shift_time(u, self.shift)

    def time_grid(self, num_steps: int, shift: float | None = None) -> torch.Tensor:
        """Sampling times from 1 to 0: ``num_steps`` equal steps mapped by the shift (default: training's)."""
        uniform = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        return shift_time(uniform, self.shift if shift is None else shift)  # (num_steps + 1,)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """t * timestep_scale: the range of the backbone's timestep embedding."""
        return t * self.timestep_scale

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t noise."""
        assert noise.shape == x0.shape, "noise must have the shape of x0"
        t = per_sample(t, x0)  # (b, 1, 1, 1, 1) or (b, f, 1, 1, 1)
        return (1 - t) * x0 + t * noise

    def velocity(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None
    ) -> torch.Tensor:
        """The model's velocity v at (x_t, t), checked to have x_t's shape."""
        v = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))  # (b, f, c, h, w)
        assert v.shape == x_t.shape, (
            f"flow matching needs a model output of the input's shape {tuple(x_t.shape)} (the velocity; "
            f"learn_sigma false), got {tuple(v.shape)}"
        )
        return v

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
        """Per-sample ``loss`` = ``mse`` = MSE(v, noise - x0) (b,), with ``output`` v, ``target``, ``x_t``."""
        if noise is None:
            noise = draw_noise(x0.shape, noise_prior, generator, x0.device, x0.dtype)
        x_t = self.add_noise(x0, t, noise)  # (b, f, c, h, w)
        v = self.velocity(model, x_t, t, model_kwargs)  # (b, f, c, h, w)
        target = noise - x0  # (b, f, c, h, w)
        mse = mean_flat((v - target) ** 2)  # (b,)
        return {"loss": mse, "mse": mse, "output": v, "target": target, "x_t": x_t}

    def to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = x_t - t v."""
        return x_t - per_sample(t, x_t) * model_output

    def step(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        model_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """An Euler jump x_next = x_t + (t_next - t) v(x_t, t) to any earlier time ``t_next`` (0: data)."""
        check_jump(t, t_next, earliest=0)
        v = self.velocity(model, x_t, t, model_kwargs)  # (b, f, c, h, w)
        return x_t + per_sample(t_next - t, x_t) * v
