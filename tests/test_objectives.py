"""The objective interface (Gaussian diffusion, flow matching) and the samplers of diffusion/sampling.py."""

import copy
import math

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from torch import nn

from backbones import Latte
from diffusion import (
    DPMSolverSampler,
    EulerSampler,
    FlowMatching,
    GaussianDiffusion,
    Objective,
    Sampler,
    shift_time,
)
from diffusion.sampling import PRECISIONS
from tests.conftest import TINY, compose_train
from tests.test_diffusion import (
    gaussian_data_model,
    label_model,
    oracle_model,
    reference_linear_schedule,
    x0_model_of,
)

#################################################################################
#                                  Helpers                                      #
#################################################################################


def fm_gaussian_velocity(mu: float, std: float, timestep_scale: float = 1000.0):
    """The exact flow-matching velocity E[eps - x0 | x_t] for i.i.d. data x0 ~ N(mu, std^2), eps ~ N(0, 1).

    x_t = (1 - t) x0 + t eps is Gaussian with mean (1 - t) mu and variance (1 - t)^2 std^2 + t^2, and
    Cov(eps - x0, x_t) = t - (1 - t) std^2, so E[v | x_t] = -mu + Cov / Var (x_t - (1 - t) mu).
    """

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = (t / timestep_scale).to(x.dtype).view(-1, 1, 1, 1, 1)  # the model sees t * timestep_scale
        variance = (1 - t) ** 2 * std**2 + t**2
        return -mu + (t - (1 - t) * std**2) / variance * (x - (1 - t) * mu)

    return model


def counting_prior(calls: list):
    """A standard normal noise prior that records the shape of every draw in ``calls``."""

    def prior(shape, generator=None, device=None, dtype=None):
        calls.append(tuple(shape))
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    return prior


def hand_guided(model, scale: float, null_class: int):
    """CFG written out: two model calls, uncond + scale * (cond - uncond) on the first c channels."""

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = x.shape[2]
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, null_class))
        return torch.cat([uncond[:, :, :c] + scale * (cond[:, :, :c] - uncond[:, :, :c]), cond[:, :, c:]], 2)

    return guided


def fm_label_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A velocity model (c channels) whose prediction depends on the label y."""
    return label_model(x, t, y)[:, :, : x.shape[2]]


def dpm_solver_pp_2m_reference(
    eps_model, x: torch.Tensor, num_steps: int, second_order: bool = True
) -> torch.Tensor:
    """DPM-Solver++(2M) by the paper (Lu et al. 2022, Alg. 2) in float64 on the linear schedule.

    Noise levels uniform in lambda = log(alpha / sigma) from timestep 999 to 0, the model seeing each level's
    timestep (interpolated in lambda) rounded. The first step is first order, then
    x_i = sigma_i / sigma_{i-1} x_{i-1} - alpha_i (e^{-h_i} - 1) D_i with
    D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}, r_i = h_{i-1} / h_i; the last step goes to
    sigma = 0, where the first-order update is the predicted x0. ``second_order=False``: DPM-Solver++(1).
    """
    abar = reference_linear_schedule()[1]
    lambdas = 0.5 * np.log(abar / (1 - abar))  # decreasing in t
    lam = np.linspace(lambdas[-1], lambdas[0], num_steps)  # uniform in log-SNR, noisiest first
    steps = np.interp(-lam, -lambdas, np.arange(1000)).round().astype(np.int64)
    alpha, sigma = 1 / np.sqrt(1 + np.exp(-2 * lam)), 1 / np.sqrt(1 + np.exp(2 * lam))
    x, x0_prev, h_prev = x.double(), None, None
    for i, step in enumerate(steps):
        eps = eps_model(x, torch.full((x.shape[0],), int(step)))
        x0 = (x - sigma[i] * eps) / alpha[i]
        if i == num_steps - 1:
            return x0
        h = lam[i + 1] - lam[i]
        if x0_prev is None or not second_order:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (math.exp(-h) - 1) * d
        x0_prev, h_prev = x0, h
    raise AssertionError("unreachable")


#################################################################################
#                         Flow Matching: Closed Forms                           #
#################################################################################


def test_flow_matching_x_t_has_the_closed_form_mean_and_variance():
    mu, std = 0.5, 0.3
    fm = FlowMatching()
    generator = torch.Generator().manual_seed(0)
    x0 = mu + std * torch.randn(40000, 1, 1, 2, 2, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    for time in (0.0, 0.3, 0.7, 1.0):
        x_t = fm.add_noise(x0, torch.full((40000,), time), noise)
        assert x_t.mean().item() == pytest.approx((1 - time) * mu, abs=0.01)
        assert x_t.var().item() == pytest.approx((1 - time) ** 2 * std**2 + time**2, rel=0.02)
    torch.testing.assert_close(fm.add_noise(x0, torch.zeros(40000), noise), x0)
    torch.testing.assert_close(fm.add_noise(x0, torch.ones(40000), noise), noise)


def test_shift_fixes_the_endpoints_is_increasing_and_moves_training_times_towards_noise():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (0.5, 1.0, 3.0):
        shifted = shift_time(t, s)
        assert shifted[0].item() == 0 and shifted[-1].item() == pytest.approx(1.0, abs=1e-12)
        assert bool((shifted[1:] > shifted[:-1]).all()), f"shift {s} must be strictly increasing"
    torch.testing.assert_close(shift_time(t, 1.0), t)
    assert bool((shift_time(t[1:-1], 3.0) > t[1:-1]).all()), "s > 1 moves every inner time towards noise"
    times = FlowMatching(shift=3.0).sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert times.shape == (20000,) and times.dtype == torch.float32
    assert 0 <= times.min().item() and times.max().item() <= 1
    assert times.median().item() == pytest.approx(3 / 4, abs=0.01), "median shift(1/2, s) = s / (s + 1)"
    grid = FlowMatching(shift=3.0).time_grid(4)
    torch.testing.assert_close(grid, shift_time(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]).double(), 3.0))


def test_flow_matching_training_losses_output_target_x_t_and_model_timesteps():
    fm = FlowMatching(shift=2.0)
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 2, 4, 4).unbind(0)
    t = fm.sample_t(3)
    seen = []
    model = lambda x, t: seen.append(t) or torch.sin(x)
    losses = fm.training_losses(model, x0, t, noise=noise)
    assert set(losses) == {"loss", "mse", "output", "target", "x_t"}
    assert losses["loss"].shape == (3,)
    for key in ("output", "target", "x_t"):
        assert losses[key].shape == x0.shape, key
    torch.testing.assert_close(losses["target"], noise - x0)
    torch.testing.assert_close(losses["x_t"], fm.add_noise(x0, t, noise))
    torch.testing.assert_close(losses["output"], torch.sin(losses["x_t"]))
    torch.testing.assert_close(
        losses["loss"], ((losses["output"] - losses["target"]) ** 2).mean((1, 2, 3, 4))
    )
    torch.testing.assert_close(seen[0], t * 1000)  # the backbone sees t * timestep_scale
    with pytest.raises(AssertionError, match="velocity"):
        fm.training_losses(lambda x, t: torch.cat([x, x], 2), x0, t, noise=noise)


def test_flow_matching_config_errors_name_the_key():
    with pytest.raises(ValueError, match="learn_sigma"):
        FlowMatching(learn_sigma=True)
    with pytest.raises(ValueError, match="shift"):
        FlowMatching(shift=0.0)
    with pytest.raises(ValueError, match="timestep_scale"):
        FlowMatching(timestep_scale=-1.0)
    assert FlowMatching().learn_sigma is False and isinstance(FlowMatching(), Objective)


#################################################################################
#                     The Interface: to_x0 and step, both objectives            #
#################################################################################


def test_flow_matching_step_with_the_exact_velocity_is_exact_on_a_straight_path():
    fm = FlowMatching()
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 2, 3, 2, 4, 4).unbind(0)
    exact = lambda x, t: noise - x0  # the velocity of the straight path through (x0, noise)
    t, t_next = torch.tensor([0.9, 0.6]), torch.tensor([0.2, 0.0])
    x_t = fm.add_noise(x0, t, noise)
    torch.testing.assert_close(fm.step(exact, x_t, t, t_next), fm.add_noise(x0, t_next, noise))
    torch.testing.assert_close(fm.step(exact, x_t, t, torch.zeros(2)), x0)  # one jump to t=0 lands on x0
    torch.testing.assert_close(fm.to_x0(noise - x0, x_t, t), x0)
    per_frame = torch.tensor([[0.9, 0.5, 0.1], [1.0, 0.3, 0.2]])  # (b, f): one time per frame
    x_t = fm.add_noise(x0, per_frame, noise)
    torch.testing.assert_close(x_t[:, 1], fm.add_noise(x0[:, 1:2], per_frame[:, 1], noise[:, 1:2])[:, 0])
    torch.testing.assert_close(
        fm.step(exact, x_t, per_frame, per_frame / 2), fm.add_noise(x0, per_frame / 2, noise)
    )
    with pytest.raises(AssertionError, match="back in time"):
        fm.step(exact, x_t, per_frame / 2, per_frame)


@pytest.mark.parametrize("respacing", ["", "50"])
def test_gaussian_step_with_the_exact_eps_jumps_between_any_times_and_recovers_x0(respacing):
    diffusion = GaussianDiffusion(timestep_respacing=respacing)
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 3, 4, 4).expand(2, -1, -1, -1, -1)
    noise = torch.randn(1, 2, 3, 4, 4).expand(2, -1, -1, -1, -1)
    model = oracle_model(x0)  # the exact eps of delta(x0), at original timesteps
    last = diffusion.num_timesteps - 1
    t, t_next = torch.tensor([last, last * 2 // 3]), torch.tensor([last // 3, 5])
    x_t = diffusion.add_noise(x0, t, noise)
    jumped = diffusion.step(model, x_t, t, t_next)  # deterministic (eta 0): the same noise, less of it
    torch.testing.assert_close(jumped, diffusion.add_noise(x0, t_next, noise), atol=1e-4, rtol=0)
    clean = diffusion.step(model, x_t, t, torch.full((2,), -1))  # -1: the clean latents
    torch.testing.assert_close(clean, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        diffusion.to_x0(model(x_t, diffusion.model_timesteps(t)), x_t, t), x0, atol=1e-4, rtol=0
    )
    per_frame = torch.tensor([[last, 3], [10, 0]])  # (b, f): one index per frame
    torch.testing.assert_close(
        diffusion.add_noise(x0, per_frame, noise)[:, 1], diffusion.add_noise(x0, per_frame[:, 1], noise)[:, 1]
    )


def test_gaussian_step_to_the_next_index_is_ddim_and_eta_draws_from_the_prior():
    diffusion = GaussianDiffusion(timestep_respacing="ddim10")
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, 4)
    model = lambda x, t: torch.cat([torch.sin(x + t.view(-1, 1, 1, 1, 1) / 1000), torch.tanh(x)], dim=2)
    t = torch.tensor([7, 4])
    assert torch.equal(diffusion.step(model, x, t, t - 1), diffusion.ddim_sample(model, x, t)["sample"])
    calls = []
    prior = counting_prior(calls)
    stochastic = diffusion.step(model, x, t, t - 3, eta=1.0, noise_prior=prior)
    assert calls == [(2, 2, 3, 4, 4)] and not torch.allclose(stochastic, diffusion.step(model, x, t, t - 3))


def test_gaussian_objective_interface_keeps_the_training_draws_and_returns_output_target_x_t():
    diffusion = GaussianDiffusion()
    ours = diffusion.sample_t(16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 3, 2, 3, 4, 4).unbind(0)
    t = torch.tensor([0, 500, 999])
    model = lambda x, t: torch.cat([0.5 * x, torch.tanh(x)], dim=2)
    losses = diffusion.training_losses(model, x0, t, noise=noise)
    torch.testing.assert_close(losses["x_t"], diffusion.add_noise(x0, t, noise))
    assert torch.equal(losses["target"], noise)
    torch.testing.assert_close(losses["output"], 0.5 * losses["x_t"])  # eps only: no variance channels
    torch.testing.assert_close(losses["mse"], ((losses["output"] - noise) ** 2).mean((1, 2, 3, 4)))


#################################################################################
#                          Samplers Land on the Data                            #
#################################################################################


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_euler_with_the_exact_velocity_lands_on_the_gaussian_data(shift):
    mu, std = 0.5, 0.3
    sampler = EulerSampler(num_steps=400)  # Euler's error is O(1 / num_steps): 1% in std at 400
    generator = torch.Generator().manual_seed(0)
    samples = sampler(
        fm_gaussian_velocity(mu, std), FlowMatching(shift=shift), (5000, 1, 1, 2, 2), generator=generator
    )
    assert samples.mean().item() == pytest.approx(mu, abs=0.01)
    assert samples.std().item() == pytest.approx(std, rel=0.02)


def test_dpm_solver_matches_a_hand_written_dpm_solver_pp_2m():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, 4)
    data_eps = gaussian_data_model(0.5, 0.3)  # a timestep-dependent eps, bent by a nonlinear term:
    eps = lambda x, t: data_eps(x, t) + 0.1 * torch.sin(3 * x)
    model = lambda x, t: torch.cat([eps(x, t), torch.tanh(x)], dim=2)  # + variance channels: ignored
    for num_steps in (10, 20):
        sampler = DPMSolverSampler(num_steps=num_steps)
        grid = sampler.scheduler(GaussianDiffusion()).timesteps
        assert grid[0] == 999 and grid[-1] == 0 and len(grid) == num_steps
        ours = sampler(model, GaussianDiffusion(), x.shape, noise=x)
        reference = dpm_solver_pp_2m_reference(eps, x, num_steps)
        torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=1e-4)
        first_order = dpm_solver_pp_2m_reference(eps, x, num_steps, second_order=False).float()
        assert (ours - first_order).abs().max() > 0.05, "the toy model tells second from first order"


def test_dpm_solver_with_the_exact_eps_lands_on_the_gaussian_data_in_20_steps():
    mu, std = 0.5, 0.3
    diffusion = GaussianDiffusion(learn_sigma=False, timestep_respacing="ddim10")  # respacing is ignored
    generator = torch.Generator().manual_seed(0)
    samples = DPMSolverSampler(num_steps=20)(
        gaussian_data_model(mu, std), diffusion, (4000, 1, 1, 2, 2), generator=generator
    )
    assert samples.mean().item() == pytest.approx(mu, abs=0.01)
    assert samples.std().item() == pytest.approx(std, rel=0.03)


def test_dpm_solver_with_an_x0_model_matches_the_eps_model_it_implies():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, 4)
    eps_model = gaussian_data_model(0.5, 0.3)
    sampler = DPMSolverSampler(num_steps=10)
    expected = sampler(eps_model, GaussianDiffusion(learn_sigma=False), x.shape, noise=x)
    found = sampler(
        x0_model_of(eps_model), GaussianDiffusion(learn_sigma=False, prediction="x0"), x.shape, noise=x
    )
    torch.testing.assert_close(found, expected, atol=1e-3, rtol=1e-3)  # float32: x0 at abar ~ 4e-5


#################################################################################
#                    CFG, the Noise Prior and Errors on Every Sampler           #
#################################################################################

SAMPLERS = {  # config choice -> (sampler, objective, model with labels)
    "ddpm": (Sampler("ddpm", 5), GaussianDiffusion(), label_model),
    "ddim": (Sampler("ddim", 5, eta=0.5), GaussianDiffusion(), label_model),
    "dpm_solver": (DPMSolverSampler(num_steps=5), GaussianDiffusion(), label_model),
    "euler": (EulerSampler(num_steps=5, shift=2.0), FlowMatching(), fm_label_model),
}


@pytest.mark.parametrize("choice", SAMPLERS)
def test_cfg_on_every_sampler_is_uncond_plus_scale_times_the_difference(choice):
    sampler, objective, model = SAMPLERS[choice]
    scale, null_class, y = 4.0, 9, torch.tensor([1, 3])
    noise = torch.randn(2, 2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    batches = []
    counting = lambda x, t, y: batches.append(len(x)) or model(x, t, y)
    guided_sampler = copy.copy(sampler)
    guided_sampler.cfg_scale = scale

    def run(s, m):
        return s(
            m,
            objective,
            noise.shape,
            y=y,
            null_class=null_class,
            noise=noise,
            generator=torch.Generator().manual_seed(1),
        )

    guided = run(guided_sampler, counting)
    assert set(batches) == {4}, "one model call per step on the doubled batch"
    torch.testing.assert_close(guided, run(sampler, hand_guided(model, scale, null_class)))
    assert not torch.allclose(guided, run(sampler, model)), "guidance changes the samples"
    assert guided_sampler.name.endswith("-cfg4.0")


@pytest.mark.parametrize("choice", SAMPLERS)
def test_every_sampler_draws_its_initial_and_step_noise_from_the_prior(choice):
    sampler, objective, model = SAMPLERS[choice]
    calls = []
    out = sampler(
        model, objective, (2, 2, 4, 2, 2), y=torch.tensor([0, 1]), noise_prior=counting_prior(calls)
    )
    stochastic_steps = {"ddpm": 5, "ddim": 5}.get(choice, 0)  # ddim here has eta 0.5
    assert calls == [(2, 2, 4, 2, 2)] * (1 + stochastic_steps)
    assert out.shape == (2, 2, 4, 2, 2) and bool(out.isfinite().all())


@pytest.mark.parametrize(
    ("sampler", "objective", "choice"),
    [
        (EulerSampler(), GaussianDiffusion(), "sampler=ddpm"),
        (Sampler(), FlowMatching(), "sampler=euler"),
        (DPMSolverSampler(), FlowMatching(), "sampler=euler"),
    ],
)
def test_a_sampler_for_another_objective_fails_naming_both(sampler, objective, choice):
    with pytest.raises(ValueError, match=type(objective).__name__) as error:
        sampler(lambda x, t: x, objective, (1, 1, 4, 2, 2))
    assert type(sampler).__name__ in str(error.value) and choice in str(error.value)


def test_sampler_names_reprs_and_errors():
    assert EulerSampler(num_steps=25).name == "euler25"
    assert EulerSampler(num_steps=8, shift=3.0, cfg_scale=2.0).name == "euler8-shift3.0-cfg2.0"
    assert DPMSolverSampler().name == "dpmpp2m20"
    assert repr(EulerSampler()) == (
        "EulerSampler(num_steps=50, shift=None, cfg_scale=1.0, progress=False, precision='fp32', "
        "compile=False)"
    )
    assert repr(DPMSolverSampler(precision="bf16")) == (
        "DPMSolverSampler(num_steps=20, cfg_scale=1.0, progress=False, precision='bf16', compile=False)"
    )
    for build in (lambda: EulerSampler(num_steps=0), lambda: DPMSolverSampler(num_steps="ddim20")):
        with pytest.raises(ValueError, match="num_steps"):
            build()
    with pytest.raises(ValueError, match="shift"):
        EulerSampler(shift=-1.0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_sampling_casts_the_weights_once_and_matches_fp32_within_its_tolerance(precision):
    torch.manual_seed(0)
    model = Latte(size="tiny", patch_size=2, input_size=8, num_frames=4, learn_sigma=True).eval()
    for p in model.parameters():  # the zero-initialised final layer would predict 0 at any precision
        p.data.add_(0.02 * torch.randn_like(p))
    noise = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    run = lambda s: s(model, GaussianDiffusion(), noise.shape, noise=noise)  # noqa: E731
    reference = run(Sampler("ddim", 5))
    fast = Sampler("ddim", 5, precision=precision)
    low = run(fast)
    cast = fast._fast[1].model
    assert low.dtype == torch.float32 and cast.pos_embed.dtype == PRECISIONS[precision]
    error = (low - reference).abs().max().item()
    assert 0 < error < 0.05 * reference.abs().max().item(), f"{precision} differs from fp32 by {error}"
    with torch.no_grad():
        model.final_layer.linear.bias.add_(1.0)  # e.g. the EMA moved between two callback calls
    moved = run(fast)
    assert fast._fast[1].model is cast, "the cast copy is made once and refreshed in place"
    assert (moved - run(Sampler("ddim", 5))).abs().max() < 0.05 * moved.abs().max(), (
        "it samples the new weights"
    )
    assert copy.deepcopy(fast)._fast is None, "a copied sampler carries its recipe, not the cast model"
    fast.compile = True  # compiled lazily: nothing runs here
    compiled = fast.inference_model(model, noise.device)
    assert fast._fast[1].model is not cast and compiled is not fast._fast[1], (
        "a sampler switched to compile makes a compiled copy, not the eager one it cached"
    )


def test_fp32_and_auto_on_cpu_sample_the_model_itself():
    model = nn.Linear(2, 2)
    for precision in ("fp32", "auto"):
        assert Sampler(precision=precision).inference_model(model, torch.device("cpu")) is model
    with pytest.raises(ValueError, match="precision"):
        Sampler(precision="int8")


#################################################################################
#                     train.py / sample.py with flow matching                   #
#################################################################################


def test_train_py_with_flow_matching_and_euler_trains_and_samples_guided_videos(tmp_path, monkeypatch):
    from utils.run import sample, train

    steps = []
    step = FlowMatching.step
    monkeypatch.setattr(
        FlowMatching, "step", lambda self, *args, **kw: steps.append(1) or step(self, *args, **kw)
    )
    overrides = ["diffusion=flow_matching", "sampler=euler", "data.num_classes=4", "sampler.cfg_scale=2.0"]
    cfg = compose_train(tmp_path, [*TINY, *overrides, "trainer.max_steps=2"])
    assert cfg.module.backbone.learn_sigma is False
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and "train/loss_vlb" not in metrics
    assert metrics["train/loss"] == metrics["train/loss_mse"]
    assert len(steps) == 4, "the video callback sampled once, with sampler.num_steps=4 Euler steps"
    assert (tmp_path / "run" / "samples" / "step_0000002.gif").is_file()

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    sampling = [
        "sampler=euler",
        "sampler.num_steps=2",
        "sampler.cfg_scale=2.0",
        "num_videos=2",
        f"ckpt_path={ckpt}",
    ]
    written = sample(compose_train(tmp_path / "s", sampling, config_name="sample"))
    assert (tmp_path / "s" / "run" / "grid.mp4") in written and len(steps) == 4 + 2
    with pytest.raises(InstantiationException, match="FlowMatching"):  # sample.yaml's default: ddpm
        sample(compose_train(tmp_path / "d", ["num_videos=2", f"ckpt_path={ckpt}"], config_name="sample"))


def test_the_issue_command_trains_a_causal_rope_latte_with_flow_matching_and_samples_with_euler(tmp_path):
    """`python train.py diffusion=flow_matching backbone.temporal_mask=causal backbone.temporal_pos=rope`: the
    quickstart's sampler follows the objective (quickstart_${diffusion}), so its videos come from Euler."""
    from utils.run import train

    command = ["diffusion=flow_matching", "backbone.temporal_mask=causal", "backbone.temporal_pos=rope"]
    cfg = compose_train(tmp_path, [*command, *TINY])
    assert cfg.sampler._target_ == "diffusion.EulerSampler"
    assert compose_train(tmp_path, TINY).sampler.method == "ddim", "Gaussian diffusion keeps DDIM"
    assert compose_train(tmp_path, [*TINY, "diffusion=latte"]).sampler.eta == 0, "Latte's: the ODE"
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and "train/loss_vlb" not in metrics
    assert (tmp_path / "run" / "samples" / "step_0000004.mp4").is_file()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    config = state["hyper_parameters"]["config"]
    assert config["module"]["backbone"]["temporal_mask"] == "causal"
    assert config["module"]["sampler"]["_target_"] == "diffusion.EulerSampler"


def test_train_py_refuses_euler_on_gaussian_diffusion_before_training(tmp_path):
    from utils.run import train

    with pytest.raises(InstantiationException, match="EulerSampler") as error:
        train(compose_train(tmp_path, [*TINY, "sampler=euler"]))
    assert "GaussianDiffusion" in str(error.value) and "full_key: module" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_metrics_callback_refuses_its_ddim_sampler_for_flow_matching_before_training(tmp_path):
    from metrics.standins import TinyVideoDetector, save_scripted
    from utils.run import train

    save_scripted(TinyVideoDetector(), tmp_path / "weights" / "i3d_torchscript.pt")
    overrides = [
        "diffusion=flow_matching",
        "sampler=euler",
        "callbacks=metrics",
        f"paths.weights_dir={tmp_path}/weights",
    ]
    with pytest.raises(ValueError, match="Sampler.*cannot sample the objective FlowMatching") as error:
        train(compose_train(tmp_path, [*TINY, *overrides]))
    assert "sampler=euler" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists(), "no step was trained"


def test_the_bf16_inference_path_samples_what_fp32_samples_within_bf16_tolerance_and_follows_the_weights():
    """sampler.precision=bf16 on the CPU: the weights cast once, the sampler's arithmetic fp32; the cast copy
    is refreshed from the model at every call (an EMA that moved is sampled as it is now)."""
    torch.manual_seed(0)
    model = Latte(size="tiny", patch_size=4, input_size=16, num_frames=4, in_channels=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # zero-initialised gates and head: make every block count
    noise = torch.randn(2, 4, 3, 16, 16)
    run = lambda sampler: sampler(model, GaussianDiffusion(num_timesteps=100), noise.shape, noise=noise)  # noqa: E731
    reference, fast = run(Sampler("ddim", 10, precision="fp32")), Sampler("ddim", 10, precision="bf16")
    out = run(fast)
    assert fast._fast[1].dtype == torch.bfloat16 and out.dtype == torch.float32
    rel = ((out - reference).norm() / reference.norm()).item()
    assert 0 < rel < 3e-2, f"bf16 DDIM-10 deviates by {rel:.3e} (relative L2) from fp32"
    with torch.no_grad():
        model.final_layer.linear.bias.add_(0.5)  # the weights move (an EMA update)
    moved = run(fast)
    assert ((moved - out).norm() / out.norm()).item() > 1e-2, "the cast copy must follow the model's weights"
