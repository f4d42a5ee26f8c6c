"""APLA: the VGT (zero start, causal), the 1x1 discriminator, the hyper-loss terms, the GAN losses, the
trainable base parameters, single-video data, fine-tuning through train() (the loss falls; both optimizers
resume), sampling from the inverted video through sample.py, and the frame-consistency metrics."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning import seed_everything
from PIL import Image

from backbones import IdentityAutoencoder, Latte
from backbones.vgt import VGT, NoiseDiscriminator
from datamodules.index import single_video_index
from diffusion import GaussianDiffusion, IIDNoise, InversionSampler, Sampler
from lightning_modules.apla import APLAFinetune, HyperLoss, keep_query_rows, select_trainable
from lightning_modules.gan_losses import GAN_LOSSES
from metrics.consistency import CLIPFrames, CLIPTextScore, FrameConsistency, PixelFrames
from metrics.perceptual import lpips_network
from tests.conftest import ROOT, TINY, compose_train
from tests.helpers.probes import EndProbe
from utils.run import load_module, sample, train

F_, C, S = 4, 3, 16  # frames, channels, size of the tiny pixel-space videos
TRAINABLE = [r"blocks\.\d+\.attn\.qkv\.(weight|bias):q", r"blocks\.{temporal}\.attn\."]
TINY_CLIP = {  # a transformers CLIPConfig of a few thousand parameters
    "text_config": dict(
        vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    ),
    "vision_config": dict(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    ),
    "projection_dim": 8,
}
# the synthetic APLA preset shrunk to seconds: 4 frames of 16^2, VGT patches of 4
APLA_RUN = [
    "experiment=apla_synthetic",
    *TINY,
    "data.batch_size=1",
    "data.dataset.num_videos=1",
    "vgt.patch_size=4",
]
APLA_RUN += ["callbacks.metrics.every_n_steps=8", "module.adv_warmup_steps=2"]


def tiny_latte(num_classes: int = 0) -> Latte:
    """A 4-block pixel-space Latte on 4 frames of 16x16, its zero-initialised gates and head made non-zero (as
    in a trained model, so that every block reaches the output)."""
    torch.manual_seed(0)
    latte = Latte(
        size="tiny", patch_size=4, input_size=S, in_channels=C, num_frames=F_, num_classes=num_classes
    )
    with torch.no_grad():
        for parameter in latte.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return latte


def tiny_vgt(variant: str = "pure", random_output: bool = False) -> VGT:
    """A small VGT for the tiny videos; ``random_output``: a non-zero head (a trained VGT)."""
    torch.manual_seed(1)
    vgt = VGT(C, S, F_, patch_size=4, hidden_size=32, depth=2, num_heads=4, variant=variant)
    if random_output:
        torch.nn.init.normal_(vgt.out.weight, std=0.1)
    return vgt


def apla_parts(vgt: VGT | None = None, discriminator: bool = False, **kwargs) -> dict:
    """APLAFinetune's arguments around the tiny Latte: MSE + L1 (no LPIPS unless ``loss`` is given)."""
    return (
        dict(
            backbone=tiny_latte(),
            autoencoder=IdentityAutoencoder(),
            diffusion=GaussianDiffusion(num_timesteps=100),
            noise_prior=IIDNoise(),
            sampler=Sampler("ddim", num_steps=4),
            optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0),
            loss=HyperLoss(w_mse=1.0, w_l1=1.0, w_perc=0.0),
            vgt=vgt,
            trainable=TRAINABLE,
            discriminator=NoiseDiscriminator(C) if discriminator else None,
            disc_optimizer=(lambda params: torch.optim.Adam(params, lr=1e-4)) if discriminator else None,
        )
        | kwargs
    )


def module(vgt: VGT | None = None, discriminator: bool = False, **kwargs) -> APLAFinetune:
    """An APLAFinetune around the tiny Latte."""
    return APLAFinetune(**apla_parts(vgt, discriminator, **kwargs))


#################################################################################
#                              VGT and discriminator                            #
#################################################################################


def test_a_fresh_vgt_leaves_the_base_models_samples_bit_identical():
    plain, perturbed = module(vgt=None), module(vgt=tiny_vgt("hyper"))
    assert all(
        torch.equal(a, b) for a, b in zip(plain.backbone.parameters(), perturbed.backbone.parameters())
    )
    draw = lambda m: m.sample(2, generator=torch.Generator().manual_seed(0))  # noqa: E731
    base = plain.sampler(
        plain.backbone,
        plain.diffusion,
        (2, F_, C, S, S),
        noise_prior=plain.noise_prior,
        generator=torch.Generator().manual_seed(0),
    ).clamp(-1, 1)
    assert torch.equal(draw(perturbed), draw(plain)) and torch.equal(draw(plain), base)
    trained = module(vgt=tiny_vgt("hyper", random_output=True))
    assert not torch.equal(draw(trained), base), "a non-zero VGT does change the samples"


@pytest.mark.parametrize("variant", ["pure", "hyper"])
def test_the_vgt_is_causal_over_frames(variant):
    vgt = tiny_vgt(variant, random_output=True)
    x, eps, t = torch.randn(2, F_, C, S, S), torch.randn(2, F_, C, S, S), torch.tensor([5, 50])
    delta = vgt(x, eps, t)
    assert delta.shape == x.shape and delta.abs().sum() > 0
    for k in range(F_):
        x2, eps2 = x.clone(), eps.clone()
        x2[:, k] += 1.0
        eps2[:, k] -= 1.0
        changed = vgt(x2, eps2, t)
        assert torch.allclose(changed[:, :k], delta[:, :k], atol=1e-6), f"frame {k} reached an earlier frame"
        assert not torch.allclose(changed[:, k], delta[:, k]), f"frame {k} must change its own delta"


def test_the_discriminator_gives_one_logit_per_location_that_sees_only_that_location():
    torch.manual_seed(0)
    discriminator = NoiseDiscriminator(C)
    noise = torch.randn(2, F_, C, S, S)
    logits = discriminator(noise)
    assert logits.shape == (2, F_, S, S)
    moved = noise.clone()
    moved[1, 2, :, 5, 7] += 3.0
    difference = (discriminator(moved) - logits).abs() > 0
    assert difference[1, 2, 5, 7] and difference.sum() == 1


def test_gan_losses_against_their_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected_d = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(1.0)) / 2
    (nonsaturating_d, nonsaturating_g), (relativistic_d, relativistic_g) = GAN_LOSSES.values()
    assert nonsaturating_d(real, fake).item() == pytest.approx(expected_d)
    assert nonsaturating_g(real, fake).item() == pytest.approx((softplus(-0.5) + softplus(-1.0)) / 2)
    assert relativistic_d(real, fake).item() == pytest.approx((softplus(0.5 - 2.0) + softplus(1.0 + 1.0)) / 2)
    assert relativistic_g(real, fake).item() == pytest.approx(
        (softplus(2.0 - 0.5) + softplus(-1.0 - 1.0)) / 2
    )


#################################################################################
#                          Trainable parameters, hyper-loss                     #
#################################################################################


def test_only_the_query_rows_and_the_temporal_attention_train():
    latte = tiny_latte()
    chosen = select_trainable(latte, TRAINABLE)
    d = latte.blocks[0].attn.qkv.weight.shape[1]
    assert chosen["blocks.0.attn.qkv.weight"] == slice(0, d), "spatial qkv: only the query rows"
    assert chosen["blocks.1.attn.qkv.weight"] is None and "blocks.1.attn.proj.weight" in chosen, (
        "temporal: all"
    )
    assert "blocks.0.attn.proj.weight" not in chosen and not latte.x_embedder.proj.weight.requires_grad
    x, t = torch.randn(1, F_, C, S, S), torch.tensor([10])
    latte(x, t).square().mean().backward()
    keep_query_rows(latte, chosen)
    grad = latte.blocks[0].attn.qkv.weight.grad
    assert grad[:d].abs().sum() > 0 and torch.equal(grad[d:], torch.zeros_like(grad[d:]))
    with pytest.raises(ValueError, match="matches no backbone parameter"):
        select_trainable(tiny_latte(), ["to_q"])


def test_each_hyper_loss_term_against_a_hand_computation():
    torch.manual_seed(0)
    eps, target = torch.randn(2, F_, C, S, S), torch.randn(2, F_, C, S, S)
    x0, x0_pred = torch.rand(2, F_, C, S, S) * 2 - 1, torch.rand(2, F_, C, S, S) * 2 - 1
    image_distance = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)  # noqa: E731 (a stand-in)
    loss = HyperLoss(w_mse=0.5, w_l1=2.0, w_perc=3.0, perceptual=lambda: image_distance, perceptual_frames=2)
    decoded = []
    decode = lambda z: decoded.append(z) or z * 2  # noqa: E731 (a decoder that doubles)
    terms = loss(eps, target, lambda: x0_pred, x0, decode, generator=torch.Generator().manual_seed(3))
    assert terms["mse"].item() == pytest.approx(((eps - target) ** 2).mean().item(), rel=1e-6)
    assert terms["l1"].item() == pytest.approx((eps - target).abs().mean().item(), rel=1e-6)
    frames = torch.rand(2, F_, generator=torch.Generator().manual_seed(3)).argsort(dim=1)[
        :, :2
    ]  # as documented
    hand = np.mean(
        [(2 * x0_pred[i, j] - 2 * x0[i, j]).abs().mean().item() for i in range(2) for j in frames[i].tolist()]
    )
    assert terms["perc"].item() == pytest.approx(hand, rel=1e-6)
    assert decoded[0].shape == (2, 2, C, S, S), "only perceptual_frames frames per video are decoded"
    total = 0.5 * terms["mse"] + 2.0 * terms["l1"] + 3.0 * terms["perc"]
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_the_perceptual_term_is_lpips_through_the_decoder_and_its_weights_come_from_the_registry(tmp_path):
    lpips = lpips_network("vgg", pretrained=False)
    a, b = torch.rand(2, 3, S, S) * 2 - 1, torch.rand(2, 3, S, S) * 2 - 1
    assert lpips(a, a).abs().max() < 1e-6 and (lpips(a, b) > 0).all()
    latents = (torch.rand(1, F_, C, S, S) * 2 - 1).requires_grad_(True)
    loss = HyperLoss(w_mse=0.0, w_l1=0.0, w_perc=1.0, perceptual=lambda: lpips)
    terms = loss(
        latents, latents, lambda: latents * 0.5, latents.detach(), IdentityAutoencoder().decode_with_grad
    )
    terms["loss"].backward()
    assert latents.grad.abs().sum() > 0, "gradients reach x0' through the (frozen) decoder"
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        lpips_network("vgg", pretrained=True, weights_dir=str(tmp_path))
    torchvision_layout = {  # torchvision's vgg16 state dict keys: features.<index>.<weight|bias>
        f"features.{i}.{name}": tensor
        for stage in lpips.net.children()
        for i, layer in stage.named_children()
        for name, tensor in layer.named_parameters()
    }
    torch.save({k: torch.full_like(v, 0.01) for k, v in torchvision_layout.items()}, tmp_path / "vgg.pth")
    loaded = lpips_network("vgg", pretrained=True, path=str(tmp_path / "vgg.pth"))
    assert all((p == 0.01).all() for p in loaded.net.parameters())


#################################################################################
#                              Single-video data                                #
#################################################################################


def frame_folder(path: Path, frames: int) -> Path:
    """A folder of ``frames`` 20x24 PNG frames named ``f_<k>.png``."""
    path.mkdir(parents=True)
    for k in range(frames):
        Image.fromarray(np.full((20, 24, 3), 10 * k, dtype=np.uint8)).save(path / f"f_{k}.png")
    return path


def test_single_video_data_cuts_one_video_into_clips_and_names_a_bad_one(tmp_path):
    video = frame_folder(tmp_path / "video", 12)
    cfg = compose_train(
        tmp_path,
        [
            "data=single_video",
            f"data.root={video}",
            "data.num_frames=4",
            "data.resolution=16",
            "data.num_workers=0",
            "data.dataset.index.clips_per_epoch=5",
            "data.batch_size=1",
        ],
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["video"].shape == (1, 4, 3, 16, 16) and len(datamodule.splits["train"]) == 5
    levels = batch["video"][0, :, 0, 0, 0]  # frame k has value 10 k: stride 2 apart
    steps = torch.round((levels + 1) * 127.5 / 10).diff()
    assert torch.equal(steps, torch.full((3,), 2.0))
    short = frame_folder(tmp_path / "short", 5)
    with pytest.raises(ValueError, match=f"'{short}' has 5 frames"):
        single_video_index(short, "train", num_frames=4, frame_interval=2)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(ValueError, match=f"'{broken}' could not be read"):
        single_video_index(broken, "train", num_frames=4, frame_interval=2)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        single_video_index(tmp_path / "missing.mp4", "train", num_frames=4, frame_interval=2)


#################################################################################
#                            Fine-tuning through train()                        #
#################################################################################


@torch.no_grad()
def hyper_loss_on(apla: APLAFinetune, video: torch.Tensor, draws: int = 16) -> float:
    """The mean hyper-loss of ``video`` over ``draws`` fixed (t, noise) draws."""
    generator = torch.Generator().manual_seed(0)
    return float(
        np.mean([apla.step_losses({"video": video}, generator)["loss"].item() for _ in range(draws)])
    )


@pytest.fixture(scope="module")
def apla_runs(tmp_path_factory) -> dict:
    """Tiny apla_synthetic runs: "full" (8 steps), "half" (4) and "resumed" (from half to 8)."""
    root = tmp_path_factory.mktemp("apla")
    EndProbe.seen.clear()
    probe = "+callbacks.end._target_=tests.helpers.probes.EndProbe"
    run = lambda name, *extra: train(compose_train(root / name, [*APLA_RUN, "trainer.max_steps=8", *extra]))  # noqa: E731
    metrics = run("full", probe)
    run("half", "trainer.max_steps=4")
    run("resumed", f"ckpt_path={root / 'half' / 'run' / 'checkpoints' / 'last.ckpt'}")
    return {"root": root, "metrics": metrics, "module": EndProbe.seen[0]}


def test_the_synthetic_preset_logs_every_loss_term_and_the_consistency_of_its_samples(apla_runs):
    metrics = apla_runs["metrics"]
    for key in ["loss", "loss_mse", "loss_l1", "loss_perc", "loss_d", "loss_adv", "delta_rms"]:
        assert math.isfinite(metrics[f"train/{key}"]), key
    assert -1 <= metrics["val/fci_pixels"] <= 1 and -1 <= metrics["val/fci_pixels_consecutive"] <= 1
    apla = apla_runs["module"]
    assert isinstance(apla, APLAFinetune) and apla.vgt.variant == "hyper"
    assert apla.vgt.out.weight.abs().sum() > 0, "the VGT's head left zero"
    checkpoint = torch.load(
        apla_runs["root"] / "full" / "run" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert checkpoint["global_step"] == 8, "one global step per batch, though two optimizers step"
    assert not any(k.startswith(("autoencoder.", "ema.")) for k in checkpoint["state_dict"])


def test_a_resumed_apla_run_restores_both_optimizers_and_ends_where_the_full_run_does(apla_runs):
    root = apla_runs["root"]
    load = lambda name: torch.load(  # noqa: E731
        root / name / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    full, half, resumed = load("full"), load("half"), load("resumed")
    assert len(half["optimizer_states"]) == 2 and all(s["state"] for s in half["optimizer_states"])
    assert resumed["global_step"] == full["global_step"] == 8
    for mine, theirs in zip(resumed["optimizer_states"], full["optimizer_states"]):
        for index, state in theirs["state"].items():
            assert all(torch.allclose(mine["state"][index][k], v, atol=1e-6) for k, v in state.items())
    different = [
        k for k, v in full["state_dict"].items() if not torch.allclose(v, resumed["state_dict"][k], atol=1e-6)
    ]
    assert not different, f"the resumed run must end on the full run's weights: {different[:5]}"


@pytest.mark.slow
def test_a_short_cpu_fine_tune_lowers_the_hyper_loss_on_the_training_video(tmp_path):
    EndProbe.seen.clear()
    overrides = [*APLA_RUN, "trainer.max_steps=60", "trainer.val_check_interval=1000"]
    overrides += [
        "callbacks.video_sampler.every_n_steps=1000",
        "+callbacks.end._target_=tests.helpers.probes.EndProbe",
    ]
    cfg = compose_train(tmp_path, overrides)
    seed_everything(cfg.seed)  # as train() does: the module starts from the same weights
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    before = instantiate(cfg.module)
    video = datamodule.splits["train"][0]["video"][None]  # (1, f, c, h, w): the video it fine-tunes on
    start = hyper_loss_on(before, video)
    train(cfg)
    end = hyper_loss_on(EndProbe.seen[0].cpu(), video)
    assert end < 0.9 * start, (start, end)  # 1.81 -> 1.51 in 60 steps when written


#################################################################################
#                       Sampling: sample.py, the inverted video                 #
#################################################################################


def test_ddim_inversion_then_ddim_returns_the_video_for_a_model_of_constant_noise():
    diffusion, video = GaussianDiffusion(100, learn_sigma=False), torch.rand(1, F_, C, S, S) * 2 - 1
    e = torch.randn(1, F_, C, S, S)
    model = lambda x, t, **kwargs: e.expand_as(x)  # noqa: E731 (predicts e everywhere)
    sampler = InversionSampler(num_steps=5, inversion_steps=5)
    noise = sampler.invert(model, diffusion, video)
    abar = diffusion.respace("5").alphas_cumprod[-1].item()
    assert torch.allclose(noise, math.sqrt(abar) * video + math.sqrt(1 - abar) * e, atol=1e-5)
    back = sampler(model, diffusion, video.shape, noise=noise)
    assert torch.allclose(back, video, atol=1e-4)
    assert sampler.tag == "ddim5-inv5" and InversionSampler(4, label=3).tag == "ddim4-inv4-label3"


def test_an_apla_module_samples_from_its_inverted_video_with_its_label_or_the_edit_label():
    apla = module(vgt=tiny_vgt(random_output=True))
    sampler = InversionSampler(num_steps=2, inversion_steps=2)
    with pytest.raises(ValueError, match="inverted video"):
        apla.sample(1, sampler=sampler)
    apla.remember_video(torch.rand(1, F_, C, S, S) * 2 - 1, None)
    first, second = apla.sample(2, sampler=sampler), apla.sample(2, sampler=sampler)
    assert first.shape == (2, F_, C, S, S) and torch.equal(first, second), "DDIM both ways: deterministic"
    labels = []
    conditional = APLAFinetune(**{**apla_parts(), "backbone": tiny_latte(num_classes=5)})
    conditional.backbone.forward = lambda x, t, y=None, **kw: (
        labels.append(y) or torch.zeros(*x.shape[:2], 2 * C, S, S)
    )
    conditional.remember_video(torch.zeros(1, F_, C, S, S), torch.tensor([3]))
    conditional.sample(1, sampler=sampler)
    conditional.sample(1, sampler=InversionSampler(num_steps=2, label=1))
    assert [y.tolist() for y in labels] == [[3]] * 4 + [[3]] * 2 + [[1]] * 2, "inverted as 3, edited into 1"


def test_sample_py_samples_an_apla_checkpoint_from_noise_and_from_the_inverted_video(apla_runs, tmp_path):
    ckpt = apla_runs["root"] / "full" / "run" / "checkpoints" / "last.ckpt"
    for choice in ["ddim", "ddim_inversion"]:
        overrides = [f"ckpt_path={ckpt}", f"sampler={choice}", "sampler.num_steps=3", "num_videos=2"]
        cfg = compose_train(tmp_path / choice, overrides, config_name="sample")
        assert type(load_module(str(ckpt), cfg, overrides=overrides)) is APLAFinetune
        written = sample(cfg)
        assert written[0].name == "grid.mp4" and written[0].is_file()


#################################################################################
#                                    Metrics                                    #
#################################################################################


def test_frame_consistency_and_clip_text_score_against_hand_computations():
    torch.manual_seed(0)
    videos = torch.rand(2, 3, 3, S, S) * 2 - 1
    metric = FrameConsistency(PixelFrames(), name="fci")
    metric.update(videos)
    values = metric.compute()
    e = F.normalize(videos.flatten(2) - videos.flatten(2).mean(dim=2, keepdim=True), dim=2).double()
    sim = e @ e.transpose(1, 2)  # (2, 3, 3)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    assert values["fci"].item() == pytest.approx(np.mean([[s[i, j].item() for i, j in pairs] for s in sim]))
    consecutive = np.mean([[s[0, 1].item(), s[1, 2].item()] for s in sim])
    assert values["fci_consecutive"].item() == pytest.approx(consecutive)
    torch.manual_seed(0)
    clip = CLIPFrames(config=TINY_CLIP)
    score = CLIPTextScore(clip, prompt="a man is skiing")
    score.update(videos)
    frames = F.normalize(clip.embed(videos.flatten(0, 1)), dim=-1)
    hand = (100 * frames @ clip.text("a man is skiing")).mean().item()
    assert score.compute()["clip_text"].item() == pytest.approx(hand, rel=1e-4)
    clip_consistency = FrameConsistency(clip)
    clip_consistency.update(videos)
    assert -1 <= clip_consistency.compute()["fci"] <= 1


def test_a_missing_clip_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip-vit-large-patch14"):
        CLIPFrames(weights_dir=str(tmp_path))
    with pytest.raises(ValueError, match="prompt"):
        CLIPTextScore(CLIPFrames(config=TINY_CLIP), prompt=None)


#################################################################################
#                                   The bench                                   #
#################################################################################


@pytest.mark.slow
def test_the_apla_step_bench_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "apla_step.py"), "--tiny", "--steps", "1", "--warmup", "1"]
        + ["--json", str(tmp_path / "apla.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "apla.json").read_text())
    assert record["device"] == "cpu" and record["torch"] == torch.__version__ and record["date"]
    assert [row["config"].split(" ")[0] for row in record["rows"]] == ["base", "VGT-Pure", "VGT-Hyper"]
    assert all(row["step_ms"] > 0 for row in record["rows"])
    params = [row["trainable_params"] for row in record["rows"]]
    assert params[0] < params[1] < params[2], "the VGT and discriminator add trainable parameters"
    assert "| VGT-Hyper + 1x1 D + hyper-loss |" in result.stdout


def test_evaluate_py_reports_apla_metrics_of_an_apla_checkpoint(apla_runs, tmp_path):
    from metrics.evaluation import evaluate

    ckpt = apla_runs["root"] / "full" / "run" / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt_path={ckpt}", "metrics=apla", "metrics.num_frames=4", "prompt=a red square"]
    overrides += [
        "num_videos=2",
        "batch_size=1",
        "sampler=ddim_inversion",
        "sampler.num_steps=2",
        "progress=false",
    ]
    cfg = compose_train(tmp_path, overrides, config_name="evaluate")
    for metric in cfg.metrics.metrics.values():  # a random CLIP stands in for ViT-L/14 (no weights here)
        metric.detector.config = TINY_CLIP
    record = evaluate(cfg)
    assert sorted(record["values"]) == ["clip_text", "fci", "fci_consecutive"]
    values = record["values"]
    assert (
        -1 <= values["fci"] <= 1
        and -1 <= values["fci_consecutive"] <= 1
        and -100 <= values["clip_text"] <= 100
    )
    assert record["source"]["sampler"] == "ddim2-inv2"
    assert (tmp_path / "run" / "metrics.json").is_file()
