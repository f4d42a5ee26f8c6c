"""The R3GAN relativistic pair loss and APT's approximate R1/R2, as small pure functions of logits.

Shared by AAPTGan (per-frame logits), the 2-D toy of the tests and any other adversarial module. Logits are
``(b,)`` or ``(b, f)`` (one per frame): real sample i is paired with generated sample i of the batch (and
frame k with frame k), and every loss is the mean over the pairs.

R3GAN (Huang et al. 2024, Eq. 2-3): G minimises softplus(D(real) - D(fake)); D minimises
softplus(D(fake) - D(real)) + the gradient penalties R1 (real) and R2 (fake). APT / AAPT replace the
penalties by finite differences that need no double backward: aR = ||D(x) - D(x + sigma n)||^2, which is
sigma^2 ||grad_x D||^2 to first order (n ~ N(0, I), sigma the standard deviation), so lambda * aR matches
R3GAN's gamma / 2 * R with gamma = 2 lambda sigma^2.
"""

import torch
import torch.nn.functional as F


def _paired(real: torch.Tensor, fake: torch.Tensor) -> None:
    """Assert that real and generated logits pair up by batch index (and frame)."""
    assert real.shape == fake.shape and real.ndim in (1, 2), (
        f"real and generated logits must both be (b,) or (b, f) and pair up, got {tuple(real.shape)} and "
        f"{tuple(fake.shape)}"
    )


def relativistic_generator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """G's RpGAN loss: mean softplus(D(real) - D(fake)); real logits are detached (no gradient to D)."""
    _paired(real, fake)
    return F.softplus(real.detach() - fake).mean()


def relativistic_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's RpGAN loss: mean softplus(D(fake) - D(real))."""
    _paired(real, fake)
    return F.softplus(fake - real).mean()


def perturb(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + sigma * n, n ~ N(0, I) (sigma is the standard deviation): the input of the perturbed D pass."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * noise


def approximate_penalty(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """aR1 / aR2: mean (D(x) - D(x + sigma n))^2 over the logits (same t and condition in both passes)."""
    _paired(clean, perturbed)
    return (clean - perturbed).square().mean()
