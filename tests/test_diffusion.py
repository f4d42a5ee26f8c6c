"""Tests of the Gaussian diffusion: closed forms, respacing, losses, DDPM/DDIM samplers and CFG (CPU)."""

import math

import numpy as np
import pytest
import torch

from diffusion.gaussian import (
    GaussianDiffusion,
    Sampler,
    classifier_free_guidance,
    discretized_gaussian_log_likelihood,
    normal_kl,
    space_timesteps,
)

#################################################################################
#                                  Helpers                                      #
#################################################################################


def reference_linear_schedule(num_timesteps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Betas and alphas_cumprod of the linear schedule, computed independently in float64."""
    betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
    return betas, np.cumprod(1.0 - betas)


def oracle_model(x0: torch.Tensor, learn_sigma: bool = True):
    """A model that returns the exact eps for the data distribution delta(x0), given ORIGINAL timesteps."""
    _, alphas_cumprod = reference_linear_schedule()
    abar = torch.from_numpy(alphas_cumprod)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].to(x.dtype).view(-1, 1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, -torch.ones_like(eps)], dim=2) if learn_sigma else eps

    return model


def gaussian_data_model(mu: float, std: float):
    """The exact eps predictor for i.i.d. data ~ N(mu, std^2) (no variance channels), given original t."""
    _, alphas_cumprod = reference_linear_schedule()
    abar = torch.from_numpy(alphas_cumprod)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].to(x.dtype).view(-1, 1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * std**2 + 1 - a)

    return model


#################################################################################
#                           Schedule and Closed Forms                           #
#################################################################################


def test_linear_schedule_endpoints_and_alpha_bar():
    diffusion = GaussianDiffusion()
    assert diffusion.betas.dtype == torch.float64
    assert diffusion.num_timesteps == 1000
    assert diffusion.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert diffusion.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert diffusion.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)
    assert torch.equal(diffusion.timestep_map, torch.arange(1000))


def test_cosine_schedule_and_unknown_schedule():
    diffusion = GaussianDiffusion(beta_schedule="squaredcos_cap_v2", learn_sigma=False)
    assert diffusion.betas.max().item() == pytest.approx(0.999)
    assert bool((diffusion.betas[1:] >= diffusion.betas[:-1]).all())
    with pytest.raises(ValueError, match="beta_schedule"):
        GaussianDiffusion(beta_schedule="quadratic")


def test_q_sample_matches_marginal_moments():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 3, 2, 2).expand(20000, -1, -1, -1, -1)
    t = torch.full((20000,), 300, dtype=torch.long)
    x_t = diffusion.q_sample(x0, t, torch.randn_like(x0))
    abar = reference_linear_schedule()[1][300]
    torch.testing.assert_close(x_t.mean(0), math.sqrt(abar) * x0[0], atol=0.03, rtol=0)
    torch.testing.assert_close(x_t.var(0), torch.full_like(x0[0], 1 - abar), atol=0.03, rtol=0)
    mean, variance, log_variance = diffusion.q_mean_variance(x0[:2], t[:2])
    torch.testing.assert_close(mean, math.sqrt(abar) * x0[:2])
    torch.testing.assert_close(log_variance, torch.log(variance))


def test_posterior_matches_bayes_rule():
    diffusion = GaussianDiffusion()
    betas, alphas_cumprod = reference_linear_schedule()
    torch.manual_seed(0)
    x0, x_t = torch.randn(2, 3, 2, 2, 4, 4, dtype=torch.float64).unbind(0)
    for step in (1, 10, 500, 999):
        t = torch.full((3,), step, dtype=torch.long)
        mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, x_t, t)
        # Bayes: q(x_{t-1}|x_t,x0) ∝ N(x_t; sqrt(a) x_{t-1}, b) N(x_{t-1}; sqrt(abar_prev) x0, 1 - abar_prev)
        alpha, abar_prev = 1 - betas[step], alphas_cumprod[step - 1]
        expected_var = 1 / (alpha / betas[step] + 1 / (1 - abar_prev))
        expected_mean = expected_var * (
            math.sqrt(alpha) * x_t / betas[step] + math.sqrt(abar_prev) * x0 / (1 - abar_prev)
        )
        torch.testing.assert_close(mean, expected_mean)
        torch.testing.assert_close(variance, torch.full_like(x0, expected_var))
        torch.testing.assert_close(log_variance, torch.full_like(x0, math.log(expected_var)))
    _, variance0, log_variance0 = diffusion.q_posterior_mean_variance(
        x0, x_t, torch.zeros(3, dtype=torch.long)
    )
    assert bool((variance0 == 0).all()), "the posterior at t=0 is a delta"
    torch.testing.assert_close(log_variance0, torch.log(diffusion.posterior_variance[1]).expand_as(x0))


def test_normal_kl_known_value_and_nonnegative():
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(2.0))
    # KL(N(0,1) || N(1,e^2)) = log(e/1) + (1 + 1) / (2 e^2) - 1/2
    assert kl.item() == pytest.approx(0.5 + math.exp(-2), rel=1e-6)
    torch.manual_seed(0)
    m1, lv1, m2, lv2 = torch.randn(4, 1000)
    assert bool((normal_kl(m1, lv1, m2, lv2) >= 0).all())
    torch.testing.assert_close(normal_kl(m1, lv1, m1, lv1), torch.zeros(1000), atol=1e-6, rtol=0)


def test_discretized_gaussian_likelihood_sums_to_one_over_bins():
    values = torch.linspace(-1, 1, 256).view(256, 1, 1, 1, 1).expand(256, 1, 1, 1, 3)
    means = torch.tensor([-0.3, 0.0, 0.8]).expand(256, 1, 1, 1, 3)
    log_scales = torch.log(torch.tensor([0.05, 0.2, 1.0])).expand(256, 1, 1, 1, 3)
    probs = discretized_gaussian_log_likelihood(values, means, log_scales).exp().sum(0)
    torch.testing.assert_close(probs, torch.ones_like(probs), atol=1e-4, rtol=0)


#################################################################################
#                                 Respacing                                     #
#################################################################################


def test_space_timesteps_250_and_respaced_betas():
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250
    assert kept[:5] == [0, 4, 8, 12, 16] and kept[-3:] == [991, 995, 999]
    assert kept == [round(i * 999 / 249) for i in range(250)]
    diffusion = GaussianDiffusion(timestep_respacing="250")
    assert diffusion.num_timesteps == 250
    assert diffusion.timestep_map.dtype == torch.long and diffusion.timestep_map.tolist() == kept
    assert diffusion.betas[0].item() == pytest.approx(1e-4, rel=1e-9)
    assert diffusion.betas[1].item() == pytest.approx(5.99e-4, rel=2e-3)
    assert diffusion.betas[249].item() == pytest.approx(0.0775, rel=2e-3)
    torch.testing.assert_close(diffusion.alphas_cumprod, GaussianDiffusion().alphas_cumprod[kept])


def test_space_timesteps_ddim_sections_and_errors():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "50")[:3] == [0, 20, 41] and space_timesteps(1000, "50")[-2:] == [979, 999]
    assert space_timesteps(1000, "") == list(range(1000)) == space_timesteps(1000, None)
    assert space_timesteps(100, "2,3") == [0, 49, 50, 74, 99]  # round(24.5) = 24 (half to even)
    assert space_timesteps(1000, "21")[10] == 499, "IDDPM sums 49.95 ten times: 499.4999..., not 499.5 -> 500"
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")  # strides 1 and 2 give 1000 and 500
    with pytest.raises(ValueError):
        space_timesteps(1000, "2000")


def test_respace_keeps_base_schedule_and_maps_timesteps():
    diffusion = GaussianDiffusion(timestep_respacing="250").respace("ddim50")
    assert diffusion.base_num_timesteps == 1000 and diffusion.num_timesteps == 50
    assert diffusion.timestep_map.tolist() == list(range(0, 1000, 20))
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], x.shape[1], 2 * x.shape[2], *x.shape[3:])

    diffusion.p_mean_variance(model, torch.zeros(2, 1, 1, 2, 2), torch.tensor([0, 49]))
    assert seen[0].tolist() == [0, 980], "the model must see original timesteps, not respaced indices"


#################################################################################
#                                Training Loss                                  #
#################################################################################


class TinyModel(torch.nn.Module):
    """A parameterised model with separate eps (w_eps) and variance (w_v) parameters."""

    def __init__(self):
        super().__init__()
        self.w_eps = torch.nn.Parameter(torch.tensor(0.5))
        self.w_v = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.w_eps * x, torch.tanh(self.w_v * x)], dim=2)


def test_training_losses_shapes_and_mse_by_hand():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0, noise, known_eps = torch.randn(3, 4, 2, 3, 4, 4).unbind(0)
    t = torch.tensor([0, 10, 999, 500])
    model = lambda x, t: torch.cat([known_eps, torch.zeros_like(known_eps)], dim=2)
    losses = diffusion.training_losses(model, x0, t, noise=noise)
    for key in ("loss", "mse", "vb"):
        assert losses[key].shape == (4,)
    torch.testing.assert_close(losses["mse"], ((noise - known_eps) ** 2).mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    assert bool((losses["vb"][1:] >= 0).all()), "a KL is non-negative"


def test_vlb_gradient_reaches_only_variance_channels():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0 = torch.randn(4, 2, 3, 4, 4)
    t = torch.tensor([0, 5, 400, 999])
    model = TinyModel()
    diffusion.training_losses(model, x0, t)["vb"].sum().backward()
    assert model.w_eps.grad is None or model.w_eps.grad.abs().item() == 0
    assert model.w_v.grad.abs().item() > 0
    model.zero_grad()
    diffusion.training_losses(model, x0, t)["mse"].sum().backward()
    assert model.w_eps.grad.abs().item() > 0


def test_vb_at_t0_is_decoder_nll():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 2, 2, 3, 4, 4).clamp(-1, 1).unbind(0)
    t = torch.zeros(2, dtype=torch.long)
    model = TinyModel()
    losses = diffusion.training_losses(model, x0, t, noise=noise)
    p = diffusion.p_mean_variance(model, diffusion.q_sample(x0, t, noise), t)
    nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"]).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(losses["vb"], nll / math.log(2.0))


def test_fixed_variance_loss_and_output_shape_assert():
    diffusion = GaussianDiffusion(learn_sigma=False)
    x0 = torch.randn(2, 2, 3, 4, 4)
    losses = diffusion.training_losses(lambda x, t: torch.zeros_like(x), x0, torch.tensor([3, 7]))
    assert torch.equal(losses["vb"], torch.zeros(2)) and torch.equal(losses["loss"], losses["mse"])
    p = diffusion.p_mean_variance(lambda x, t: torch.zeros_like(x), x0, torch.tensor([0, 7]))
    torch.testing.assert_close(p["variance"][0, 0, 0, 0, 0], diffusion.posterior_variance[1].float())
    torch.testing.assert_close(p["variance"][1, 0, 0, 0, 0], diffusion.betas[7].float())
    with pytest.raises(AssertionError, match="2c"):
        GaussianDiffusion().p_mean_variance(lambda x, t: torch.zeros_like(x), x0, torch.tensor([3, 7]))


def test_training_losses_draw_noise_from_prior():
    calls = []

    def prior(shape, generator=None, device=None, dtype=None):
        calls.append(shape)
        return torch.zeros(shape, device=device, dtype=dtype)

    x0 = torch.randn(2, 2, 1, 2, 2)
    losses = GaussianDiffusion().training_losses(
        lambda x, t: torch.cat([x, x], 2), x0, torch.tensor([999, 999]), noise_prior=prior
    )
    assert calls == [(2, 2, 1, 2, 2)]
    abar = reference_linear_schedule()[1][999]
    torch.testing.assert_close(losses["mse"], (math.sqrt(abar) * x0).pow(2).mean(dim=(1, 2, 3, 4)))


def x0_model_of(eps_model):
    """The x0 model that an eps model implies on Latte's linear schedule (it sees original timesteps)."""

    def x0_model(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a = torch.from_numpy(reference_linear_schedule()[1])[timesteps].to(x.dtype).view(-1, 1, 1, 1, 1)
        return (x - (1 - a).sqrt() * eps_model(x, timesteps)) / a.sqrt()

    return x0_model


def test_x0_prediction_trains_on_x0_and_gives_the_eps_models_reverse_steps():
    torch.manual_seed(0)
    x0, x, known = torch.randn(3, 4, 2, 3, 4, 4).unbind(0)
    t = torch.tensor([0, 10, 500, 999])
    for learn_sigma in (True, False):
        diffusion = GaussianDiffusion(learn_sigma=learn_sigma, prediction="x0")
        out = torch.cat([known, torch.zeros_like(known)], dim=2) if learn_sigma else known
        losses = diffusion.training_losses(lambda x, t, out=out: out, x0, t)
        torch.testing.assert_close(losses["mse"], ((x0 - known) ** 2).mean(dim=(1, 2, 3, 4)))
        assert torch.equal(losses["target"], x0) and torch.equal(losses["output"], known)
        assert torch.equal(diffusion.to_x0(out, losses["x_t"], t), known)
    # An x0 model and the eps model it implies give the same p(x_{t-1} | x_t) and jumps, respaced or not.
    eps_model = gaussian_data_model(0.5, 0.3)
    x0_model = x0_model_of(eps_model)
    for respacing in ("", "25"):
        eps_diffusion = GaussianDiffusion(learn_sigma=False, timestep_respacing=respacing)
        x0_diffusion = GaussianDiffusion(learn_sigma=False, timestep_respacing=respacing, prediction="x0")
        assert x0_diffusion.respace("10").prediction == "x0"
        steps = torch.tensor([0, 3, 11, 24])
        expected = eps_diffusion.p_mean_variance(eps_model, x, steps)
        found = x0_diffusion.p_mean_variance(x0_model, x, steps)
        for key in ("mean", "pred_xstart", "eps", "variance"):
            torch.testing.assert_close(found[key], expected[key], atol=1e-4, rtol=1e-4)
        jump = torch.tensor([-1, 1, 5, 20])
        torch.testing.assert_close(
            x0_diffusion.step(x0_model, x, steps, jump), eps_diffusion.step(eps_model, x, steps, jump)
        )
    with pytest.raises(ValueError, match="diffusion.prediction='v'"):
        GaussianDiffusion(prediction="v")


#################################################################################
#                                  Samplers                                     #
#################################################################################


def test_oracle_model_recovers_x0_with_ddpm_and_ddim():
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 3, 4, 4).expand(2, -1, -1, -1, -1)
    diffusion = GaussianDiffusion(timestep_respacing="25")
    shape = tuple(x0.shape)
    ddpm = diffusion.p_sample_loop(oracle_model(x0), shape, generator=torch.Generator().manual_seed(1))
    ddim = diffusion.ddim_sample_loop(oracle_model(x0), shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddpm, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(ddim, x0, atol=1e-4, rtol=0)
    fixed = GaussianDiffusion(learn_sigma=False, timestep_respacing="ddim20")
    torch.testing.assert_close(
        fixed.p_sample_loop(oracle_model(x0, learn_sigma=False), shape), x0, atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_samplers_match_gaussian_data_distribution(method):
    mu, std = 0.5, 0.3
    diffusion = GaussianDiffusion(learn_sigma=False, timestep_respacing="100")
    generator = torch.Generator().manual_seed(0)
    loop = diffusion.p_sample_loop if method == "ddpm" else diffusion.ddim_sample_loop
    samples = loop(gaussian_data_model(mu, std), (4000, 1, 1, 2, 2), generator=generator)
    assert samples.mean().item() == pytest.approx(mu, abs=0.01)
    assert samples.std().item() == pytest.approx(std, rel=0.05)


def test_ddim_eta0_is_deterministic_and_eta_uses_prior():
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(timestep_respacing="ddim10")
    model = TinyModel()
    noise = torch.randn(2, 2, 3, 4, 4)
    first = diffusion.ddim_sample_loop(
        model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1)
    )
    second = diffusion.ddim_sample_loop(
        model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(first, second)
    calls = []

    def prior(shape, generator=None, device=None, dtype=None):
        calls.append(shape)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    stochastic = diffusion.ddim_sample_loop(model, noise.shape, noise=noise, noise_prior=prior, eta=1.0)
    assert len(calls) == 10 and not torch.allclose(stochastic, first)


def test_p_sample_loop_draws_all_noise_from_prior():
    calls = []

    def prior(shape, generator=None, device=None, dtype=None):
        calls.append(shape)
        return torch.zeros(shape, device=device, dtype=dtype)

    diffusion = GaussianDiffusion(timestep_respacing="ddim5")
    out = diffusion.p_sample_loop(TinyModel(), (2, 2, 3, 4, 4), noise_prior=prior)
    assert len(calls) == 1 + 5 and all(shape == (2, 2, 3, 4, 4) for shape in calls)
    assert torch.equal(out, torch.zeros_like(out)), "all-zero noise and an eps linear in x stay at zero"


def test_steps_match_diffusers_schedulers():
    """Parity with an independent implementation: diffusers' DDPM (learned_range) and DDIM schedulers."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    b, f, c = 2, 3, 4
    model = lambda x, t: torch.cat([torch.sin(x + t.view(-1, 1, 1, 1, 1) / 1000), torch.tanh(x)], dim=2)
    x = torch.randn(b, f, c, 4, 4)
    ddpm = diffusers.DDPMScheduler(
        variance_type="learned_range", clip_sample=False, timestep_spacing="linspace"
    )
    ddpm.set_timesteps(250)
    ddim = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(50)
    for scheduler, diffusion in (
        (ddpm, GaussianDiffusion().respace("250")),
        (ddim, GaussianDiffusion().respace("ddim50")),
    ):
        assert torch.equal(scheduler.timesteps, diffusion.timestep_map.flip(0))
        for index, timestep in zip(range(diffusion.num_timesteps - 1, -1, -1), scheduler.timesteps.tolist()):
            t = torch.full((b,), index)
            out = model(x, diffusion.timestep_map[t]).flatten(0, 1)  # diffusers wants (b*f, c_out, h, w)
            if scheduler is ddpm:
                generator = torch.Generator().manual_seed(index)
                ref = scheduler.step(out, timestep, x.flatten(0, 1), generator=generator).prev_sample
                ours = diffusion.p_sample(model, x, t, generator=torch.Generator().manual_seed(index))[
                    "sample"
                ]
            else:
                ref = scheduler.step(out[:, :c], timestep, x.flatten(0, 1), eta=0.0).prev_sample
                ours = diffusion.ddim_sample(model, x, t)["sample"]
            torch.testing.assert_close(ours, ref.view_as(x), atol=1e-4, rtol=1e-4)
            x = ours


#################################################################################
#                        Classifier-Free Guidance                               #
#################################################################################


def label_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A toy model whose eps and variance channels depend on the label y."""
    label = y.to(x.dtype).view(-1, 1, 1, 1, 1)
    return torch.cat([x + label, torch.tanh(label / 10 + x)], dim=2)


def test_cfg_guides_eps_and_keeps_conditional_variance():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 2, 2)
    t = torch.tensor([5, 6, 7])
    y = torch.tensor([1, 2, 3])
    null_class, scale = 10, 4.0
    guided = classifier_free_guidance(label_model, scale, null_class)(x, t, y=y)
    cond = label_model(x, t, y)
    uncond = label_model(x, t, torch.full_like(y, null_class))
    torch.testing.assert_close(
        guided[:, :, :4], uncond[:, :, :4] + scale * (cond[:, :, :4] - uncond[:, :, :4])
    )
    torch.testing.assert_close(guided[:, :, 4:], cond[:, :, 4:])
    calls = []
    counting = lambda x, t, y: calls.append(len(x)) or label_model(x, t, y)
    classifier_free_guidance(counting, scale, null_class)(x, t, y=y)
    assert calls == [6], "the guided model runs the model once on the doubled batch"
    torch.testing.assert_close(classifier_free_guidance(label_model, 1.0, null_class)(x, t, y=y), cond)


def test_sampler_end_to_end_with_cfg_and_name():
    torch.manual_seed(0)
    diffusion = GaussianDiffusion()
    sampler = Sampler(method="ddim", num_steps="ddim50", cfg_scale=7.0, progress=True)
    assert sampler.name == "ddim50stride-eta0.0-cfg7.0"
    assert Sampler().name == "ddpm250" and "Sampler(method='ddpm'" in repr(Sampler())
    y = torch.tensor([0, 4])
    noise = torch.randn(2, 2, 4, 2, 2)
    out = sampler(label_model, diffusion, noise.shape, y=y, null_class=101, noise=noise)
    guided = classifier_free_guidance(label_model, 7.0, 101)
    expected = diffusion.respace("ddim50").ddim_sample_loop(
        guided, noise.shape, noise=noise, model_kwargs={"y": y}
    )
    assert out.shape == (2, 2, 4, 2, 2) and torch.equal(out, expected)
    sample = lambda: Sampler(num_steps=10)(
        TinyModel(), diffusion, (1, 2, 3, 2, 2), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(sample(), sample())


def test_sampler_validation_errors():
    with pytest.raises(ValueError, match="method"):
        Sampler(method="euler")
    with pytest.raises(ValueError, match="num_steps"):
        Sampler(num_steps="fast")
    with pytest.raises(ValueError, match="eta"):
        Sampler(method="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="null_class"):
        Sampler(cfg_scale=4.0)(label_model, GaussianDiffusion(), (1, 1, 4, 2, 2), y=torch.tensor([1]))


def test_the_tables_are_copied_to_a_device_once_and_not_pickled():
    """_extract reads a device's copy of each table, made once; a pickle or deep copy leaves copies out."""
    import copy
    import pickle

    diffusion = GaussianDiffusion()
    first = diffusion._on("betas", torch.device("meta"))
    assert diffusion._on("betas", torch.device("meta")) is first and first.device.type == "meta"
    for clone in (pickle.loads(pickle.dumps(diffusion)), copy.deepcopy(diffusion)):
        assert clone._on_device == {} and torch.equal(clone.betas, diffusion.betas)
