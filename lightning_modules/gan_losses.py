"""GAN losses on discriminator logits, shared by the adversarial modules (APLA's noise discriminator).

Logits of real and fake inputs are paired elementwise (by batch index, and by location for a per-location
discriminator) and every loss is the mean over them.

- non-saturating (Goodfellow et al. 2014): D minimises softplus(-D(real)) + softplus(D(fake)),
  G minimises softplus(-D(fake));
- relativistic (RpGAN, the loss of R3GAN, Huang et al. 2024, Eq. 2): D minimises softplus(D(fake) - D(real)),
  G minimises softplus(D(real) - D(fake)). R3GAN's R1/R2 penalties are not part of these functions.
"""

import torch
import torch.nn.functional as F


def nonsaturating_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: softplus(-D(real)) + softplus(D(fake)), averaged."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def nonsaturating_g(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Generator loss: softplus(-D(fake)), averaged (``real`` is not used)."""
    return F.softplus(-fake).mean()


def relativistic_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: softplus(D(fake) - D(real)), averaged over the pairs."""
    return F.softplus(fake - real).mean()


def relativistic_g(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Generator loss: softplus(D(real) - D(fake)), averaged over the pairs (``real`` detached)."""
    return F.softplus(real - fake).mean()


GAN_LOSSES = {  # name -> (discriminator loss, generator loss)
    "nonsaturating": (nonsaturating_d, nonsaturating_g),
    "relativistic": (relativistic_d, relativistic_g),
}
