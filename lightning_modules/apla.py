"""APLAFinetune: one-shot fine-tuning of a pretrained Latte with a noise-perturbing VGT, a hyper-loss and a
1x1 noise discriminator (APLA, Yao et al., arXiv 2308.12605).

From the paper (abstract, and third-party summaries of it): a pretrained diffusion model is fine-tuned on a
single video; a compact "Video Generation Transformer" (decoder-only; a pure and a hybrid transformer +
convolution "hyper" variant) extracts a perturbation from its input that refines the predicted noise; a
"Hyper-Loss" combines MSE, L1 and a perceptual loss; adversarial training uses a "1x1 discriminator"; quality
is measured by CLIP frame consistency and the CLIP text score.

Ours, each a config key (the paper's values are not public): the protocol of Tune-A-Video, which APLA builds
on (the trainable base parameters ``trainable``: the query projections and the temporal attention; lr 3e-5;
500 steps); the perturbation ``eps' = eps_theta + scale * delta`` at every model call (training and every
sampler) with a zero-initialised VGT output (backbones/vgt.py: its inputs, sizes and causal convolutions);
the VGT reading a detached eps_theta, so the base learns only through eps'; the hyper-loss weights (1, 1, 0.1)
and LPIPS-VGG on ``perceptual_frames`` random decoded frames per video, x0' = objective.to_x0(eps');
the discriminator's inputs (``adv_mode``: real = the true noise and fake = eps', or real = eps - eps_theta and
fake = delta), its loss (``adv_loss``: non-saturating, or relativistic), its weight, warm-up and optimizer
(Adam 1e-4, betas (0.5, 0.999)); no EMA (a few hundred steps: the live weights are sampled, and the base's
EMA, which init=checkpoint loads as the starting weights, is not updated); the base's learned variance
channels are kept as they are (no VLB term: Tune-A-Video trains with the MSE alone).

Data flow of one step (videos ``b f c h w``): video --encode--> x0 --noise prior, add_noise--> x_t;
x_t --backbone--> eps_theta; (x_t, eps_theta) --VGT--> delta; eps' = eps_theta + scale * delta;
D step on (real, fake).detach(); G step on hyper-loss(eps', eps) + adv_weight * adversarial(D(fake)).
Manual optimization; the discriminator's optimizer step is not counted in ``global_step`` (one per batch).
"""

import contextlib
import re
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from diffusion import InversionSampler, Objective, SamplerBase
from lightning_modules.base import VideoModule, uncounted
from lightning_modules.gan_losses import GAN_LOSSES
from utils.distributed import local

ADV_MODES = ("noise", "residual")
QUERY_ROWS = ":q"  # pattern suffix: only the query rows of a fused qkv projection (rows [q; k; v])

#################################################################################
#                          Trainable base parameters                            #
#################################################################################


def select_trainable(backbone: nn.Module, patterns: list[str]) -> dict[str, slice | None]:
    """Freeze ``backbone`` except the parameters whose names match a regex of ``patterns``; {name: rows}.

    ``{temporal}`` in a pattern stands for the index of any block that attends across frames (Latte's
    ``mixes_time``); a pattern ending in ``:q`` trains only the query rows (the first third) of the matched
    fused qkv weights and biases (``keep_query_rows`` zeroes their other rows' gradients). Every pattern
    must match something.
    """
    blocks = getattr(backbone, "blocks", [])
    temporal = "|".join(str(i) for i, block in enumerate(blocks) if getattr(block, "mixes_time", bool)())
    backbone.requires_grad_(False)
    params = dict(backbone.named_parameters())
    chosen: dict[str, slice | None] = {}
    for pattern in patterns:
        regex, rows = (
            (pattern[: -len(QUERY_ROWS)], True) if pattern.endswith(QUERY_ROWS) else (pattern, False)
        )
        regex = re.compile(regex.replace("{temporal}", f"(?:{temporal or '-'})"))
        matched = [name for name in params if regex.search(name)]
        if not matched:
            raise ValueError(f"module.trainable pattern {pattern!r} matches no backbone parameter")
        for name in matched:
            query = slice(0, params[name].shape[0] // 3) if rows else None
            chosen[name] = query if chosen.get(name, query) is not None else None  # a whole match wins
    for name in chosen:
        params[name].requires_grad_(True)
    return chosen


@torch.no_grad()
def keep_query_rows(backbone: nn.Module, chosen: dict[str, slice | None]) -> None:
    """Zero the gradient rows that ``select_trainable``'s ``:q`` patterns leave frozen (before the step).

    After the backward, not as a gradient hook: under trainer=fsdp the gradient is a DTensor sharded by rows
    (``Shard(0)``: rank r holds rows r * ceil(n / ranks) on) that FSDP writes after the hooks.
    """
    params = dict(backbone.named_parameters())
    for name, rows in chosen.items():
        grad = params[name].grad
        if rows is None or grad is None:
            continue
        first = 0  # the global index of this rank's first row
        if isinstance(grad, DTensor):
            assert grad.placements == (Shard(0),), f"{name}: FSDP shards rows, got {grad.placements}"
            first = grad.device_mesh.get_local_rank() * -(-grad.shape[0] // grad.device_mesh.size())
        mine = local(grad)  # (rows here, ...)
        index = torch.arange(first, first + mine.shape[0], device=mine.device)  # (rows here,)
        keep = (index >= rows.start) & (index < rows.stop)  # (rows here,)
        mine.mul_(keep.to(mine.dtype).view(-1, *[1] * (mine.dim() - 1)))


#################################################################################
#                                  Hyper-loss                                   #
#################################################################################


class HyperLoss:
    """w_mse MSE(eps', eps) + w_l1 L1(eps', eps) + w_perc LPIPS(decode(x0'), decode(x0)) on random frames.

    ``perceptual``: a factory of the LPIPS network (metrics.perceptual.lpips_network), built at the first
    step that needs it and never saved with the module (it has its own weights file).
    """

    def __init__(
        self,
        w_mse: float = 1.0,
        w_l1: float = 1.0,
        w_perc: float = 0.1,
        perceptual: Callable[[], nn.Module] | None = None,
        perceptual_frames: int = 2,
    ):
        if min(w_mse, w_l1, w_perc) < 0 or w_mse + w_l1 + w_perc == 0:
            raise ValueError(
                f"loss weights must be >= 0, not all 0: w_mse={w_mse}, w_l1={w_l1}, w_perc={w_perc}"
            )
        if w_perc > 0 and perceptual is None:
            raise ValueError("loss.w_perc > 0 needs loss.perceptual (the LPIPS network)")
        if not isinstance(perceptual_frames, int) or perceptual_frames < 1:
            raise ValueError(f"loss.perceptual_frames must be an int >= 1, got {perceptual_frames!r}")
        self.w_mse, self.w_l1, self.w_perc = w_mse, w_l1, w_perc
        self.perceptual, self.perceptual_frames = perceptual, perceptual_frames
        self.lpips: nn.Module | None = None

    def __call__(
        self,
        eps: torch.Tensor,
        target: torch.Tensor,
        x0_pred: Callable[[], torch.Tensor] | None = None,
        x0: torch.Tensor | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``loss`` and its terms ``mse``, ``l1``, ``perc`` (scalars) of eps' vs the true noise (b f c h w);
        x0_pred() gives x0' (b f c h w), decoded with ``decode`` (differentiable) for the perceptual term."""
        terms = {"mse": F.mse_loss(eps, target), "l1": F.l1_loss(eps, target)}
        terms["perc"] = torch.zeros_like(terms["mse"])
        if self.w_perc > 0:
            terms["perc"] = self.perceptual_term(x0_pred(), x0, decode, generator)
        terms["loss"] = self.w_mse * terms["mse"] + self.w_l1 * terms["l1"] + self.w_perc * terms["perc"]
        return terms

    def perceptual_term(
        self,
        x0_pred: torch.Tensor,
        x0: torch.Tensor,
        decode: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean LPIPS of decoded x0' vs x0 (b f c h w) on ``perceptual_frames`` random frames per video."""
        b, f = x0.shape[:2]
        k = min(self.perceptual_frames, f)
        scores = torch.rand(b, f, generator=generator, device=generator.device if generator else x0.device)
        frames = scores.argsort(dim=1)[:, :k].to(x0.device)  # (b, k) distinct random frames per video
        pick = lambda x: torch.stack([x[i, frames[i]] for i in range(b)])  # (b, k, c, h, w)
        if self.lpips is None:
            with torch.random.fork_rng(devices=[]):  # a random test network: the same one in every run,
                torch.manual_seed(0)  # and the training RNG stream (the resume) is not touched
                self.lpips = self.perceptual()
        lpips = self.lpips.to(x0.device) if isinstance(self.lpips, nn.Module) else self.lpips
        fake = decode(pick(x0_pred)).flatten(0, 1)  # (b*k, 3, H, W): gradients through the decoder
        with torch.no_grad():
            real = decode(pick(x0)).flatten(0, 1)  # (b*k, 3, H, W)
        return lpips(fake.float(), real.float()).mean()


#################################################################################
#                                  The module                                   #
#################################################################################


class APLAFinetune(VideoModule):
    """One-shot fine-tuning of a Latte with a VGT perturbation of its noise, a hyper-loss and a 1x1 D."""

    def __init__(
        self,
        backbone: nn.Module,
        autoencoder: nn.Module,
        diffusion: Objective,
        noise_prior: Callable[..., torch.Tensor],
        sampler: SamplerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: HyperLoss,
        vgt: nn.Module | None = None,
        scale: float = 1.0,
        trainable: list[str] | tuple[str, ...] = (),
        discriminator: nn.Module | None = None,
        disc_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        adv_mode: str = "noise",
        adv_loss: str = "nonsaturating",
        adv_weight: float = 0.05,
        adv_warmup_steps: int = 50,
    ):
        super().__init__()
        if backbone.in_channels != autoencoder.latent_channels:
            raise ValueError(
                f"backbone.in_channels={backbone.in_channels} but the autoencoder makes "
                f"{autoencoder.latent_channels}-channel latents"
            )
        if adv_mode not in ADV_MODES:
            raise ValueError(f"module.adv_mode={adv_mode!r} must be one of {ADV_MODES}")
        if adv_loss not in GAN_LOSSES:
            raise ValueError(f"module.adv_loss={adv_loss!r} must be one of {sorted(GAN_LOSSES)}")
        if adv_mode == "residual" and discriminator is not None and vgt is None:
            raise ValueError("module.adv_mode=residual judges the VGT's delta: it needs a vgt (not vgt=none)")
        if discriminator is not None and disc_optimizer is None:
            raise ValueError("a discriminator needs module.disc_optimizer")
        if adv_weight < 0 or adv_warmup_steps < 0:
            raise ValueError(
                f"module.adv_weight={adv_weight} and adv_warmup_steps={adv_warmup_steps} must be >= 0"
            )
        sampler.check(diffusion)
        self.automatic_optimization = False  # important! a generator step and a discriminator step per batch
        self.backbone = backbone
        self.trainable = list(trainable)
        self.query_rows = select_trainable(backbone, self.trainable)
        self.autoencoder = autoencoder
        self.diffusion = diffusion
        self.noise_prior = noise_prior
        self.sampler = sampler
        self.optimizer = optimizer
        self.loss = loss
        self.vgt = vgt
        self.scale = scale
        self.discriminator = discriminator
        self.disc_optimizer = disc_optimizer
        self.adv_mode, self.adv_weight, self.adv_warmup_steps = adv_mode, adv_weight, adv_warmup_steps
        self.d_loss_fn, self.g_loss_fn = GAN_LOSSES[adv_loss]
        shape = (1, backbone.num_frames, backbone.in_channels, backbone.input_size, backbone.input_size)
        self.register_buffer("video_latents", torch.zeros(shape))  # the training clip (DDIM inversion)
        self.register_buffer("video_label", torch.full((1,), -1, dtype=torch.long))  # -1: none seen yet
        self.video_kept: bool | None = None  # whether video_label is set, on the host; None: read it
        self.register_load_state_dict_post_hook(APLAFinetune.reread_video_kept)

    #############################################################################
    #                        The perturbed noise prediction                     #
    #############################################################################

    def predict(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone output (b f c_out h w), its eps_theta and the VGT's scaled delta (b f c h w) at x."""
        assert x.ndim == 5, f"latents must be (b, f, c, h, w), got {tuple(x.shape)}"
        out = self.backbone(x, t, y, **kwargs)  # (b, f, c_out, h, w)
        eps = out[:, :, : x.shape[2]]  # (b, f, c, h, w)
        if self.vgt is None:
            return out, eps, torch.zeros_like(eps)
        delta = self.scale * self.vgt(x, eps.detach(), t)  # (b, f, c, h, w)
        return out, eps, delta

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """What every sampler calls: the backbone's output with eps' = eps_theta + delta (b f c_out h w)."""
        out, eps, delta = self.predict(x, t, y, **kwargs)
        if self.vgt is None:
            return out  # (b, f, c_out, h, w)
        return torch.cat([eps + delta, out[:, :, eps.shape[2] :]], dim=2)  # (b, f, c_out, h, w)

    #############################################################################
    #                                  Training                                 #
    #############################################################################

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Latents b f c h' w' of pixels b f c h w, fp32."""
        assert video.ndim == 5, f"batch['video'] must be (b, f, c, h, w), got {tuple(video.shape)}"
        return self.autoencoder.encode(video).float()

    def step_losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Hyper-loss terms and the tensors of one batch: eps_theta, delta, eps', the noise."""
        cached = batch.get("latents")
        x0 = self.encode(batch["video"]) if cached is None else cached.float()  # (b, f, c, h', w')
        t = self.diffusion.sample_t(x0.shape[0], generator=generator, device=self.device)  # (b,)
        noise = self.noise_prior(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.diffusion.add_noise(x0, t, noise)  # (b, f, c, h', w')
        y = batch.get("label") if self.backbone.num_classes > 0 else None
        _, eps, delta = self.predict(x_t, self.diffusion.model_timesteps(t), y)  # (b, f, c, h', w') each
        perturbed = eps + delta  # (b, f, c, h', w')
        terms = self.loss(
            perturbed,
            noise,
            x0_pred=lambda: self.diffusion.to_x0(perturbed, x_t, t),
            x0=x0,
            decode=self.autoencoder.decode_with_grad,
            generator=generator,
        )
        return {**terms, "x0": x0, "y": y, "eps": eps, "delta": delta, "perturbed": perturbed, "noise": noise}

    def adversarial_pair(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, fake) noise tensors (b f c h w) the discriminator tells apart (``adv_mode``)."""
        if self.adv_mode == "noise":
            return out["noise"], out["perturbed"]
        return out["noise"] - out["eps"].detach(), out["delta"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        out = self.step_losses(batch)
        self.remember_video(out["x0"], out["y"])
        logs = {f"train/loss_{k}": out[k].detach() for k in ("mse", "l1", "perc")}
        loss = out["loss"]
        if self.discriminator is not None:
            real, fake = self.adversarial_pair(out)
            d_loss = self.d_loss_fn(self.discriminator(real.detach()), self.discriminator(fake.detach()))
            self.check_finite(d_loss, "train/loss_d")
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            with uncounted(opt_d):
                opt_d.step()
            logs["train/loss_d"] = d_loss.detach()
            if self.adv_weight > 0 and self.global_step >= self.adv_warmup_steps:
                with frozen(self.discriminator):
                    g_adv = self.g_loss_fn(
                        self.discriminator(real.detach()).detach(), self.discriminator(fake)
                    )
                loss = loss + self.adv_weight * g_adv
                logs["train/loss_adv"] = g_adv.detach()
        self.check_finite(loss, "train/loss")
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        keep_query_rows(self.backbone, self.query_rows)
        opt_g.step()
        logs["train/loss_hyper"] = out["loss"].detach()
        logs["train/delta_rms"] = out["delta"].detach().pow(2).mean().sqrt()
        self.log("train/loss", loss.detach())
        self.log_dict(logs)
        return loss.detach()

    @staticmethod
    def reread_video_kept(module: "APLAFinetune", incompatible_keys) -> None:
        """After loading weights: read video_label again at the next step."""
        module.video_kept = None

    @torch.no_grad()
    def remember_video(self, x0: torch.Tensor, y: torch.Tensor | None) -> None:
        """Keep the first training clip's latents (and label): sampling from its DDIM inversion needs them.
        Called every step: whether one is kept is known on the host too (reading the buffer would wait)."""
        if self.video_kept is None:
            self.video_kept = int(self.video_label) != -1
        if not self.video_kept:
            self.video_latents.copy_(x0[:1].to(self.video_latents.dtype))
            self.video_label.copy_(y[:1] if y is not None else torch.zeros_like(self.video_label))
            self.video_kept = True

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)  # same t and noise every time
        out = self.step_losses(batch, generator=generator)
        self.log("val/loss", out["loss"], sync_dist=True)
        self.log("val/loss_mse", out["mse"], sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        params += list(self.vgt.parameters()) if self.vgt is not None else []
        if not params:
            raise ValueError("nothing to train: module.trainable matches nothing and there is no vgt")
        opt_g = self.optimizer(params=params)
        if any(rows is not None for rows in self.query_rows.values()):
            decay = {group["weight_decay"] for group in opt_g.param_groups if "weight_decay" in group}
            if decay - {0}:
                raise ValueError(
                    f"module.optimizer.weight_decay={decay}: the ':q' patterns of module.trainable train "
                    "part of a tensor by masking its gradient, which weight decay would bypass; set it to 0"
                )
        if self.discriminator is None:
            return opt_g
        return [opt_g, self.disc_optimizer(params=self.discriminator.parameters())]

    #############################################################################
    #                                  Sampling                                 #
    #############################################################################

    @torch.no_grad()
    def sample(
        self,
        num_videos: int,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: SamplerBase | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Generate ``num_videos`` videos (b f c h w in [-1, 1]) with eps'; an InversionSampler starts from
        the DDIM inversion of the training clip. No EMA: ``use_ema`` is accepted and ignored."""
        sampler = sampler or self.sampler
        was_training = self.training
        self.eval()  # important! no label dropout while sampling
        base = self.backbone
        shape = (num_videos, base.num_frames, base.in_channels, base.input_size, base.input_size)
        noise, source = None, None
        if isinstance(sampler, InversionSampler):
            if int(self.video_label) == -1:
                raise ValueError(
                    "sampling from the inverted video needs a module fine-tuned on one (none seen)"
                )
            source = self.video_label.expand(num_videos) if base.num_classes > 0 else None
            noise = sampler.invert(self, self.diffusion, self.video_latents.expand(shape), y=source)
            if base.num_classes > 0 and y is None:
                y = source if sampler.label is None else torch.full_like(source, sampler.label)
        y = self.labels_for(y, base.num_classes, num_videos, generator)
        latents = sampler(
            self,
            self.diffusion,
            shape,
            y=y,
            null_class=base.num_classes if base.num_classes > 0 else None,
            noise_prior=self.noise_prior,
            generator=generator,
            device=self.device,
            noise=noise,
        )
        self.train(was_training)
        return self.autoencoder.decode(latents).clamp(-1, 1)


#################################################################################
#                              Manual optimization                              #
#################################################################################


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``module`` inside (its input still gets them): the generator's step."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
