"""AAPT (lightning_modules/aapt.py): the loss functions, the per-frame discriminator, student forcing through
the shared rollout, the stage inits, resume of the GAN's two optimizers, a 2-D toy GAN on the same loss code,
and the three synthetic stages chained through train.py as the README writes them."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from backbones import FrameDiscriminator, Latte
from diffusion import FlowMatching
from diffusion.autoregressive import rollout
from lightning_modules.aapt import AAPTDistill, AAPTGan, FirstFrames, detach_cache, pseudo_huber
from lightning_modules.gan_losses import (
    approximate_penalty,
    perturb,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
)
from lightning_modules.init import from_checkpoint, in_order
from tests.conftest import TINY, compose_train
from tests.helpers.probes import EndProbe, StartProbe
from tests.test_module_base import assert_same_optimizer_states, last_checkpoint
from tests.test_readme import _readme_block, _run_script
from utils.run import train

pytestmark = pytest.mark.usefixtures("one_thread")  # many calls on a few tokens

C, SIZE = 3, 8  # latent channels and side of the tiny models
NEXT_FRAME = dict(size="tiny", patch_size=4, input_size=SIZE, in_channels=2 * C, out_channels=C, num_frames=4)
NEXT_FRAME |= dict(learn_sigma=False, temporal_mask="causal", temporal_pos="rope")


def next_frame_latte(seed: int = 0, **kwargs) -> Latte:
    """A tiny causal next-frame Latte (input [noise, previous]) whose all-zero tensors are perturbed."""
    torch.manual_seed(seed)
    model = Latte(**{**NEXT_FRAME, **kwargs})
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and not param.any():
                param.normal_(std=0.05)
    return model


def clips(frames: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Random latent clips (batch, frames, C, SIZE, SIZE)."""
    return torch.randn(batch, frames, C, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


#################################################################################
#                              Loss functions                                   #
#################################################################################


def test_relativistic_losses_and_penalty_on_hand_computed_logits():
    real = torch.tensor([[1.0, 2.0], [0.0, -1.0]])  # (b, f): per-frame logits, paired by batch index
    fake = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    diff = torch.tensor([1.0, 2.0, -1.0, 0.0])  # real - fake, pair by pair
    expected_g = sum(math.log1p(math.exp(d)) for d in diff.tolist()) / 4
    expected_d = sum(math.log1p(math.exp(-d)) for d in diff.tolist()) / 4
    assert relativistic_generator_loss(real, fake).item() == pytest.approx(expected_g)
    assert relativistic_discriminator_loss(real, fake).item() == pytest.approx(expected_d)
    assert approximate_penalty(real, real + torch.tensor([[0.5, 0.0], [0.0, 1.0]])).item() == pytest.approx(
        (0.25 + 1.0) / 4
    )
    fake.requires_grad_(True)
    real.requires_grad_(True)
    relativistic_generator_loss(real, fake).backward()
    assert real.grad is None, "G's loss takes no gradient into D's real logits"
    with pytest.raises(AssertionError, match="pair up"):
        relativistic_generator_loss(real[:1], fake)


def test_approximate_r1_is_sigma_squared_gradient_norm_to_first_order():
    torch.manual_seed(0)
    a = torch.randn(2, 2)
    weight = torch.tensor([0.7, -1.3])

    def critic(x: torch.Tensor) -> torch.Tensor:  # a smooth D: quadratic + sine
        return 0.5 * ((x @ a) * x).sum(-1) + torch.sin(x @ weight)

    x = torch.tensor([0.3, -0.4], requires_grad=True)
    (grad,) = torch.autograd.grad(critic(x), x)
    sigma, n = 0.05, 200_000
    many = x.detach().expand(n, 2)
    generator = torch.Generator().manual_seed(1)
    penalty = approximate_penalty(critic(many), critic(perturb(many, sigma, generator)))
    assert penalty.item() == pytest.approx(sigma**2 * grad.square().sum().item(), rel=0.03)


def test_a_2d_gan_on_the_same_loss_code_covers_the_eight_modes_of_a_ring():
    torch.manual_seed(0)
    centres = 2 * torch.stack(
        [torch.tensor([math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)]) for k in range(8)]
    )

    def ring(n: int) -> torch.Tensor:
        return centres[torch.randint(0, 8, (n,))] + 0.05 * torch.randn(n, 2)

    def mlp(inputs: int, outputs: int) -> nn.Module:
        hidden = [nn.Linear(32, 32), nn.LeakyReLU(0.2)]
        return nn.Sequential(nn.Linear(inputs, 32), nn.LeakyReLU(0.2), *hidden, nn.Linear(32, outputs))

    generator, critic = mlp(4, 2), mlp(2, 1)
    opt_g = torch.optim.Adam(generator.parameters(), 2e-3, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), 2e-3, betas=(0.0, 0.9))
    weight, sigma = 1.0, 0.1  # lambda sigma^2 = 0.01: R3GAN's gamma = 0.02

    def judge(x: torch.Tensor) -> torch.Tensor:
        return critic(x).squeeze(-1)  # (b,)

    for _ in range(600):
        real, fake = ring(128), generator(torch.randn(128, 4))
        real_logits, fake_logits = judge(real), judge(fake.detach())
        ar1 = approximate_penalty(real_logits, judge(perturb(real, sigma)))
        ar2 = approximate_penalty(fake_logits, judge(perturb(fake.detach(), sigma)))
        loss_d = relativistic_discriminator_loss(real_logits, fake_logits) + weight * (ar1 + ar2)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = relativistic_generator_loss(judge(real), judge(fake))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    with torch.no_grad():
        samples = generator(torch.randn(4000, 4))
    distance, mode = torch.cdist(samples, centres).min(dim=1)
    close = distance < 0.3
    per_mode = torch.bincount(mode[close], minlength=8)
    assert close.float().mean() > 0.25, f"only {close.float().mean():.2f} of the samples are near a mode"
    assert per_mode.min() >= 40, f"a mode is dropped: samples near each mode {per_mode.tolist()}"


#################################################################################
#                      Discriminator: a per-frame logit head                    #
#################################################################################


def test_the_discriminator_gives_one_causal_logit_per_frame_after_the_first():
    trunk = next_frame_latte(size="tiny")
    critic = FrameDiscriminator(trunk)
    assert critic.layers == [1, 2, 3], "APT's 16/36, 26/36, 36/36 of a depth of 4"
    video, t = clips(5), torch.tensor([100.0, 700.0])
    logits = critic(video, t)
    assert logits.shape == (2, 4)
    changed = video.clone()
    changed[:, 3] += 1.0
    after = critic(changed, t)
    assert torch.allclose(after[:, :2], logits[:, :2], atol=1e-5), "logits of frames before 3 do not change"
    assert not torch.allclose(after[:, 2:], logits[:, 2:]), "frame 3 is judged at positions 3 and 4"
    assert not trunk.final_layer.linear.weight.requires_grad, "the trunk's unused output layer is frozen"


def test_init_starts_the_generator_from_distill_and_the_discriminator_trunk_from_adapt(tmp_path):
    adapt, distill = next_frame_latte(seed=1), next_frame_latte(seed=2)
    for name, model in (("adapt", adapt), ("distill", distill)):
        state = {f"ema.{k}": v for k, v in model.state_dict().items()}
        torch.save({"state_dict": state}, tmp_path / f"{name}.ckpt")
    module = AAPTGan(
        backbone=next_frame_latte(seed=3),
        discriminator=FrameDiscriminator(next_frame_latte(seed=4)),
        autoencoder=_Identity(),
        diffusion=FlowMatching(shift=3.0),
        optimizer_g=torch.optim.RMSprop,
        optimizer_d=torch.optim.RMSprop,
    )
    step = {"generator": str(tmp_path / "distill.ckpt"), "discriminator": str(tmp_path / "adapt.ckpt")}
    into = {"generator": "backbone", "discriminator": "discriminator.trunk"}
    in_order(module, **{k: _partial_init(path, into[k]) for k, path in step.items()})
    for key, value in distill.state_dict().items():
        assert torch.equal(module.backbone.state_dict()[key], value)
        assert torch.equal(module.ema.state_dict()[key], value), "the generator's EMA follows its init"
    assert all(
        torch.equal(module.discriminator.trunk.state_dict()[k], v) for k, v in adapt.state_dict().items()
    )
    x, t = torch.cat([clips(4)[:, 1:], clips(4)[:, :-1]], dim=2), torch.tensor([10.0, 900.0])
    layers = module.discriminator.layers
    ours = module.discriminator.trunk.features(x, t, layers=layers).hidden
    theirs = adapt.features(x, t, layers=layers).hidden
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), "at step 0 D's trunk is the stage-1 trunk"


class _Identity(nn.Module):
    """A pixel-space 'autoencoder' of C channels."""

    latent_channels = C

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _partial_init(path: str, into: str):
    return lambda module: from_checkpoint(module, path, into=into)


def test_init_convert_fits_a_bidirectional_learn_sigma_latte_to_the_next_frame_input(tmp_path):
    torch.manual_seed(0)
    official = Latte(
        size="tiny", patch_size=4, input_size=SIZE, in_channels=C, num_frames=4, learn_sigma=True
    )
    torch.save({"ema": official.state_dict()}, tmp_path / "official.pt")
    module = AAPTDistill(
        backbone=next_frame_latte(seed=5),
        autoencoder=_Identity(),
        diffusion=FlowMatching(shift=3.0),
        optimizer=torch.optim.AdamW,
    )
    own_extra = module.backbone.x_embedder.proj.weight[:, C:].detach().clone()
    with pytest.raises(ValueError, match="does not fit"):
        from_checkpoint(module, str(tmp_path / "official.pt"))
    from_checkpoint(module, str(tmp_path / "official.pt"), convert=True)
    mine = module.backbone.state_dict()
    assert torch.equal(mine["x_embedder.proj.weight"][:, :C], official.x_embedder.proj.weight)
    assert torch.equal(mine["x_embedder.proj.weight"][:, C:], own_extra), "extra channels keep their own init"
    rows = official.final_layer.linear.weight.view(16, 2 * C, -1)[:, :C].reshape(16 * C, -1)
    assert torch.equal(mine["final_layer.linear.weight"], rows), "the variance channels are dropped"
    assert "temp_embed" not in mine


#################################################################################
#                 Student forcing: the rollout that inference runs              #
#################################################################################


def test_student_forcing_rollout_equals_the_inference_rollout_and_the_parallel_pass():
    model, objective = next_frame_latte().eval(), FlowMatching(shift=3.0)
    first, noise = clips(1, seed=2), clips(4, seed=3)
    trained = rollout(model, objective, first, noise)  # with gradients, as in AAPTGan.generator_step
    assert trained.requires_grad
    with torch.no_grad():
        streamed = rollout(model, objective, first, noise)
        made = torch.cat([first, streamed], dim=1)  # (b, 5, c, h, w)
        t = torch.full((2,), objective.timestep_scale)
        parallel = objective.to_x0(model(torch.cat([noise, made[:, :-1]], dim=2), t), noise, torch.ones(2))
    assert torch.allclose(trained, streamed, atol=1e-6)
    assert torch.allclose(parallel, streamed, atol=1e-5), "what D judges in one pass is what was streamed"


def test_gradients_reach_earlier_frames_through_the_kv_cache_only():
    model, objective = next_frame_latte().eval(), FlowMatching(shift=3.0)
    first, noise = clips(1, seed=2), clips(3, seed=3).requires_grad_(True)
    frames = rollout(model, objective, first, noise)  # recycled frames are detached
    (grad,) = torch.autograd.grad(frames[:, -1].square().sum(), noise)
    assert grad[:, 0].abs().sum() > 0, "the last frame's loss reaches frame 0's noise through the cache"

    cache, previous, outputs = model.new_cache(2), first, []
    for k in range(3):  # the same stream with the cache cut after every frame
        outputs.append(rollout(model, objective, previous, noise[:, k : k + 1], cache=cache))
        detach_cache(cache)
        previous = outputs[-1]
    assert torch.allclose(torch.cat(outputs, dim=1), frames, atol=1e-6)
    (cut,) = torch.autograd.grad(outputs[-1].square().sum(), noise)
    assert cut[:, 0].abs().sum() == 0, "with the cache detached (a new segment), no gradient reaches back"


def test_the_distilled_consistency_function_is_the_identity_at_t_zero():
    x = clips(3)
    assert pseudo_huber(torch.zeros_like(x), 0.1).abs().max() < 1e-6
    module = AAPTDistill(
        backbone=next_frame_latte(seed=5),
        autoencoder=_Identity(),
        diffusion=FlowMatching(shift=24.0),
        optimizer=torch.optim.AdamW,
    )
    assert module.grid[0] == 0 and module.grid[-1] == 1 and len(module.grid) == 33
    assert module.grid[1] == pytest.approx(24 / 32 / (1 + 23 / 32)), "32 uniform steps shifted by 24"
    previous = clips(3, seed=4)
    student = lambda x_t, t: module.backbone(torch.cat([x_t, previous], dim=2), t)  # noqa: E731
    assert torch.equal(module.consistency(student, x, torch.zeros(2), {}), x)


#################################################################################
#                    AAPTGan through train.py: steps and resume                 #
#################################################################################

# 6 clips in batches of 2: each batch makes one G and one (uncounted) D update: one global step a batch.
AAPT_GAN = [
    *TINY,
    "experiment=aapt_synthetic_gan",
    "init=scratch",
    "data.num_frames=3",
    "data.dataset.num_videos=6",
    "trainer.max_steps=4",
    "module.keep_first_frames=2",
    "module.segments=2",
]


def train_gan(root: Path, *overrides: str) -> Path:
    """Train a tiny AAPTGan in ``root/run`` through train(); the run folder."""
    train(compose_train(root, [*AAPT_GAN, *overrides]))
    return root / "run"


@pytest.fixture(scope="module")
def aapt_gan_runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("aapt_gan")
    StartProbe.seen.clear()
    EndProbe.seen.clear()
    probes = ["+callbacks.start._target_=tests.helpers.probes.StartProbe"]
    probes += ["+callbacks.end._target_=tests.helpers.probes.EndProbe"]
    runs = {
        "full": train_gan(root / "full", *probes),
        "half": train_gan(root / "half", "trainer.max_steps=2"),
    }
    half = runs["half"] / "checkpoints" / "last.ckpt"
    runs["resumed"] = train_gan(root / "resumed", *probes, f"ckpt_path={half}")
    return {**runs, "starts": list(StartProbe.seen), "modules": list(EndProbe.seen)}


@pytest.mark.slow
def test_aapt_gan_trains_with_two_optimizers_logs_losses_and_samples_from_kept_first_frames(aapt_gan_runs):
    checkpoint = last_checkpoint(aapt_gan_runs["full"])
    assert checkpoint["global_step"] == 4 and len(checkpoint["optimizer_states"]) == 2
    updates = [{int(state["step"]) for state in o["state"].values()} for o in checkpoint["optimizer_states"]]
    assert updates == [{4}, {4}], "4 batches: 4 generator and 4 (uncounted) discriminator updates"
    assert [type(o["param_groups"][0].get("alpha")) for o in checkpoint["optimizer_states"]] == [float] * 2
    module = aapt_gan_runs["modules"][0]
    assert isinstance(module, AAPTGan) and int(module.first_frames.count) == 2
    metrics = (aapt_gan_runs["full"] / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for name in (
        "train/loss_g",
        "train/loss_d",
        "train/ar1",
        "train/ar2",
        "train/logits_real",
        "train/logit_gap",
    ):
        assert name in metrics
    videos = module.sample(3, generator=torch.Generator().manual_seed(0))
    assert videos.shape == (3, 3, 3, 16, 16) and videos.abs().max() <= 1
    kept = module.first_frames.frames  # identity autoencoder: the first frames are pixels
    assert torch.allclose(videos[:, 0], kept[torch.tensor([0, 1, 0]), 0].clamp(-1, 1))


@pytest.mark.slow
def test_a_resumed_aapt_gan_restores_both_optimizer_states_and_repeats_the_full_run(aapt_gan_runs):
    fresh, resumed = aapt_gan_runs["starts"]
    assert fresh["step"] == 0 and all(not optimizer["state"] for optimizer in fresh["optim"])
    half = last_checkpoint(aapt_gan_runs["half"])
    assert resumed["step"] == half["global_step"] == 2
    assert_same_optimizer_states(resumed["optim"], half["optimizer_states"])
    full, end = last_checkpoint(aapt_gan_runs["full"]), last_checkpoint(aapt_gan_runs["resumed"])
    different = [k for k, v in full["state_dict"].items() if not torch.equal(v, end["state_dict"][k])]
    assert not different, f"the resumed run must end on the full run's weights: {different[:5]}"
    assert_same_optimizer_states(end["optimizer_states"], full["optimizer_states"])


#################################################################################
#                 The README's three stages, chained through train.py           #
#################################################################################

CHAIN_SHRINK = [o for o in TINY if not o.startswith(("logger=", "data.num_frames"))] + ["data.num_frames=3"]


@pytest.mark.slow
def test_the_readme_chains_the_three_synthetic_stages_through_checkpoints(tmp_path):
    block = _readme_block("experiment=aapt_synthetic_adapt")
    shrink = " ".join(CHAIN_SHRINK)
    lines = [f"{line} {shrink}" if line.startswith("python train.py") else line for line in block]
    result = _run_script(tmp_path, lines)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {
        stage: max((tmp_path / "logs" / f"aapt_synthetic_{stage}" / "runs").iterdir())
        for stage in ("adapt", "distill", "gan")
    }
    adapt = torch.load(runs["adapt"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    distill = torch.load(runs["distill"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    gan_start = [line for line in (runs["gan"] / "train.log").read_text().splitlines() if "loaded" in line]
    assert any("discriminator.trunk" in line for line in gan_start) and any(
        "into AAPTGan.backbone" in line for line in gan_start
    )
    assert {k.split(".")[0] for k in distill["state_dict"]} >= {"backbone", "teacher", "ema", "first_frames"}
    teacher = {
        k.removeprefix("teacher."): v for k, v in distill["state_dict"].items() if k.startswith("teacher.")
    }
    assert all(torch.equal(adapt["state_dict"][f"ema.{k}"], v) for k, v in teacher.items()), (
        "the teacher is stage 1"
    )
    assert (runs["gan"] / "samples").is_dir() and list((runs["gan"] / "samples").glob("*.mp4"))


def test_first_frames_fill_once_and_continue_after_a_load():
    """FirstFrames counts on the host (no wait per step), and reads its count again after loading a state."""
    kept = FirstFrames(3, (1, 2, 2))
    kept.remember(torch.full((2, 4, 1, 2, 2), 1.0))
    kept.remember(torch.full((2, 4, 1, 2, 2), 2.0))  # one more fits
    kept.remember(torch.full((2, 4, 1, 2, 2), 3.0))  # full: nothing changes
    assert int(kept.count) == 3 and kept.frames.flatten(1)[:, 0].tolist() == [1.0, 1.0, 2.0]
    half = FirstFrames(3, (1, 2, 2))
    half.remember(torch.full((1, 4, 1, 2, 2), 5.0))
    half.load_state_dict(FirstFrames(3, (1, 2, 2)).state_dict())  # an empty one: its count is 0
    half.remember(torch.full((1, 4, 1, 2, 2), 7.0))
    assert int(half.count) == 1 and half.frames[0].flatten()[0] == 7.0, "filled from the loaded count"
