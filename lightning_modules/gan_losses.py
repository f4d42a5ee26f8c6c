"""GAN losses as small pure functions of discriminator logits, shared by AAPTGan, APLAFinetune and the tests.

Logits of real and generated inputs are paired elementwise: by batch index, and by frame (AAPT's per-frame
logits, ``(b, f)``) or by location (APLA's 1x1 noise discriminator); every loss is the mean over the pairs.
Each loss takes ``(real, fake)`` logits.

- non-saturating (Goodfellow et al. 2014): D minimises softplus(-D(real)) + softplus(D(fake)),
  G minimises softplus(-D(fake));
- relativistic (RpGAN, the loss of R3GAN, Huang et al. 2024, Eq. 2): D minimises softplus(D(fake) - D(real)),
  G minimises softplus(D(real) - D(fake)).

R3GAN adds the gradient penalties R1 (real) and R2 (fake) to D's loss. APT / AAPT replace them by finite
differences that need no double backward: aR = ||D(x) - D(x + sigma n)||^2, which is sigma^2 ||grad_x D||^2
to first order (n ~ N(0, I), sigma the standard deviation), so lambda * aR matches R3GAN's gamma / 2 * R with
gamma = 2 lambda sigma^2 (``perturb`` and ``approximate_penalty``).
"""

import torch
import torch.nn.functional as F


def _paired(real: torch.Tensor, fake: torch.Tensor) -> None:
    """Assert that real and generated logits pair up elementwise."""
    assert real.shape == fake.shape, (
        f"real and generated logits must pair up (one shape), got {tuple(real.shape)}, {tuple(fake.shape)}"
    )


def nonsaturating_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's loss: mean softplus(-D(real)) + mean softplus(D(fake))."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def nonsaturating_generator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """G's loss: mean softplus(-D(fake)) (``real`` is not used)."""
    return F.softplus(-fake).mean()


def relativistic_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's RpGAN loss: mean softplus(D(fake) - D(real))."""
    _paired(real, fake)
    return F.softplus(fake - real).mean()


def relativistic_generator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """G's RpGAN loss: mean softplus(D(real) - D(fake)); real logits are detached (no gradient to D)."""
    _paired(real, fake)
    return F.softplus(real.detach() - fake).mean()


GAN_LOSSES = {  # name -> (discriminator loss, generator loss), each of (real, fake) logits
    "nonsaturating": (nonsaturating_discriminator_loss, nonsaturating_generator_loss),
    "relativistic": (relativistic_discriminator_loss, relativistic_generator_loss),
}


def perturb(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + sigma * n, n ~ N(0, I) (sigma is the standard deviation): the input of the perturbed D pass."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * noise


def approximate_penalty(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """aR1 / aR2: mean (D(x) - D(x + sigma n))^2 over the logits (same t and condition in both passes)."""
    _paired(clean, perturbed)
    return (clean - perturbed).square().mean()
