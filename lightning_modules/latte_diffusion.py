"""LatteDiffusion: train a Latte backbone as a latent video diffusion model, sample with its EMA weights.

Data flow of one training step (all videos are ``b f c h w``)::

    video (pixels in [-1, 1]) --autoencoder.encode--> x0 (latents) --noise_prior, q_sample--> x_t
    x_t, t, y --backbone--> eps (+ variance) --diffusion.training_losses--> loss = mse + vb

Precision, devices, strategy and gradient clipping come from the Trainer config; the module only computes.
"""

import copy
from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from diffusion import GaussianDiffusion, Sampler
from utils.rng import gather_rng_states, set_rng_states


class LatteDiffusion(LightningModule):
    """Latent video diffusion with an EMA copy of the backbone that is checkpointed and used for sampling."""

    def __init__(
        self,
        backbone: nn.Module,
        autoencoder: nn.Module,
        diffusion: GaussianDiffusion,
        noise_prior: Callable[..., torch.Tensor],
        sampler: Sampler,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        ema_decay: float = 0.9999,
        compile: bool = False,
        start_clip_iter: int = 0,
    ):
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if not isinstance(start_clip_iter, int) or start_clip_iter < 0:
            raise ValueError(f"module.start_clip_iter must be an int >= 0, got {start_clip_iter!r}")
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
        self.backbone = backbone
        self.ema = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.autoencoder = autoencoder
        self.diffusion = diffusion
        self.noise_prior = noise_prior
        self.sampler = sampler
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.ema_decay = ema_decay
        self.start_clip_iter = start_clip_iter  # the Trainer's gradient clipping applies from this step on
        self.compile_backbone = compile  # torch.compile the training forward (1.34x on Latte-XL/2, H200)
        self._rng_states: list[dict] | None = None  # every rank's RNG states from the checkpoint resumed from

    #############################################################################
    #                                  Training                                 #
    #############################################################################

    def configure_model(self) -> None:
        """Compile the backbone in place: its state-dict keys and the EMA copy stay as they are."""
        if self.compile_backbone and self.backbone._compiled_call_impl is None:
            self.backbone.compile()

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
        t = torch.randint(0, self.diffusion.num_timesteps, (b,), device=self.device, generator=generator)
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
        if not torch.isfinite(loss):
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise FloatingPointError(
                f"train/loss is {loss.item()} at step {self.global_step}; stopping before the optimizer "
                f"step, so no checkpoint holds these weights. Last good checkpoint: {ckpt}"
            )
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_mse", losses["mse"].mean())
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
        optimizer = self.optimizer(params=params)
        if self.lr_scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step"},
        }

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
    #                            EMA of the backbone                            #
    #############################################################################

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a fresh run seeds the EMA with weights loaded after __init__
            self.ema.load_state_dict(self.backbone.state_dict())
        if self.global_rank > 0:  # important! one seed gave every rank the same init; now each rank draws
            torch.manual_seed(torch.initial_seed() + self.global_rank)  # its own t, noise, dropout (as Latte)

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer's step, then the EMA's: before any callback's on_train_batch_end, so a checkpoint
        written there holds the EMA of its own step."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * backbone, over every parameter (frozen embeddings included)."""
        ema = list(self.ema.parameters())
        live = [p.detach().to(e.dtype) for p, e in zip(self.backbone.parameters(), ema)]
        torch._foreach_lerp_(ema, live, 1.0 - self.ema_decay)

    #############################################################################
    # Checkpoints hold backbone + EMA, not the frozen autoencoder (it comes from its own weights file)#
    #############################################################################

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave out the autoencoder; add every rank's RNG states, so that a resumed run draws on exactly."""
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("autoencoder.")
        }
        checkpoint["rng_states"] = gather_rng_states(self.device)  # one per rank, in rank order

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"].update(
            {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        )
        self._rng_states = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        """Resuming: continue this rank's RNG streams, after the per-rank reseeding and the sanity check."""
        states, self._rng_states = self._rng_states, None
        if states is None:
            return
        if len(states) != self.trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds the RNG states of {len(states)} ranks, this run has "
                f"{self.trainer.world_size}: random draws start afresh (the resumed run is not exact)"
            )
            return
        set_rng_states(states[self.global_rank], self.device)

    #############################################################################
    #                                  Sampling                                 #
    #############################################################################

    @torch.no_grad()
    def sample(
        self,
        num_videos: int,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: Sampler | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Generate ``num_videos`` videos (b f c h w, pixels in [-1, 1]); random classes if ``y`` is None."""
        model = self.ema if use_ema else self.backbone
        was_training = model.training
        model.eval()  # important! no label dropout while sampling
        if model.num_classes > 0 and y is None:
            y = torch.randint(0, model.num_classes, (num_videos,), device=self.device, generator=generator)
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
