"""LatteDiffusion: train a Latte backbone as a latent video diffusion model, sample with its EMA weights.

Data flow of one training step (all videos are ``b f c h w``)::

    video (pixels in [-1, 1]) --autoencoder.encode--> x0 (latents) --noise_prior, q_sample--> x_t
    x_t, t, y --backbone--> eps (+ variance) --diffusion.training_losses--> loss = mse + vb

Precision, devices, strategy and gradient clipping come from the Trainer config; the module only computes.
The EMA, NaN guard, RNG streams and checkpoint rules are VideoModule's (lightning_modules/base.py).
"""

from collections.abc import Callable

import torch
from torch import nn

from diffusion import Objective, SamplerBase
from lightning_modules.base import VideoModule, with_scheduler
from utils.float8 import convert_to_float8

# torch.compile's modes for the blocks (CUDA-graph modes do not suit per-block training):
# max-autotune-no-cudagraphs times Triton GEMM templates, whose epilogues can absorb the elementwise work
# around the matmuls (minutes of autotuning at the first step; its speed on Latte is not measured yet)
COMPILE_MODES = (None, "default", "max-autotune-no-cudagraphs")


class LatteDiffusion(VideoModule):
    """Latent video diffusion with an EMA copy of the backbone that is checkpointed and used for sampling."""

    half_gathers_ok = True  # sample() runs the sharded EMA through the Sampler, which autocasts it

    def __init__(
        self,
        backbone: nn.Module,
        autoencoder: nn.Module,
        diffusion: Objective,
        noise_prior: Callable[..., torch.Tensor],
        sampler: SamplerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        ema_decay: float = 0.9999,
        compile: bool = False,
        compile_mode: str | None = None,
        float8: bool = False,
        start_clip_iter: int = 0,
    ):
        super().__init__(ema_decay=ema_decay)
        if not isinstance(start_clip_iter, int) or start_clip_iter < 0:
            raise ValueError(f"module.start_clip_iter must be an int >= 0, got {start_clip_iter!r}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"module.compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        if compile_mode is not None and not compile:
            raise ValueError(f"module.compile_mode={compile_mode} needs module.compile=true")
        if backbone.learn_sigma != diffusion.learn_sigma:
            raise ValueError(
                f"backbone.learn_sigma={backbone.learn_sigma} but diffusion.learn_sigma="
                f"{diffusion.learn_sigma}: the diffusion must know whether the backbone predicts the variance"
            )
        if backbone.in_channels != autoencoder.latent_channels:
            raise ValueError(
                f"backbone.in_channels={backbone.in_channels} but the autoencoder makes "
                f"{autoencoder.latent_channels}-channel latents"
            )
        sampler.check(diffusion)  # a sampler for another objective (euler on Gaussian diffusion) fails here
        self.backbone = backbone
        self.add_ema("backbone")
        self.autoencoder = autoencoder
        self.diffusion = diffusion
        self.noise_prior = noise_prior
        self.sampler = sampler
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.start_clip_iter = start_clip_iter  # the Trainer's gradient clipping applies from this step on
        self.compile_backbone = compile  # torch.compile each block's training forward (XL/2: 1.31x)
        self.compile_mode = compile_mode  # torch.compile's mode for the blocks (None: its default)
        self.float8 = float8  # float8 matmuls in the blocks' qkv/fc1/fc2 (utils.float8; the EMA stays as is)

    #############################################################################
    #                                  Training                                 #
    #############################################################################

    def configure_model(self) -> None:
        """Float8 layers (``float8``), shard (``trainer=fsdp``), then compile each backbone block in place:
        state-dict keys and EMA stay.

        Per block, not the whole backbone: the blocks of one class share one compiled graph, and DDP's buckets
        and FSDP's gathers fall between graphs. On Latte-XL/2 (one H100) the first step takes 31 s instead of
        75 s, a step 178 ms instead of 182, and 37.3 GiB instead of 39.5; the embeddings and head stay eager.
        """
        if self.float8:  # before sharding (FSDP shards Float8Linear weights) and compiling (traced)
            convert_to_float8(self.backbone, self._trainer.strategy.root_device if self._trainer else None)
        super().configure_model()
        if self.compile_backbone:
            for block in self.backbone.blocks:
                if block._compiled_call_impl is None:
                    block.compile(mode=self.compile_mode)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone prediction for noisy latents ``x`` (b f c h w) at timesteps ``t`` (b,)."""
        return self.backbone(x, t, y)

    def diffusion_losses(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-sample ``loss``, ``mse``, ``vb`` of a batch: ``video`` (or cached ``latents``), ``label``."""
        cached = batch.get("latents")  # (b, f, c, h', w') from the latent cache, else encode the pixels
        x0 = self.encode(batch["video"]) if cached is None else cached.float()  # (b, f, c, h', w')
        b = x0.shape[0]
        t = self.diffusion.sample_t(b, generator=generator, device=self.device)  # (b,)
        noise = self.draw_noise(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        model_kwargs = self._condition(batch)
        if x0.shape[1] > self.backbone.num_frames:  # joint training: images follow each clip in the batch
            model_kwargs["num_images"] = x0.shape[1] - self.backbone.num_frames
        return self.diffusion.training_losses(self.backbone, x0, t, noise=noise, model_kwargs=model_kwargs)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Latents b f c h' w' of pixels b f c h w, fp32 even under autocast (the diffusion math needs it)."""
        assert video.ndim == 5, f"batch['video'] must be (b, f, c, h, w), got {tuple(video.shape)}"
        return self.autoencoder.encode(video).float()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.diffusion_losses(batch)
        loss = losses["loss"].mean()
        self.check_finite(loss, "train/loss")
        self.log("train/loss", loss)
        self.log("train/loss_mse", losses["mse"].mean())
        if "vb" in losses:  # Gaussian diffusion's VLB term (flow matching has none)
            self.log("train/loss_vlb", losses["vb"].mean())
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(
            batch_idx
        )  # same t and noise at every validation
        losses = self.diffusion_losses(batch, generator=generator)
        self.log("val/loss", losses["loss"].mean(), sync_dist=True)
        self.log("val/loss_mse", losses["mse"].mean(), sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        return with_scheduler(self.optimizer(params=params), self.lr_scheduler)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """The Trainer's clipping (trainer.gradient_clip_val), from step ``start_clip_iter`` on, as Latte."""
        if self.global_step >= self.start_clip_iter:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def draw_noise(self, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
        """Training noise for ``b f c h w`` latents: the prior over video frames, iid over appended images."""
        video_frames = self.backbone.num_frames
        noise = self.noise_prior((*shape[:1], video_frames, *shape[2:]), **kwargs)  # (b, f, c, h, w)
        if shape[1] == video_frames:
            return noise
        images = torch.randn((*shape[:1], shape[1] - video_frames, *shape[2:]), **kwargs)  # (b, n, c, h, w)
        return torch.cat([noise, images], dim=1)

    def _condition(self, batch: dict) -> dict:
        """Backbone keyword arguments: class labels (and the appended images' labels) if class-conditional."""
        if self.backbone.num_classes == 0:
            return {}
        assert "label" in batch, (
            "a class-conditional backbone needs batch['label'] (set data.num_classes > 0)"
        )
        condition = {"y": batch["label"]}
        if "image_label" in batch:  # image-video joint training: one label per appended image
            condition["y_image"] = batch["image_label"]
        return condition

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
        """Generate ``num_videos`` videos (b f c h w, pixels in [-1, 1]); random classes if ``y`` is None."""
        model = self.ema if use_ema else self.backbone
        was_training = model.training
        model.eval()  # important! no label dropout while sampling
        y = self.labels_for(y, model.num_classes, num_videos, generator)
        shape = (num_videos, model.num_frames, model.in_channels, model.input_size, model.input_size)
        latents = (sampler or self.sampler)(
            model,
            self.diffusion,
            shape,
            y=y,
            null_class=model.num_classes if model.num_classes > 0 else None,
            noise_prior=self.noise_prior,
            generator=generator,
            device=self.device,
        )
        model.train(was_training)
        return self.autoencoder.decode(latents).clamp(-1, 1)
