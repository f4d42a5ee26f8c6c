"""A test-only GAN on VideoModule: a generator and a critic, two optimizers, manual optimization."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules import VideoModule


class PerFrame(nn.Module):
    """Apply a 2-D network to every frame of a ``b f c h w`` video."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        out = self.net(x.flatten(0, 1))  # (b * f, ...)
        return out.unflatten(0, (b, -1))  # (b, f, ...)


class TinyGan(VideoModule):
    """Generator (noise -> latents) against a critic (latents -> one logit per frame); EMA of the generator.

    One training step: a critic step, then a generator step followed by ``update_ema()``. Lightning counts
    both optimizers' steps, so ``trainer.global_step`` grows by 2 per batch. ``generator_weights`` records
    the generator's weights at fit start and after each of its steps (for the EMA test).
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        num_frames: int,
        latent_size: int,
        lr: float = 1e-3,
        ema_decay: float = 0.9,
    ):
        super().__init__(ema_decay=ema_decay)
        self.automatic_optimization = False
        c = autoencoder.latent_channels
        self.generator = PerFrame(nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, c, 1)))
        self.add_ema("generator")
        self.critic = PerFrame(
            nn.Sequential(
                nn.Conv2d(c, 8, 3, stride=2), nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
        )
        self.critic_head = nn.Linear(8, 1)
        self.autoencoder = autoencoder
        self.latent_shape = (num_frames, c, latent_size, latent_size)
        self.lr = lr
        self.generator_weights: list[dict[str, torch.Tensor]] = []

    def generate(self, noise: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Latents b f c h w in [-1, 1] from noise of the same shape."""
        return torch.tanh((model or self.generator)(noise))

    def logits(self, latents: torch.Tensor) -> torch.Tensor:
        """One critic logit per frame, (b, f)."""
        return self.critic_head(self.critic(latents)).squeeze(-1)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.generator_weights = [self._generator_state()]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_c = self.optimizers()
        real = self.autoencoder.encode(batch["video"]).float()  # (b, f, c, h, w)
        noise = torch.randn_like(real)

        fake = self.generate(noise).detach()
        loss_c = F.softplus(self.logits(fake)).mean() + F.softplus(-self.logits(real)).mean()
        self.check_finite(loss_c, "train/loss_critic")
        opt_c.zero_grad()
        self.manual_backward(loss_c)
        opt_c.step()

        loss_g = F.softplus(-self.logits(self.generate(noise))).mean()
        self.check_finite(loss_g, "train/loss")
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.update_ema()  # once per generator step
        self.generator_weights.append(self._generator_state())

        self.log("train/loss", loss_g)
        self.log("train/loss_critic", loss_c)

    def configure_optimizers(self):
        generator = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.0, 0.99))
        critic = torch.optim.Adam([*self.critic.parameters(), *self.critic_head.parameters()], lr=self.lr)
        return [generator, critic]

    @torch.no_grad()
    def sample(self, num_videos, y=None, generator=None, sampler=None, use_ema=True) -> torch.Tensor:
        noise = torch.randn((num_videos, *self.latent_shape), generator=generator, device=self.device)
        latents = self.generate(noise, self.ema if use_ema else self.generator)  # (b, f, c, h, w)
        return self.autoencoder.decode(latents).clamp(-1, 1)

    def _generator_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.generator.state_dict().items()}
