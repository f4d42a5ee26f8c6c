"""Metric statistics (Fréchet distance, IS, KID) against closed forms and SciPy; the weight registry."""

import hashlib

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.kid import poly_mmd

from metrics import (
    WEIGHTS,
    FrechetDistance,
    I3DTorchScript,
    MetricSuite,
    frechet_distance,
    inception_score,
    kernel_distance,
    polynomial_mmd,
    resolve_weights,
)
from metrics.standins import TinyVideoDetector, save_scripted


def random_covariance(rng: np.random.RandomState, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased covariance of n Gaussian-ish samples in d dimensions (rank min(n - 1, d))."""
    x = rng.randn(n, d) @ rng.randn(d, d) * 0.3 + rng.randn(d)
    mean = x.mean(0)
    return mean, (x - mean).T @ (x - mean) / n


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """StyleGAN-V's formula with today's scipy.linalg.sqrtm (no `disp`), real part of the whole expression."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * root)))


class FeatureDetector(nn.Module):
    """A detector stub for feeding features directly: only the attributes the metrics read."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def describe(self) -> dict:
        return {"detector": "FeatureDetector", "num_features": self.num_features}


#################################################################################
#                     (a) Fréchet distance: closed forms, SciPy                 #
#################################################################################


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.RandomState(0)
    d = 400
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.randn(d), rng.randn(d)
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_commuting_covariances_is_the_closed_form():
    rng = np.random.RandomState(1)
    d = 64
    q, _ = np.linalg.qr(rng.randn(d, d))  # a shared random eigenbasis
    a, b = rng.uniform(0, 2, d), rng.uniform(0, 2, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_identical_gaussians_is_zero():
    mean, cov = random_covariance(np.random.RandomState(2), d=400, n=2048)
    assert abs(frechet_distance(mean, cov, mean, cov)) < 1e-8 * np.trace(cov)


@pytest.mark.parametrize("n", [2048, 200], ids=["full-rank", "rank-deficient-N<d"])
def test_frechet_distance_matches_scipy_sqrtm_on_random_gaussians(n):
    rng = np.random.RandomState(3)
    mu1, s1 = random_covariance(rng, d=400, n=n)
    mu2, s2 = random_covariance(rng, d=400, n=n)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(ours, float) and np.isfinite(ours)
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_metric_streams_biased_float64_statistics_in_any_batching():
    rng = np.random.RandomState(4)
    d = 32
    real, fake = rng.randn(300, d), rng.randn(250, d) * 1.3 + 0.2
    real_mean, fake_mean = real.mean(0), fake.mean(0)
    real_cov = (real - real_mean).T @ (real - real_mean) / len(real)  # divided by N, as StyleGAN-V
    fake_cov = (fake - fake_mean).T @ (fake - fake_mean) / len(fake)
    expected = frechet_distance(fake_mean, fake_cov, real_mean, real_cov)
    values = []
    for sizes in ([300], [1, 99, 200], [150, 150]):
        metric = FrechetDistance(FeatureDetector(d))
        for chunk in np.split(real, np.cumsum(sizes)[:-1]):
            metric.update(features=torch.from_numpy(chunk).float())
        reference = metric.reference_state()
        np.testing.assert_allclose(reference["cov"].numpy(), real_cov, atol=1e-5)
        metric.reset()
        metric.set_reference(reference)
        for chunk in np.array_split(fake, len(sizes)):
            metric.update(features=torch.from_numpy(chunk).float())
        values.append(float(metric.compute()["fvd"]))
    assert values[0] == pytest.approx(expected, rel=1e-5)  # float32 features, float64 sums
    assert values[1] == pytest.approx(values[0], rel=1e-12) and values[2] == pytest.approx(
        values[0], rel=1e-12
    )


#################################################################################
#                          (b) IS and KID: closed forms                         #
#################################################################################


def test_inception_score_closed_forms():
    k = 101
    uniform = np.full((2048, k), 1.0 / k)
    assert inception_score(uniform) == pytest.approx((1.0, 0.0), abs=1e-12)
    one_hot = np.eye(k)[np.arange(2020) % k]  # every split holds each class 2 times: IS = k exactly
    assert inception_score(one_hot, splits=10, seed=None) == pytest.approx((k, 0.0), rel=1e-12)
    eps = 0.1
    smoothed = one_hot * (1 - eps) + eps / k  # KL(p || uniform) = sum p log(k p)
    p = np.array([1 - eps + eps / k] + [eps / k] * (k - 1))
    assert inception_score(smoothed, seed=None)[0] == pytest.approx(
        np.exp((p * np.log(k * p)).sum()), rel=1e-12
    )


def test_inception_score_follows_stylegan_v_shuffle_and_splits():
    probs = np.random.RandomState(5).dirichlet(np.full(101, 0.3), size=2048)
    shuffled = probs.copy()
    np.random.RandomState(42).shuffle(shuffled)
    scores = []
    for i in range(10):  # StyleGAN-V's isv2048_ucf, written out
        part = shuffled[i * 2048 // 10 : (i + 1) * 2048 // 10]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    assert inception_score(probs) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-12)
    assert inception_score(probs, seed=0)[0] != pytest.approx(np.mean(scores), rel=1e-6)  # the seed matters


def test_kernel_distance_closed_form_for_constant_sets():
    d = 8
    u, v = np.full((50, d), 0.5), np.full((60, d), -0.25)
    kernel = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    expected = kernel(u[0], u[0]) + kernel(v[0], v[0]) - 2 * kernel(u[0], v[0])
    mean, std = kernel_distance(u, v, num_subsets=5, subset_size=20)
    assert mean == pytest.approx(expected, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_kernel_distance_matches_torchmetrics_poly_mmd_and_unbiased_formula():
    rng = np.random.RandomState(6)
    x, y = rng.randn(100, 16), rng.randn(100, 16) + 0.3
    ours = polynomial_mmd(x, y)
    assert ours == pytest.approx(float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y))), rel=1e-10)
    m, kernel = 100, lambda a, b: (a @ b.T / 16 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    by_hand = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    assert ours == pytest.approx(by_hand, rel=1e-12)
    mean, std = kernel_distance(x, y, num_subsets=1, subset_size=1000)  # one subset = both whole sets
    assert mean == pytest.approx(ours, rel=1e-10) and std == 0


#################################################################################
#                (f) identical sets ~0, shifted sets the closed form            #
#################################################################################


class UInt8Clips(torch.utils.data.Dataset):
    """Fixed uint8 clips, built like any dataset factory (the real side of a test)."""

    def __init__(self, videos: torch.Tensor, split: str, num_frames: int, resolution: int, num_classes: int):
        self.videos = videos[:, :num_frames]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        return {"video": self.videos[index]}


@pytest.fixture
def tiny_i3d(tmp_path) -> I3DTorchScript:
    """The FVD detector loaded from a stand-in TorchScript file in a cache folder."""
    save_scripted(TinyVideoDetector(num_features=16), tmp_path / "weights" / "i3d_torchscript.pt")
    return I3DTorchScript(weights_dir=str(tmp_path / "weights"), num_features=16)


def test_fvd_of_identical_sets_is_zero_and_of_shifted_sets_is_the_closed_form(tiny_i3d, tmp_path):
    from functools import partial

    from metrics import RealVideos

    generator = torch.Generator().manual_seed(7)
    videos = torch.randint(
        20, 200, (24, 4, 3, 8, 8), dtype=torch.uint8, generator=generator
    )  # (b, f, c, h, w)
    real = RealVideos(partial(UInt8Clips, videos), resolution=8, num_videos=24, batch_size=5, num_workers=0)
    suite = MetricSuite({"fvd": FrechetDistance(tiny_i3d)}, num_frames=4)
    suite.prepare_reference(real, progress=False)

    suite.update(videos)
    identical = suite.compute()["fvd"]
    suite.reset()
    delta = 30
    suite.update(videos + delta)  # every pixel +30 grey levels: features move by W 1 (2 delta / 255)
    shifted = suite.compute()["fvd"]

    weight = tiny_i3d.model.proj.weight.detach().double()  # (16, 96)
    shift = weight.sum(dim=1) * (2 * delta / 255)  # (16,)
    assert abs(identical) < 1e-6
    assert shifted == pytest.approx(float(shift.square().sum()), rel=1e-4)


def test_float_videos_are_rounded_like_the_reference(tiny_i3d):
    levels = torch.randint(0, 256, (3, 4, 3, 8, 8), generator=torch.Generator().manual_seed(8))
    as_float = levels.float() / 127.5 - 1  # what a dataset gives for these uint8 frames
    half_up = (levels.float() + 0.5) / 127.5 - 1  # x * 127.5 + 128 = level + 1: round half up
    torch.testing.assert_close(tiny_i3d(as_float), tiny_i3d(levels.to(torch.uint8)), rtol=0, atol=0)
    assert not torch.equal(tiny_i3d(half_up.clamp(-1, 1)), tiny_i3d(levels.to(torch.uint8)))
    gray = levels[:, :, :1]  # (b, f, 1, h, w): repeated to RGB
    torch.testing.assert_close(
        tiny_i3d(gray.to(torch.uint8)), tiny_i3d(gray.expand(-1, -1, 3, -1, -1).to(torch.uint8))
    )


#################################################################################
#                     (g) the weight registry and its messages                  #
#################################################################################


def test_missing_weights_file_names_the_file_every_place_looked_and_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("LATTE_I3D_TORCHSCRIPT", str(tmp_path / "env" / "i3d.pt"))
    with pytest.raises(FileNotFoundError) as error:
        I3DTorchScript(path=str(tmp_path / "config" / "i3d.pt"), weights_dir=str(tmp_path / "cache"))
    message = str(error.value)
    for expected in (
        "i3d_torchscript.pt",
        f"config path: {tmp_path / 'config' / 'i3d.pt'}",
        f"$LATTE_I3D_TORCHSCRIPT: {tmp_path / 'env' / 'i3d.pt'}",
        f"cache folder: {tmp_path / 'cache' / 'i3d_torchscript.pt'}",
        WEIGHTS["i3d_torchscript"].url,
    ):
        assert expected in message, f"{expected!r} missing from: {message}"
    monkeypatch.delenv("LATTE_I3D_TORCHSCRIPT")
    with pytest.raises(FileNotFoundError, match=r"\$LATTE_I3D_TORCHSCRIPT: not set"):
        resolve_weights("i3d_torchscript", weights_dir=str(tmp_path / "cache"))


def test_weights_are_looked_for_in_config_then_environment_then_cache(tmp_path, monkeypatch):
    files = {where: tmp_path / where / "c3d.pt" for where in ("config", "env", "cache")}
    for file in files.values():
        file.parent.mkdir()
        file.write_bytes(b"x")
    (tmp_path / "cache" / "c3d_ucf101.pt").write_bytes(b"x")
    monkeypatch.setenv("LATTE_C3D_UCF101", str(files["env"]))
    cache = str(tmp_path / "cache")
    assert resolve_weights("c3d_ucf101", path=files["config"], weights_dir=cache) == files["config"]
    assert resolve_weights("c3d_ucf101", weights_dir=cache) == files["env"]
    monkeypatch.delenv("LATTE_C3D_UCF101")
    assert resolve_weights("c3d_ucf101", weights_dir=cache) == tmp_path / "cache" / "c3d_ucf101.pt"


def test_detector_reports_the_sha256_of_the_file_it_loaded(tiny_i3d):
    expected = hashlib.sha256(tiny_i3d.path.read_bytes()).hexdigest()
    assert tiny_i3d.describe() == {
        "detector": "I3DTorchScript",
        "file": "i3d_torchscript.pt",
        "sha256": expected,
    }


def test_every_registry_entry_names_a_file_a_url_and_an_environment_variable():
    assert set(WEIGHTS) == {"i3d_torchscript", "i3d_pretrained_400", "inception_v3", "c3d_ucf101"} | {
        "lpips_vgg",
        "lpips_alex",
        "clip_vit_l14",  # APLA: the perceptual loss's backbone, the consistency metrics' CLIP
    }
    for weight in WEIGHTS.values():
        assert weight.url.startswith("https://") and weight.filename in weight.url.split("?")[0]
        assert weight.env_var.startswith("LATTE_")
