"""AAPT: a causal Latte made a one-step, real-time autoregressive image-to-video generator in three stages.

Lin et al. 2025, "Autoregressive Adversarial Post-Training for Real-Time Interactive Video Generation"
(arXiv 2506.09350), on this framework's causal Latte (block-causal temporal attention, RoPE, a sliding window
that keeps the first frame, a KV cache) and flow matching. Every stage reads clips ``x_0..x_{F-1}`` (latents,
``b f c h w``) and works on the F - 1 positions of next-frame prediction: position j joins on channels the
(noisy) frame j+1 and the clean frame j, the layout of ``diffusion.autoregressive.next_frame``
(``[noise, previous]``). Stages chain through checkpoints (``init=checkpoint``, ``init=aapt_gan``).

1. ``AAPTAdapt``, diffusion adaptation: flow matching with teacher forcing, one timestep per clip (all
   next-frame predictions train in parallel). Starts from any Latte checkpoint or official file
   (``init=checkpoint init.convert=true``: extra input channels per ``extra_channels_init``, learn_sigma
   output channels dropped).
2. ``AAPTDistill``, consistency distillation (improved CD: no EMA target, the target is the stop-gradient of
   the student itself) on 32 fixed shifted steps, teacher forcing, no CFG; the frozen teacher is the stage-1
   model, the student starts from it. The student at t = 1 is a one-step generator (``next_frame``).
3. ``AAPTGan``, adversarial post-training with student forcing: the generator (from stage 2) gets only the
   real first frame and rolls out through its KV cache with ``diffusion.autoregressive.rollout`` (one
   forward per frame at t = 1, recycled frame detached, gradients through the cache); a per-frame
   discriminator (``backbones.FrameDiscriminator``, its trunk from stage 1) scores all frames in one pass;
   R3GAN's relativistic loss with APT's approximate R1 + R2 (``lightning_modules.gan_losses``); long videos
   one segment at a time.

From the paper (§2.1-2.2, App. B): the channel concatenation of the previous frame, the shift s = 24 of
U(0, 1) flow-matching times, one timestep per clip, 32 shifted CD steps without CFG or EMA target, the
generator at t = 1, the discriminator from the adaptation weights with per-frame logits and unshifted
t ~ U(0, 1), the detached recycled input with gradients through the KV cache, lambda = 1000 and
sigma = 0.1, RMSProp alpha = 0.9 at lr 3e-6, segments with a one-frame overlap and the detached cache of the
previous segment, window 30. Our defaults where the paper is silent: random init of the new input
channels; APT's cross-attention heads at 16/36, 26/36, 36/36 of the depth, applied per frame; logits paired
by batch index and frame, every loss a mean; sigma as a standard deviation; the same t (and label) in the
clean and perturbed D passes and for the paired real and generated clip; 1:1 alternation; EMA 0.995 of the
generator; i.i.d. noise per frame; pseudo-Huber CD loss weighted 1 / (t - t') (iCT); the D step judging
the clips the G step of the same batch generated (before its update: one rollout per batch).

Sampling (``sample()``, for the callbacks, sample.py and evaluate.py): AAPT generates from a given first
frame. Each module keeps the first latent frames of the first ``keep_first_frames`` training clips it sees
(a buffer saved in checkpoints, so sample.py needs no data) and starts sampled video i from first frame
i mod n. Stage 1 samples each next frame with the Euler sampler (``sampler``), teacher-forced on the frames
made so far; stages 2 and 3 with ``rollout`` (one forward per frame).

Step counting (manual optimization): D's updates are stepped ``uncounted`` (lightning_modules/base.py), so
one GAN batch is one ``global_step``: ``trainer.max_steps`` is the number of generator updates, as the paper
counts them, and every step interval of the callbacks counts batches.
"""

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from backbones.discriminators import FrameDiscriminator
from backbones.latte import Latte, LatteCache
from diffusion import EulerSampler, FlowMatching, SamplerBase, shift_time
from diffusion.autoregressive import rollout
from lightning_modules.base import VideoModule, uncounted, with_scheduler
from lightning_modules.gan_losses import (
    approximate_penalty,
    perturb,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
)


def teacher_forced(backbone: nn.Module, previous: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The backbone as a model of the noisy frames only: x_t (b, f, c, h, w) is joined with ``previous``."""

    def model(x_t: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return backbone(torch.cat([x_t, previous], dim=2), t, **kwargs)  # (b, f, c, h, w)

    return model


def detach_cache(cache: LatteCache) -> None:
    """Cut the gradient path into the frames cached so far (the next long-video segment starts here)."""
    for kv in cache.layers.values():
        kv.k, kv.v = kv.k.detach(), kv.v.detach()


def pseudo_huber(x: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(||x||^2 + c^2) - c per frame of x (b, f, c, h, w): (b, f) (iCT's loss)."""
    return torch.sqrt(x.square().flatten(2).sum(-1) + c * c) - c


#################################################################################
#                       First Frames for Image-to-Video Sampling                #
#################################################################################


class FirstFrames(nn.Module):
    """The first latent frames of the first ``size`` training clips seen: where sampled videos start."""

    def __init__(self, size: int, shape: tuple[int, int, int]):
        super().__init__()
        if size < 1:
            raise ValueError(f"module.keep_first_frames must be >= 1, got {size}")
        self.register_buffer("frames", torch.zeros(size, 1, *shape))  # (n, 1, c, h, w)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # how many are filled
        self.filled: int | None = None  # `count` on the host; None: read it (after construction or a load)
        self.register_load_state_dict_post_hook(FirstFrames.reread_count)

    @staticmethod
    def reread_count(module: "FirstFrames", incompatible_keys) -> None:
        """After loading weights: read the count again at the next call."""
        module.filled = None

    @torch.no_grad()
    def remember(self, latents: torch.Tensor) -> None:
        """Keep the first frames of clips (b, f, c, h, w) while there is room (called every step: the count
        is kept on the host too, as reading the buffer would make the host wait for the GPU)."""
        if self.filled is None:
            self.filled = int(self.count)
        new = latents[: self.frames.shape[0] - self.filled, :1]  # (k, 1, c, h, w)
        if new.shape[0]:
            self.frames[self.filled : self.filled + new.shape[0]] = new.to(self.frames.dtype)
            self.count += new.shape[0]
            self.filled += new.shape[0]

    def take(self, n: int) -> torch.Tensor:
        """First frames (n, 1, c, h, w): kept frame i mod count for video i."""
        count = int(self.count)
        if count == 0:
            raise RuntimeError(
                "AAPT samples from given first frames, kept from training clips, but this module has seen no "
                "training batch yet (train it, or load a checkpoint of a run that did)"
            )
        return self.frames[torch.arange(n, device=self.frames.device) % count]  # (n, 1, c, h, w)


#################################################################################
#                        What the Three Stages Share                            #
#################################################################################


class AAPTModule(VideoModule):
    """A causal next-frame Latte on flow matching, the latents of its clips, sampling from first frames."""

    def __init__(
        self,
        backbone: Latte,
        autoencoder: nn.Module,
        diffusion: FlowMatching,
        ema_decay: float,
        keep_first_frames: int,
    ):
        super().__init__(ema_decay=ema_decay)
        if not isinstance(diffusion, FlowMatching):
            raise ValueError(f"AAPT trains with flow matching (diffusion=flow_matching), got {diffusion!r}")
        c = autoencoder.latent_channels
        if backbone.temporal_mask != "causal" or backbone.learn_sigma:
            raise ValueError(
                "AAPT needs a causal Latte without variance channels: backbone.temporal_mask=causal, "
                f"diffusion.learn_sigma=false (got {backbone.temporal_mask!r}, {backbone.learn_sigma})"
            )
        if backbone.in_channels != 2 * c or backbone.out_channels != c:
            raise ValueError(
                f"AAPT's backbone joins the noisy and the previous frame on channels: in_channels must be "
                f"2 x {c} and out_channels {c} (the autoencoder's latent channels), got "
                f"in_channels={backbone.in_channels}, out_channels={backbone.out_channels}"
            )
        self.backbone = backbone
        self.add_ema("backbone")
        self.autoencoder = autoencoder
        self.diffusion = diffusion
        self.first_frames = FirstFrames(keep_first_frames, (c, backbone.input_size, backbone.input_size))

    @torch.no_grad()
    def latents(self, batch: dict) -> torch.Tensor:
        """Clean latents (b, f, c, h, w) of a batch (cached ``latents`` or encoded ``video``), fp32."""
        cached = batch.get("latents")
        if cached is not None:
            return cached.float()
        video = batch["video"]
        assert video.ndim == 5, f"batch['video'] must be (b, f, c, h, w), got {tuple(video.shape)}"
        return self.autoencoder.encode(video).float()

    def condition(self, batch: dict) -> torch.Tensor | None:
        """Class labels (b,) for a class-conditional backbone, else None."""
        if self.backbone.num_classes == 0:
            return None
        assert "label" in batch, "a class-conditional backbone needs batch['label'] (data.num_classes > 0)"
        return batch["label"]

    def model_kwargs(self, y: torch.Tensor | None) -> dict:
        """The backbone's keyword arguments for labels y."""
        return {} if y is None else {"y": y}

    def noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """I.i.d. N(0, I) noise of ``like``'s shape (no correlated prior: the paper mentions none)."""
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def configure_optimizers(self):
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        return with_scheduler(self.optimizer(params=params), self.lr_scheduler)

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        first: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None,
        sampler: SamplerBase | None = None,
    ) -> torch.Tensor:
        """Frames (b, f, c, h, w) after ``first`` (b, 1, c, h, w): one forward each (``rollout``)."""
        return rollout(model, self.diffusion, first, noise, y)  # (b, f, c, h, w)

    @torch.no_grad()
    def sample(
        self,
        num_videos: int,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: SamplerBase | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """``num_videos`` videos (b f c h w, pixels in [-1, 1]) from kept first frames; random classes if y
        is None. ``sampler`` matters to stage 1 only (the later stages make each frame in one forward)."""
        model = self.ema if use_ema else self.backbone
        was_training = model.training
        model.eval()  # important! no label dropout while sampling
        y = self.labels_for(y, model.num_classes, num_videos, generator)
        first = self.first_frames.take(num_videos)  # (b, 1, c, h, w)
        shape = (num_videos, self.sample_frames() - 1, *first.shape[2:])
        noise = torch.randn(shape, generator=generator, device=self.device)  # (b, f-1, c, h, w)
        frames = self.generate(model, first, noise, y, sampler)  # (b, f-1, c, h, w)
        model.train(was_training)
        return self.autoencoder.decode(torch.cat([first, frames], dim=1)).clamp(-1, 1)  # (b, f, c, h, w)

    def sample_frames(self) -> int:
        """Frames of a sampled video, the first included."""
        return self.backbone.num_frames


#################################################################################
#                       Stage 1: Diffusion Adaptation                           #
#################################################################################


class AAPTAdapt(AAPTModule):
    """Teacher-forced next-frame flow matching: all F - 1 predictions of a clip at one shared timestep."""

    def __init__(
        self,
        backbone: Latte,
        autoencoder: nn.Module,
        diffusion: FlowMatching,
        sampler: EulerSampler,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        ema_decay: float = 0.9999,
        keep_first_frames: int = 16,
    ):
        super().__init__(backbone, autoencoder, diffusion, ema_decay, keep_first_frames)
        sampler.check(diffusion)  # flow matching samples with sampler=euler
        self.sampler = sampler
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def adaptation_losses(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Flow-matching losses of frames 1..F-1, each from its noisy self and the clean frame before it."""
        x0 = self.latents(batch)  # (b, f, c, h, w)
        t = self.diffusion.sample_t(x0.shape[0], generator=generator, device=x0.device)  # (b,): one per clip
        target = x0[:, 1:]  # (b, f-1, c, h, w): the frames to predict
        model = teacher_forced(self.backbone, x0[:, :-1])  # recycled channels: the clean frames before
        kwargs = self.model_kwargs(self.condition(batch))
        return self.diffusion.training_losses(model, target, t, self.noise(target, generator), kwargs)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.first_frames.remember(self.latents(batch))
        loss = self.adaptation_losses(batch)["loss"].mean()
        self.check_finite(loss, "train/loss")
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)  # the same t and noise every time
        self.log("val/loss", self.adaptation_losses(batch, generator)["loss"].mean(), sync_dist=True)

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        first: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None,
        sampler: EulerSampler | None = None,
    ) -> torch.Tensor:
        """Frames (b, f, c, h, w) after ``first``, each by the Euler sampler's steps, teacher-forced.

        Frame k is denoised as the last of k positions whose other noisy channels hold the frames made so
        far, noised to the same time with the noise that made them (training's one time per clip).
        """
        sampler = sampler or self.sampler
        sampler.check(self.diffusion)
        times = self.diffusion.time_grid(sampler.num_steps, sampler.shift).to(noise.device, noise.dtype)
        b, kwargs, frames = first.shape[0], self.model_kwargs(y), first  # frames: (b, 1 + k, c, h, w)
        for k in range(noise.shape[1]):
            x = noise[:, k : k + 1]  # (b, 1, c, h, w) at t = 1
            for i in range(sampler.num_steps):
                t, t_next = times[i].expand(b), times[i + 1].expand(b)  # (b,)
                made = self.diffusion.add_noise(frames[:, 1:], t, noise[:, :k])  # (b, k, c, h, w)
                model_k = teacher_forced(model, frames)  # positions 0..k see frames 0..k on recycled channels

                def last_position(x_t, t_model, _made=made, _model=model_k, **kw):
                    return _model(torch.cat([_made, x_t], dim=1), t_model, **kw)[:, -1:]  # (b, 1, c, h, w)

                x = self.diffusion.step(last_position, x, t, t_next, kwargs)  # (b, 1, c, h, w)
            frames = torch.cat([frames, x], dim=1)  # (b, 2 + k, c, h, w)
        return frames[:, 1:]  # (b, f, c, h, w)


#################################################################################
#                      Stage 2: Consistency Distillation                        #
#################################################################################


class AAPTDistill(AAPTModule):
    """Improved consistency distillation of the frozen stage-1 teacher into a one-step student.

    Times come from a fixed grid of ``num_steps`` uniform steps mapped by the shift (default: the
    objective's). For a clip: one grid index i per clip, x_t at t_i; the teacher's Euler step (no CFG) gives
    x_{t'} at t_{i-1}; the student's consistency function f(x, t) = to_x0(v, x, t) = x - t v (f(x, 0) = x) at
    (x_t, t_i) is pulled to the stop-gradient of its own f at (x_{t'}, t_{i-1}) (no EMA target), by the
    pseudo-Huber distance per frame weighted 1 / (t_i - t_{i-1}) (iCT). The teacher is set to the student's
    weights when a fresh run starts (after ``init``: the stage-1 checkpoint), and saved in checkpoints.
    """

    def __init__(
        self,
        backbone: Latte,
        autoencoder: nn.Module,
        diffusion: FlowMatching,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        num_steps: int = 32,
        shift: float | None = None,
        huber_c: float | None = None,
        weighting: str = "inverse_step",
        ema_decay: float = 0.9999,
        keep_first_frames: int = 16,
    ):
        super().__init__(backbone, autoencoder, diffusion, ema_decay, keep_first_frames)
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"module.num_steps must be an int >= 1, got {num_steps!r}")
        if weighting not in ("inverse_step", "uniform"):
            raise ValueError(f"module.weighting must be inverse_step or uniform, got {weighting!r}")
        self.teacher = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        uniform = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
        grid = shift_time(uniform, diffusion.shift if shift is None else shift).float()
        self.register_buffer("grid", grid, persistent=False)  # (num_steps + 1,) from t = 0 to t = 1
        frame_dims = backbone.out_channels * backbone.input_size**2
        self.huber_c = 0.00054 * math.sqrt(frame_dims) if huber_c is None else huber_c  # iCT's c
        self.weighting = weighting

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a fresh run: the teacher is the stage-1 model the student starts
            self.teacher.load_state_dict(self.backbone.state_dict())
        super().on_fit_start()

    def consistency(self, model: Callable, x_t: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """f(x_t, t) = x_t - t v(x_t, t): the clean frames the model reaches in one jump."""
        return self.diffusion.to_x0(self.diffusion.velocity(model, x_t, t, kwargs), x_t, t)

    def distillation_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-clip consistency ``loss`` (b,) and the clip's times ``t``."""
        x0 = self.latents(batch)  # (b, f, c, h, w)
        self.first_frames.remember(x0)
        target, previous = x0[:, 1:], x0[:, :-1]  # (b, f-1, c, h, w) each
        b = x0.shape[0]
        i = torch.randint(1, len(self.grid), (b,), device=x0.device)  # (b,) grid index, one per clip
        t, t_prev = self.grid[i], self.grid[i - 1]  # (b,) each
        kwargs = self.model_kwargs(self.condition(batch))
        x_t = self.diffusion.add_noise(target, t, self.noise(target))  # (b, f-1, c, h, w)
        student = teacher_forced(self.backbone, previous)
        self.teacher.eval()  # no label dropout in the teacher
        with torch.no_grad():
            x_prev = self.diffusion.step(teacher_forced(self.teacher, previous), x_t, t, t_prev, kwargs)
            goal = self.consistency(student, x_prev, t_prev, kwargs)  # (b, f-1, c, h, w): stop-gradient
        distance = pseudo_huber(self.consistency(student, x_t, t, kwargs) - goal, self.huber_c)  # (b, f-1)
        weight = 1.0 / (t - t_prev) if self.weighting == "inverse_step" else torch.ones_like(t)  # (b,)
        return {"loss": weight * distance.mean(1), "distance": distance.mean(1), "t": t}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.distillation_losses(batch)
        loss = losses["loss"].mean()
        self.check_finite(loss, "train/loss")
        self.log("train/loss", loss)
        self.log("train/distance", losses["distance"].mean())
        return loss


#################################################################################
#                   Stage 3: Adversarial Post-Training (AAPTGan)                #
#################################################################################


class AAPTGan(AAPTModule):
    """Student-forced adversarial training of the one-step generator against a per-frame discriminator.

    One batch: the generator rolls out ``segments`` segments of ``segment_frames`` frames (the first starts
    from the real first frame, each next one from the last frame of the one before: one frame of overlap),
    back-propagating G's loss after each segment and keeping its detached KV cache for the next; one G
    update, its EMA. Then ``d_steps`` D updates, each on every generated segment (detached) against the
    batch's real clips, cropped to ``segment_frames``. Logits pair real clip i with generated segment i.
    """

    def __init__(
        self,
        backbone: Latte,
        discriminator: FrameDiscriminator,
        autoencoder: nn.Module,
        diffusion: FlowMatching,
        optimizer_g: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        penalty_weight: float = 1000.0,
        sigma: float = 0.1,
        d_steps: int = 1,
        segments: int = 1,
        segment_frames: int | None = None,
        ema_decay: float = 0.995,
        keep_first_frames: int = 16,
    ):
        super().__init__(backbone, autoencoder, diffusion, ema_decay, keep_first_frames)
        self.automatic_optimization = False
        for key, value in (("d_steps", d_steps), ("segments", segments)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"module.{key} must be an int >= 1, got {value!r}")
        if segment_frames is not None and segment_frames < 2:
            raise ValueError(f"module.segment_frames must be >= 2 or null (the clip's), got {segment_frames}")
        if penalty_weight < 0 or sigma <= 0:
            raise ValueError(f"module.penalty_weight >= 0 and sigma > 0, got {penalty_weight}, {sigma}")
        if segments > 1 and backbone.temporal_pos != "rope" and backbone.window is None:
            raise ValueError("long-video training (segments > 1) streams past num_frames: temporal_pos=rope")
        self.discriminator = discriminator
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.penalty_weight, self.sigma = penalty_weight, sigma
        self.d_steps, self.segments, self.segment_frames = d_steps, segments, segment_frames

    def configure_optimizers(self):
        generator = self.optimizer_g(params=[p for p in self.backbone.parameters() if p.requires_grad])
        critic = self.optimizer_d(params=[p for p in self.discriminator.parameters() if p.requires_grad])
        return [generator, critic]

    def judge(self, video: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Per-frame logits (b, f-1) of clips (b, f, c, h, w) at times t (b,) in [0, 1]."""
        return self.discriminator(video, self.diffusion.model_timesteps(t), y)

    def real_clips(self, batch: dict) -> torch.Tensor:
        """The batch's real latent clips (b, segment_frames, c, h, w)."""
        real = self.latents(batch)  # (b, f, c, h, w)
        frames = self.segment_frames or real.shape[1]
        assert real.shape[1] >= frames, f"segment_frames={frames} exceeds the clips' {real.shape[1]} frames"
        return real[:, :frames]

    def generator_step(self, real: torch.Tensor, y: torch.Tensor | None) -> tuple[list[torch.Tensor], dict]:
        """Roll out every segment, G's loss back-propagated per segment, one update; the detached segments."""
        opt_g = self.optimizers()[0]
        b = real.shape[0]
        segments, logs = [], {"loss_g": 0.0, "logits_fake": 0.0}
        with self.toggled_optimizer(opt_g):  # D's parameters take no gradient from G's loss
            opt_g.zero_grad()
            cache = self.backbone.new_cache(b)
            previous = real[:, :1]  # (b, 1, c, h, w): the real first frame starts the stream
            for _ in range(self.segments):
                noise = self.noise(real[:, 1:])  # (b, frames-1, c, h, w)
                made = rollout(
                    self.backbone, self.diffusion, previous, noise, y, cache=cache
                )  # (b, f-1, c..)
                fake = torch.cat([previous.detach(), made], dim=1)  # (b, frames, c, h, w): 1-frame overlap
                t = torch.rand(b, device=real.device)  # (b,) U(0, 1), unshifted
                with torch.no_grad():
                    real_logits = self.judge(real, t, y)  # (b, frames-1)
                fake_logits = self.judge(fake, t, y)  # (b, frames-1)
                loss = relativistic_generator_loss(real_logits, fake_logits)
                self.check_finite(loss, "train/loss_g")
                self.manual_backward(loss / self.segments)  # frees this segment's graph
                detach_cache(cache)  # the next segment continues the stream without gradients into this one
                previous = made[:, -1:].detach()
                segments.append(fake.detach())
                logs["loss_g"] += loss.detach() / self.segments
                logs["logits_fake"] += fake_logits.detach().mean() / self.segments
            opt_g.step()
        self.update_ema()  # once per generator update
        return segments, logs

    def discriminator_step(self, real: torch.Tensor, fakes: list[torch.Tensor], y: torch.Tensor | None):
        """``d_steps`` updates of D on every generated segment against the real clips; the last one's logs."""
        opt_d = self.optimizers()[1]
        with self.toggled_optimizer(opt_d):
            for _ in range(self.d_steps):
                opt_d.zero_grad()
                logs = {"loss_d": 0.0, "ar1": 0.0, "ar2": 0.0, "logits_real": 0.0}
                for fake in fakes:
                    t = torch.rand(real.shape[0], device=real.device)  # (b,) shared by all four passes
                    real_logits, fake_logits = self.judge(real, t, y), self.judge(fake, t, y)  # (b, f-1) each
                    ar1 = approximate_penalty(real_logits, self.judge(perturb(real, self.sigma), t, y))
                    ar2 = approximate_penalty(fake_logits, self.judge(perturb(fake, self.sigma), t, y))
                    loss = relativistic_discriminator_loss(real_logits, fake_logits)
                    loss = loss + self.penalty_weight * (ar1 + ar2)
                    self.check_finite(loss, "train/loss_d")
                    self.manual_backward(loss / len(fakes))
                    values = {"loss_d": loss, "ar1": ar1, "ar2": ar2, "logits_real": real_logits}
                    for key, value in values.items():
                        logs[key] += value.detach().mean() / len(fakes)
                with uncounted(opt_d):  # one batch is one global step: G's update counts it
                    opt_d.step()
        return logs

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real = self.real_clips(batch)  # (b, frames, c, h, w)
        self.first_frames.remember(real)
        y = self.condition(batch)
        fakes, logs = self.generator_step(real, y)
        logs |= self.discriminator_step(real, fakes, y)
        logs["logit_gap"] = logs["logits_real"] - logs["logits_fake"]
        self.log("train/loss_g", logs.pop("loss_g"))
        self.log_dict({f"train/{k}": v for k, v in logs.items()})

    def sample_frames(self) -> int:
        """A sampled video is as long as one training segment (the clips' frames by default)."""
        return self.segment_frames or self.backbone.num_frames
