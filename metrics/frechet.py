"""The statistics behind FVD, FID, KID and IS, as plain float64 functions of features or probabilities.

The formulas follow StyleGAN-V (the code Latte evaluates with): biased (divided by N) covariance, the Fréchet
distance of two Gaussians, the polynomial-kernel MMD of KID, and the split Inception Score. The metric
classes in `metrics.scores` accumulate what these functions consume.
"""

import numpy as np
import scipy.linalg
import scipy.special
import torch

#################################################################################
#                              Fréchet Distance                                 #
#################################################################################


def mean_and_covariance(
    feature_sum: torch.Tensor, outer_sum: torch.Tensor, count: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased covariance (divided by N, as StyleGAN-V) from sum(x), sum(x x^T) and N, in float64."""
    assert count >= 2, f"a covariance needs at least 2 feature vectors, got {count}"
    mean = feature_sum.double().cpu().numpy() / count  # (d,)
    cov = outer_sum.double().cpu().numpy() / count - np.outer(mean, mean)  # (d, d)
    return mean, cov


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(sqrtm(sigma1 @ sigma2)) for covariances, exact even when they are rank deficient.

    With sigma1 = V diag(l) V^T (negative round-off in l clipped to 0) and B = V diag(sqrt(l)) restricted to
    l > 0, sigma1 @ sigma2 has the same non-zero eigenvalues as the PSD matrix B^T sigma2 B, so the trace of
    its square root is the sum of their square roots. This is the real part that
    `scipy.linalg.sqrtm(sigma1 @ sigma2)` gives, without SciPy's complex round-off or its deprecated `disp`.
    """
    values, vectors = scipy.linalg.eigh(sigma1)
    support = values > 0
    half = vectors[:, support] * np.sqrt(values[support])  # (d, k): sigma1 = half @ half.T
    inner = half.T @ sigma2 @ half  # (k, k) symmetric PSD
    inner = (inner + inner.T) / 2  # remove round-off asymmetry before eigvalsh
    return float(np.sqrt(scipy.linalg.eigvalsh(inner).clip(min=0)).sum())


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)) in float64 (FVD, FID)."""
    mu1, mu2, sigma1, sigma2 = (_float64(a) for a in (mu1, mu2, sigma1, sigma2))
    assert mu1.ndim == 1 and mu1.shape == mu2.shape, f"means must be (d,), got {mu1.shape} and {mu2.shape}"
    d = mu1.shape[0]
    assert sigma1.shape == sigma2.shape == (d, d), (
        f"covariances must be ({d}, {d}) to match the means, got {sigma1.shape} and {sigma2.shape}"
    )
    mean_term = float(np.square(mu1 - mu2).sum())
    return mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2 * trace_sqrt_product(sigma1, sigma2)


def _float64(array: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of a tensor or array."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)


#################################################################################
#                          Kernel Inception Distance                            #
#################################################################################


def polynomial_mmd(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0
):
    """Unbiased MMD^2 of two equal-size sets, kernel k(a, b) = (gamma a.b + coef)^degree (gamma 1/d)."""
    m = x.shape[0]
    assert y.shape[0] == m and m >= 2, f"MMD needs two sets of the same size >= 2, got {x.shape}, {y.shape}"
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (gamma * x @ x.T + coef) ** degree  # (m, m)
    k_yy = (gamma * y @ y.T + coef) ** degree  # (m, m)
    k_xy = (gamma * x @ y.T + coef) ** degree  # (m, m)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / m**2)


def kernel_distance(
    generated: np.ndarray | torch.Tensor,
    real: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and (biased) std over subsets of the polynomial MMD^2, subsets drawn without replacement.

    Subset size is min(subset_size, #generated, #real) as in StyleGAN-V; the draws come from a seeded
    NumPy RandomState (StyleGAN-V's are unseeded).
    """
    generated, real = _float64(generated), _float64(real)
    assert generated.ndim == real.ndim == 2 and generated.shape[1] == real.shape[1], (
        f"KID needs (n, d) feature sets of the same d, got {generated.shape} and {real.shape}"
    )
    m = min(subset_size, generated.shape[0], real.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 generated and 2 real feature vectors, got {m}")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(num_subsets):
        x = generated[rng.choice(generated.shape[0], m, replace=False)]  # (m, d)
        y = real[rng.choice(real.shape[0], m, replace=False)]  # (m, d)
        values.append(polynomial_mmd(x, y, degree, gamma, coef))
    return float(np.mean(values)), float(np.std(values))


#################################################################################
#                               Inception Score                                 #
#################################################################################


def inception_score(
    probs: np.ndarray | torch.Tensor, splits: int = 10, seed: int | None = 42
) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split; mean and biased std over splits (isv2048_ucf).

    The rows are shuffled with np.random.RandomState(seed) first (None: no shuffle), then cut into `splits`
    parts [i N/splits, (i+1) N/splits). 0 log 0 counts as 0; StyleGAN-V returns nan there and the same value
    everywhere else.
    """
    probs = _float64(probs).copy()
    assert probs.ndim == 2, f"probabilities must be (n, classes), got {probs.shape}"
    n = probs.shape[0]
    if n < splits:
        raise ValueError(f"IS with {splits} splits needs at least {splits} videos, got {n}")
    if seed is not None:
        np.random.RandomState(seed).shuffle(probs)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits : (i + 1) * n // splits]  # (n_i, classes)
        marginal = part.mean(axis=0, keepdims=True)  # (1, classes)
        kl = scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal)  # (n_i, classes)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
