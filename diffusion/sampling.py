"""Samplers: videos ``b f c h w`` from a model and its objective (DDPM, DDIM, DPM-Solver++(2M), Euler).

A sampler is a configured recipe (``sampler=ddpm|ddim|dpm_solver|euler``, ``conf/sampler/*.yaml``) called as
``sampler(model, objective, shape, y=..., null_class=..., noise_prior=..., generator=..., device=...)``. It
starts from noise of the noise prior and draws every stochastic step's noise from it too; with labels and
``cfg_scale != 1`` the model is guided (classifier-free guidance, one model call on the doubled batch). Each
sampler names the objectives it supports: any other fails at first use (and when a module is built with
both), naming the two.

======================  ==================  ==========================================================
sampler                 objective           how
======================  ==================  ==========================================================
``Sampler`` ddpm/ddim   GaussianDiffusion   respaced grid, ancestral DDPM or DDIM (Latte's samplers)
``InversionSampler``    GaussianDiffusion   DDIM from the DDIM inversion of a given video (one-shot editing)
``DPMSolverSampler``    GaussianDiffusion   DPM-Solver++(2M) (Lu et al. 2022), diffusers' scheduler
``EulerSampler``        FlowMatching        Euler jumps (``FlowMatching.step``) on the shifted grid
======================  ==================  ==========================================================
"""

import copy
import inspect
import re
import warnings
import weakref
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.flow_matching import FlowMatching
from diffusion.gaussian import GaussianDiffusion
from diffusion.objective import Model, NoisePrior, Objective, draw_noise
from utils.distributed import gathered_dtype, is_sharded
from utils.float8 import quantize_for_inference

SAMPLERS_FOR = {  # the config choices that sample each objective, for the error of a mismatch
    "GaussianDiffusion": "sampler=ddpm, sampler=ddim or sampler=dpm_solver",
    "FlowMatching": "sampler=euler",
}


#################################################################################
#                        Classifier-Free Guidance                               #
#################################################################################


def classifier_free_guidance(model: Model, cfg_scale: float, null_class: int) -> Model:
    """Wrap ``model`` so that its prediction is guided: pred = uncond + cfg_scale * (cond - uncond).

    The guided model runs ``model`` once on ``cat([x, x])`` with ``y = cat([y, null_class])``. The first ``c``
    channels (eps or velocity) are guided; the learned-variance channels (if any) are the conditional
    half's. Other model kwargs are passed through unchanged. With ``cfg_scale == 1`` or ``y=None`` it is the
    plain model.
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
        pred = uncond[:, :, :c] + cfg_scale * (cond[:, :, :c] - uncond[:, :, :c])  # (b, f, c, h, w)
        return torch.cat([pred, cond[:, :, c:]], dim=2)  # (b, f, c_out, h, w)

    return guided


#################################################################################
#               Inference Precision: the Weights Cast Once, Compiled            #
#################################################################################

PRECISIONS = {  # sampler.precision -> the dtype the weights are cast to
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "float8": torch.bfloat16,  # + every qkv/fc1/fc2 in float8 (utils.float8; not the paper's numerics)
}


class CastModel(nn.Module):
    """A low-precision model called with fp32 latents: x enters at the weights' dtype, the output leaves fp32.

    Timesteps stay fp32 (the timestep embedding computes its frequencies in fp32 before its first Linear) and
    the sampler's own arithmetic (posterior means, solver steps) stays fp32.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The model's prediction (b, f, c_out, h, w) in fp32 for latents x (b, f, c, h, w)."""
        return self.model(x.to(self.dtype), t, *args, **kwargs).float()  # (b, f, c_out, h, w)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for ``precision`` on ``device``; "auto" is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return PRECISIONS[precision]


#################################################################################
#                                 Sampler Base                                  #
#################################################################################


def _check_steps(num_steps: object) -> int:
    """``num_steps`` if it is a positive int, else an error naming ``sampler.num_steps``."""
    if not (isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps > 0):
        raise ValueError(f"sampler num_steps must be a positive int, got {num_steps!r}")
    return num_steps


class SamplerBase:
    """What every sampler shares: its objectives, CFG, the initial noise of the prior, a name for metrics."""

    objectives: tuple[type[Objective], ...] = ()

    def __init__(
        self,
        num_steps: int | str,
        cfg_scale: float = 1.0,
        progress: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ):
        if precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"sampler precision must be one of {[*PRECISIONS, 'auto']}, got {precision!r}")
        self.num_steps = num_steps
        self.cfg_scale = float(cfg_scale)
        self.progress = progress
        self.precision = precision  # the dtype the weights are cast to, once per call ("auto": bf16 on CUDA)
        self.compile = compile  # torch.compile the (cast) model; the compiled copy is kept across calls
        # (weakref to the model, its cast copy, what the loop runs, (precision, dtype, device, compile))
        self._fast: tuple | None = None

    def __getstate__(self) -> dict:
        """Pickle and deepcopy the recipe, not the cached low-precision copy of a model."""
        return {**self.__dict__, "_fast": None}

    def inference_model(self, model: Model, device: torch.device) -> Model:
        """What the loop calls: ``model`` itself, or its copy cast to ``precision`` (and compiled).

        The copy is made at the first call and refreshed from ``model``'s weights at every call (an EMA that
        trained in between is sampled as it is now), so a compiled copy is compiled once.
        """
        dtype = resolve_precision(self.precision, device)
        if not isinstance(model, nn.Module) or is_sharded(model):  # a function, or FSDP's weights: autocast
            if self.precision == "float8":
                warnings.warn(
                    "sampler.precision=float8 needs a whole module: bf16 autocast here", stacklevel=3
                )
            if dtype == torch.float32:  # to the dtype a sharded model gathers its weights in, when lower
                dtype = gathered_dtype(model)
            return model if dtype == torch.float32 else _autocast(model, device, dtype)
        if dtype == torch.float32 and not self.compile:
            return model
        cached, recipe = self._fast, (self.precision, dtype, torch.device(device), self.compile)
        if cached is None or cached[0]() is not model or cached[3] != recipe:
            cast = CastModel(copy.deepcopy(model).to(dtype).eval().requires_grad_(False), dtype)
            if self.precision == "float8" and not quantize_for_inference(cast.model):
                warnings.warn(
                    "sampler.precision=float8: no qkv/fc1/fc2 layer to quantize, bf16", stacklevel=3
                )
            compiled = torch.compile(cast) if self.compile else cast
            self._fast = cached = (weakref.ref(model), cast, compiled, recipe)
        else:  # cast (float8: quantize) into the same tensors
            cached[1].model.load_state_dict(model.state_dict())
        return cached[2]

    @property
    def tag(self) -> str:
        """The method and its settings, e.g. "ddpm250" or "euler25"."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """Short tag for metric names, e.g. "ddpm250", "ddim50-eta0.0-cfg7.0" or "euler25"."""
        return self.tag + (f"-cfg{self.cfg_scale}" if self.cfg_scale != 1 else "")

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={getattr(self, key)!r}" for key in inspect.signature(type(self)).parameters)
        return f"{type(self).__name__}({args})"

    def check(self, objective: Objective) -> None:
        """Fail, naming both, when this sampler cannot sample ``objective``."""
        if not isinstance(objective, self.objectives):
            supported = ", ".join(cls.__name__ for cls in self.objectives)
            choices = SAMPLERS_FOR.get(type(objective).__name__, "another sampler")
            raise ValueError(
                f"the sampler {self!r} cannot sample the objective {objective!r}: it samples {supported}; "
                f"for {type(objective).__name__} use {choices}"
            )

    @torch.no_grad()
    def __call__(
        self,
        model: Model,
        objective: Objective,
        shape: Sequence[int],
        *,
        y: torch.Tensor | None = None,
        null_class: int | None = None,
        noise_prior: NoisePrior | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample ``b f c h w`` latents of ``shape`` with ``model`` trained on ``objective``."""
        self.check(objective)
        shape = tuple(shape)
        assert len(shape) == 5, f"samplers generate videos of shape (b, f, c, h, w), got {shape}"
        model_kwargs = {} if y is None else {"y": y}
        model = self.inference_model(model, torch.device(device) if device is not None else _device_of(model))
        if y is not None and self.cfg_scale != 1:
            if null_class is None:
                raise ValueError(
                    "null_class is required for classifier-free guidance (cfg_scale != 1 with labels y)"
                )
            model = classifier_free_guidance(model, self.cfg_scale, null_class)
        if noise is None:
            x = draw_noise(shape, noise_prior, generator, device, torch.float32)  # (b, f, c, h, w)
        else:
            assert tuple(noise.shape) == shape, f"initial noise has shape {tuple(noise.shape)}, not {shape}"
            x = noise.to(device) if device is not None else noise
        return self.run(model, objective, x, model_kwargs, noise_prior, generator)

    def run(
        self,
        model: Model,
        objective: Objective,
        x: torch.Tensor,
        model_kwargs: dict,
        noise_prior: NoisePrior | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Turn the initial noise ``x`` into samples (the sampler's own loop)."""
        raise NotImplementedError


#################################################################################
#                       DDPM and DDIM (Gaussian diffusion)                      #
#################################################################################


def _device_of(model: Model) -> torch.device:
    """The device of a module's first parameter (CPU for a plain function)."""
    if isinstance(model, nn.Module):
        return next(model.parameters(), torch.empty(0)).device
    return torch.device("cpu")


def _autocast(model: Model, device: torch.device, dtype: torch.dtype) -> Model:
    """``model`` run under autocast to ``dtype``, its output fp32."""

    def autocast_model(*args, **kwargs) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return model(*args, **kwargs).float()

    return autocast_model


class Sampler(SamplerBase):
    """DDPM or DDIM on the diffusion respaced to ``num_steps`` (Latte's samplers), with eta and CFG."""

    METHODS = ("ddpm", "ddim")
    objectives = (GaussianDiffusion,)

    def __init__(
        self,
        method: str = "ddpm",
        num_steps: int | str = 250,
        eta: float = 0.0,
        cfg_scale: float = 1.0,
        progress: bool = False,
        precision: str = "fp32",
        compile: bool = False,
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
        super().__init__(num_steps, cfg_scale, progress, precision, compile)
        self.method = method
        self.eta = float(eta)

    @property
    def tag(self) -> str:
        """E.g. "ddpm250", "ddim50-eta0.0" or "ddim50stride-eta0.0" (a ``ddim50`` respacing)."""
        steps = str(self.num_steps).replace(",", "_")
        if steps.startswith("ddim"):
            steps = steps[len("ddim") :] + "stride"
        return f"{self.method}{steps}" + (f"-eta{self.eta}" if self.method == "ddim" else "")

    def run(self, model, objective, x, model_kwargs, noise_prior, generator) -> torch.Tensor:
        """The respaced diffusion's DDPM or DDIM loop from ``x``."""
        spaced = objective.respace(str(self.num_steps))
        kwargs = dict(noise=x, noise_prior=noise_prior, generator=generator, model_kwargs=model_kwargs)
        kwargs["progress"] = self.progress
        if self.method == "ddim":
            return spaced.ddim_sample_loop(model, x.shape, eta=self.eta, **kwargs)
        return spaced.p_sample_loop(model, x.shape, **kwargs)


#################################################################################
#                        DPM-Solver++(2M) (Gaussian diffusion)                  #
#################################################################################


class DPMSolverSampler(SamplerBase):
    """DPM-Solver++(2M) in 10-25 steps (eps or x0 prediction): diffusers' multistep scheduler, our schedule.

    Its ``num_steps`` noise levels are uniform in log-SNR from timestep T-1 to 0 (``use_lu_lambdas``, the
    spacing Lu et al. recommend), the model seeing each level's timestep rounded; the last step goes from
    timestep 0 to the clean latents. With the exact eps of N(0.5, 0.3^2) data, 20 such steps give a std of
    0.305; diffusers' default time-uniform spacing, which stops at timestep T/num_steps, gives 0.259.
    """

    objectives = (GaussianDiffusion,)

    def __init__(
        self,
        num_steps: int = 20,
        cfg_scale: float = 1.0,
        progress: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ):
        super().__init__(_check_steps(num_steps), cfg_scale, progress, precision, compile)

    @property
    def tag(self) -> str:
        """E.g. "dpmpp2m20"."""
        return f"dpmpp2m{self.num_steps}"

    def scheduler(self, objective: GaussianDiffusion, device: torch.device | str | None = None):
        """diffusers' DPM-Solver++(2M) on the objective's full beta schedule, set to ``num_steps`` steps."""
        from diffusers import DPMSolverMultistepScheduler  # here: importing diffusers takes seconds

        base = objective.respace(None)  # the training schedule, whatever respacing ``objective`` has
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=base.num_timesteps,
            trained_betas=base.betas.numpy(),
            solver_order=2,
            prediction_type={"epsilon": "epsilon", "x0": "sample"}[objective.prediction],
            algorithm_type="dpmsolver++",
            solver_type="midpoint",
            lower_order_final=True,  # first order on the last step, which lands on sigma = 0
            use_lu_lambdas=True,  # noise levels uniform in log-SNR, from timestep T-1 to 0
            final_sigmas_type="zero",
        )
        scheduler.set_timesteps(self.num_steps, device=device)
        return scheduler

    def run(self, model, objective, x, model_kwargs, noise_prior, generator) -> torch.Tensor:
        """Deterministic multistep solver from ``x`` (the prior's noise) at the last timestep to the data."""
        scheduler = self.scheduler(objective, x.device)
        c = x.shape[2]
        for timestep in tqdm(scheduler.timesteps, disable=not self.progress, desc="sampling"):
            t = timestep.expand(x.shape[0])  # (b,) original timesteps
            out = model(x, t, **model_kwargs)[:, :, :c].to(x.dtype)  # (b, f, c, h, w): eps or x0, no variance
            x = scheduler.step(out, timestep, x).prev_sample  # (b, f, c, h, w)
        return x


#################################################################################
#                            Euler (flow matching)                              #
#################################################################################


class EulerSampler(SamplerBase):
    """Euler steps of the flow-matching ODE from t=1 to t=0 on a shifted grid (``shift`` None: training's)."""

    objectives = (FlowMatching,)

    def __init__(
        self,
        num_steps: int = 50,
        shift: float | None = None,
        cfg_scale: float = 1.0,
        progress: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ):
        if shift is not None and shift <= 0:
            raise ValueError(f"sampler shift must be > 0 or null (the objective's shift), got {shift}")
        super().__init__(_check_steps(num_steps), cfg_scale, progress, precision, compile)
        self.shift = shift

    @property
    def tag(self) -> str:
        """E.g. "euler50" or "euler50-shift3.0"."""
        return f"euler{self.num_steps}" + (f"-shift{self.shift}" if self.shift is not None else "")

    def run(self, model, objective, x, model_kwargs, noise_prior, generator) -> torch.Tensor:
        """``num_steps`` Euler jumps of ``objective.step`` along its shifted time grid."""
        times = objective.time_grid(self.num_steps, self.shift).to(x.device, x.dtype)  # (num_steps + 1,)
        b = x.shape[0]
        for i in tqdm(range(self.num_steps), disable=not self.progress, desc="sampling"):
            x = objective.step(model, x, times[i].expand(b), times[i + 1].expand(b), model_kwargs)
        return x


#################################################################################
#                   DDIM from an inverted video (Gaussian diffusion)            #
#################################################################################


class InversionSampler(Sampler):
    """DDIM (eta 0) started from the DDIM inversion of a given video's latents, not from fresh noise.

    Tune-A-Video's ``use_inv_latent``: the one-shot fine-tuned model re-generates (or, with another ``label``,
    edits) its training video from the noise that deterministic DDIM maps back onto it. A module that has a
    video to invert (APLA) calls ``invert`` and then samples with the result as ``noise``; ``label`` (None:
    the video's own) is the class the edit is generated with.
    """

    def __init__(
        self,
        num_steps: int = 50,
        inversion_steps: int | None = None,
        label: int | None = None,
        cfg_scale: float = 1.0,
        progress: bool = False,
    ):
        super().__init__("ddim", _check_steps(num_steps), 0.0, cfg_scale, progress)
        self.inversion_steps = _check_steps(inversion_steps or num_steps)
        if label is not None and (not isinstance(label, int) or label < 0):
            raise ValueError(f"sampler label must be null or a class index >= 0, got {label!r}")
        self.label = label

    @property
    def tag(self) -> str:
        """E.g. "ddim50-inv50" or "ddim50-inv50-label3"."""
        label = f"-label{self.label}" if self.label is not None else ""
        return f"ddim{self.num_steps}-inv{self.inversion_steps}{label}"

    @torch.no_grad()
    def invert(
        self, model: Model, objective: GaussianDiffusion, x0: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The noise (b f c h w) that DDIM maps to latents ``x0`` (b f c h w): the DDIM ODE run forwards,
        each step using the model's eps at the level it leaves (unguided, with the video's labels ``y``)."""
        self.check(objective)
        assert x0.ndim == 5, f"inversion takes latents (b, f, c, h, w), got {tuple(x0.shape)}"
        spaced = objective.respace(str(self.inversion_steps))
        model_kwargs = {} if y is None else {"y": y}
        x, c = x0.float(), x0.shape[2]
        for i in tqdm(range(spaced.num_timesteps), disable=not self.progress, desc="inverting"):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            eps = model(x, spaced.model_timesteps(t), **model_kwargs)[:, :, :c].float()  # (b, f, c, h, w)
            alpha_bar, alpha_bar_prev = spaced._alpha_bar(t, x), spaced._alpha_bar(t - 1, x)
            pred_x0 = (x - torch.sqrt(1 - alpha_bar_prev) * eps) / torch.sqrt(alpha_bar_prev)  # (b,f,c,h,w)
            x = torch.sqrt(alpha_bar) * pred_x0 + torch.sqrt(1 - alpha_bar) * eps  # (b, f, c, h, w)
        return x
