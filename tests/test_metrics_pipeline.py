"""The full metric paths with stand-in detector files: loading, FVD/IS/FID/KID values, real clips, caching."""

import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from datamodules import SyntheticVideos
from metrics import (
    C3DTorchScript,
    FrechetDistance,
    I3DTorchScript,
    InceptionV3,
    KernelDistance,
    MetricSuite,
    RealVideos,
    VideoInceptionScore,
    inception_score,
    update_with_samples,
)
from metrics.reference import SeededItems, describe_factory
from metrics.standins import TinyC3D, TinyVideoDetector, random_inception_weights, save_scripted
from utils.video import to_uint8


class ContractI3D(nn.Module):
    """A stand-in `i3d_torchscript.pt` that fails unless called exactly as StyleGAN-V calls the real one."""

    def __init__(self):
        super().__init__()
        self.inner = TinyVideoDetector(num_features=400)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 5 or x.shape[1] != 3 or not x.is_contiguous():
            raise RuntimeError("expected a contiguous uint8 [B, 3, T, H, W] tensor")
        if not (rescale and resize and return_features):
            raise RuntimeError("expected rescale=True, resize=True, return_features=True")
        return self.inner(x, rescale, resize, return_features)


class RandomOffsetClips(torch.utils.data.Dataset):
    """Synthetic clips cut at a random offset drawn from the global torch and python RNGs."""

    def __init__(self, split: str, num_frames: int, resolution: int, num_classes: int, num_videos: int = 12):
        self.videos = SyntheticVideos(split, 3 * num_frames, resolution, num_classes, num_videos)
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        offset = int(torch.randint(0, self.num_frames, ())) + random.randint(0, self.num_frames)
        return {"video": self.videos[index]["video"][offset : offset + self.num_frames]}


@pytest.fixture
def weights_dir(tmp_path) -> str:
    """A cache folder holding stand-ins for the TorchScript detector files, under their registry names."""
    save_scripted(ContractI3D(), tmp_path / "weights" / "i3d_torchscript.pt")
    save_scripted(TinyC3D(), tmp_path / "weights" / "c3d_ucf101.pt")
    return str(tmp_path / "weights")


def synthetic(num_videos: int, seed: int = 0) -> partial:
    """A synthetic-videos dataset factory, as Hydra's `_partial_` builds it."""
    return partial(SyntheticVideos, num_videos=num_videos, seed=seed)


def numpy_fvd(real: np.ndarray, fake: np.ndarray) -> float:
    """StyleGAN-V's FVD from two feature sets, written out with NumPy and scipy.linalg.sqrtm."""
    mu1, mu2 = fake.mean(0), real.mean(0)
    s1, s2 = np.cov(fake, rowvar=False, bias=True), np.cov(real, rowvar=False, bias=True)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2))))


def low_rank_frechet(x1: torch.Tensor, x2: torch.Tensor) -> float:
    """FD of small feature sets (n << d): Tr sqrt(S1 S2) = sum sqrt(eig(A S2 A^T)), A = centred x1 / n^0.5."""
    a1 = (x1 - x1.mean(0)) / x1.shape[0] ** 0.5  # (n1, d): S1 = a1^T a1
    a2 = (x2 - x2.mean(0)) / x2.shape[0] ** 0.5  # (n2, d)
    inner = (a1 @ a2.T) @ (a2 @ a1.T)  # (n1, n1) = a1 S2 a1^T
    trace_sqrt = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()
    traces = a1.square().sum() + a2.square().sum()
    return float((x1.mean(0) - x2.mean(0)).square().sum() + traces - 2 * trace_sqrt)


#################################################################################
#                 (d) a stand-in TorchScript detector, full FVD path            #
#################################################################################


def test_fvd_through_a_torchscript_detector_equals_an_independent_computation(weights_dir):
    suite = MetricSuite({"fvd": FrechetDistance(I3DTorchScript(weights_dir=weights_dir))}, num_frames=4)
    real = RealVideos(synthetic(12), resolution=16, num_videos=12, batch_size=5, num_workers=0)
    suite.prepare_reference(real, progress=False)
    fake_clips = SyntheticVideos("val", num_frames=6, resolution=16, num_videos=10)
    sample = lambda n, generator: torch.stack([fake_clips[i]["video"] for i in range(n)])  # noqa: E731
    assert update_with_samples(suite, sample, num_videos=10, batch_size=10, progress=False) == 10
    ours = suite.compute()["fvd"]

    inner = ContractI3D().inner  # the same weights as the scripted file
    real_videos = torch.stack([SyntheticVideos("train", 4, 16, 0, 12)[i]["video"] for i in range(12)])
    fake_videos = torch.stack([fake_clips[i]["video"][:4] for i in range(10)])  # generated: the first frames
    features = [
        inner(to_uint8(v).permute(0, 2, 1, 3, 4), True, True, True).detach().double().numpy()
        for v in (real_videos, fake_videos)
    ]
    assert ours == pytest.approx(numpy_fvd(*features), rel=1e-5)


def test_metric_suite_rejects_clips_shorter_than_the_protocol(weights_dir):
    suite = MetricSuite({"fvd": FrechetDistance(I3DTorchScript(weights_dir=weights_dir))}, num_frames=16)
    with pytest.raises(ValueError, match="first 16 frames"):
        suite.update(torch.zeros(2, 8, 3, 16, 16))
    with pytest.raises(AssertionError, match="frames first"):
        suite.update(torch.zeros(2, 3, 16, 16, 16))  # b c f h w by mistake


def test_inception_score_through_the_c3d_file(weights_dir):
    suite = MetricSuite({"is": VideoInceptionScore(C3DTorchScript(weights_dir=weights_dir), splits=2)}, 4)
    videos = torch.rand(8, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    suite.update(videos[:5])
    suite.update(videos[5:])
    probs = TinyC3D()(to_uint8(videos).permute(0, 2, 1, 3, 4))
    values = suite.compute()
    mean, std = inception_score(probs, splits=2, seed=42)
    assert values["is"] == pytest.approx(mean, rel=1e-6) and values["is_std"] == pytest.approx(std, rel=1e-5)
    assert values["is"] > 1.05, "the stand-in C3D must give informative probabilities"


@pytest.mark.slow  # 2048-d eigen-decompositions and InceptionV3 at 299 px on a 2-core CPU
def test_fid_and_kid_share_one_inception_pass_and_match_torchmetrics_extractor(tmp_path):
    pytest.importorskip("torch_fidelity")
    from torchmetrics.image.fid import NoTrainInceptionV3

    weights = random_inception_weights(tmp_path / "w" / "weights-inception-2015-12-05-6726825d.pth")
    detector = partial(InceptionV3, weights_dir=str(tmp_path / "w"))
    suite = MetricSuite(
        {
            "fid": FrechetDistance(detector()),
            "kid_x1000": KernelDistance(detector(), num_subsets=3, subset_size=6),
        },
        2,
    )
    assert suite.metrics["fid"].detector is suite.metrics["kid_x1000"].detector
    real = RealVideos(synthetic(2), resolution=16, num_videos=2, batch_size=2, num_workers=0)
    suite.prepare_reference(real, progress=False)
    fake = torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    suite.update(fake)
    values = suite.compute()

    reference = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights), antialias=False)
    real_frames = torch.stack([SyntheticVideos("train", 2, 16, 0, 2)[i]["video"] for i in range(2)])
    real_features = reference(to_uint8(real_frames).flatten(0, 1)).double()  # (4, 2048): every frame
    fake_features = reference(to_uint8(fake).flatten(0, 1)).double()  # (4, 2048)
    mean, cov = suite.metrics["fid"].gaussian()
    torch.testing.assert_close(mean, fake_features.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        suite.metrics["fid"].reference["mean"], real_features.mean(0), rtol=1e-5, atol=1e-5
    )
    assert values["fid"] == pytest.approx(low_rank_frechet(fake_features, real_features), rel=1e-4)
    assert np.isfinite(values["kid_x1000"]) and values["kid_x1000_std"] >= 0


@pytest.mark.slow  # InceptionV3 at 299 px and a 2048-d eigen-decomposition on a 2-core CPU
def test_fid_is_torchmetrics_frechet_inception_distance_with_stylegan_covariances(tmp_path):
    """Same frames, same weights: torchmetrics' FID (covariance / (N - 1)) equals ours once the covariance
    normaliser is matched; ours keeps StyleGAN-V's / N, as for FVD."""
    pytest.importorskip("torch_fidelity")
    from torchmetrics.image.fid import FrechetInceptionDistance

    from metrics import frechet_distance

    weights = random_inception_weights(tmp_path / "w" / "weights-inception-2015-12-05-6726825d.pth")
    generator = torch.Generator().manual_seed(0)
    real, fake = (torch.rand(2, 5, 3, 32, 32, generator=generator) * 2 - 1 for _ in range(2))  # b f c h w
    theirs = FrechetInceptionDistance(feature_extractor_weights_path=str(weights), antialias=False).double()
    theirs.update(to_uint8(real).flatten(0, 1), real=True)
    theirs.update(to_uint8(fake).flatten(0, 1), real=False)

    ours = FrechetDistance(InceptionV3(weights_dir=str(tmp_path / "w")), name="fid")
    ours.update(real)
    real_mean, real_cov = ours.gaussian()
    ours.reset()
    ours.update(fake)
    fake_mean, fake_cov = ours.gaussian()
    n = 10  # frames per set
    unbiased = frechet_distance(fake_mean, fake_cov * n / (n - 1), real_mean, real_cov * n / (n - 1))
    assert float(theirs.compute()) == pytest.approx(unbiased, rel=1e-4)
    assert frechet_distance(fake_mean, fake_cov, real_mean, real_cov) < unbiased, "/ N: smaller traces"


#################################################################################
#                      Real clips: selection, seeding, the cache                #
#################################################################################


def test_real_clips_are_a_seeded_subset_read_under_seeded_rngs():
    real = RealVideos(partial(RandomOffsetClips, num_videos=12), resolution=8, num_videos=5, num_workers=0)
    chosen = real.indices(4)
    assert len(chosen) == 5 and chosen == sorted(chosen) and chosen == real.indices(4)
    assert RealVideos(real.dataset, resolution=8, num_videos=5, seed=1).indices(4) != chosen

    state = torch.get_rng_state()
    first = torch.cat(list(real.batches(4)))
    second = torch.cat(list(real.batches(4)))
    assert torch.equal(torch.get_rng_state(), state), "reading real clips must not consume the global RNG"
    assert torch.equal(first, second)
    items = SeededItems(real.build(4), seed=0)
    assert not torch.equal(items[0]["video"], SeededItems(real.build(4), seed=3)[0]["video"])


class FlippableClips(RandomOffsetClips):
    """A dataset factory with a `flip` augmentation switch, like datamodules.DecodedVideos."""

    def __init__(self, split: str, num_frames: int, resolution: int, num_classes: int, flip: bool = True):
        assert not flip, "the metrics must read real clips unflipped"
        super().__init__(split, num_frames, resolution, num_classes, num_videos=4)


def test_real_clips_are_never_flipped_and_the_dataset_is_described_stably():
    real = RealVideos(FlippableClips, resolution=8, num_videos=4, num_workers=0)
    assert len(real.build(4)) == 4 and real.describe(4)["dataset_kwargs"] == {"flip": False}
    sized = RealVideos(RandomOffsetClips, resolution=8, num_workers=0, dataset_kwargs={"num_videos": 3})
    assert len(sized.build(4)) == 3 and sized.describe(4)["dataset_kwargs"] == {"num_videos": 3}

    def factory() -> partial:  # like datamodules.DecodedVideos: a nested index-builder partial and a path
        return partial(RandomOffsetClips, index=partial(sorted, key=str), root=Path("/data"))

    described = json.dumps(describe_factory(factory()))
    assert described == json.dumps(describe_factory(factory())), "cache keys must be the same in every run"
    assert "0x" not in described and "builtins.sorted" in described and "/data" in described


def test_real_clips_from_decoded_videos_follow_the_protocol(tmp_path):
    from datamodules import DecodedVideos
    from datamodules.index import taichi_index
    from tests.helpers.fake_videos import decode_clip, make_taichi

    make_taichi(tmp_path / "taichi")  # train: videos of 50, 54 and 48 frames
    index = partial(taichi_index, split_dirs={"train": "train", "val": "test", "test": "test"})
    factory = partial(DecodedVideos, index=index, clip_sampling="linspace", flip=True)  # training settings
    real = RealVideos(factory, root=str(tmp_path / "taichi"), resolution=32, batch_size=2, num_workers=0)
    assert real.name == "taichi"
    passes = [[decode_clip(clip) for batch in real.batches(16) for clip in batch] for _ in range(2)]
    assert passes[0] == passes[1], "seeded: the same clips every time"
    lengths = {1: 50, 2: 54, 3: 48}
    for frames, video, flipped in passes[0]:  # StyleGAN-V: 16 frames at stride 3, not Latte's linspace
        assert frames == list(range(frames[0], frames[0] + 48, 3)) and not flipped
        assert 0 <= frames[0] <= lengths[video] - 16 * 3 + 3 - 1, "offset in [0, L - 16 s + s - 1]"
    assert sorted(video for _, video, _ in passes[0]) == [1, 2, 3]
    assert real.describe(16)["dataset_kwargs"]["root"] == str(tmp_path / "taichi")
    with pytest.raises(ValueError, match="has 0 clips"):  # stride 6 needs 96 frames: all too short, dropped
        RealVideos(factory, root=real.root, resolution=32, frame_stride=6).indices(16)


def test_reference_is_cached_and_recomputed_when_any_setting_changes(weights_dir, tmp_path, monkeypatch):
    calls = []
    original = RealVideos.batches

    def counting(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RealVideos, "batches", counting)
    cache = str(tmp_path / "cache")

    def reference(**changes) -> tuple[str, torch.Tensor]:
        settings = {"dataset": synthetic(8), "resolution": 16, "num_videos": 8, "num_workers": 0, **changes}
        suite = MetricSuite({"fvd": FrechetDistance(I3DTorchScript(weights_dir=weights_dir))}, num_frames=4)
        path = suite.prepare_reference(RealVideos(cache_dir=cache, **settings), progress=False)["fvd"]
        return path, suite.metrics["fvd"].reference["mean"]

    path, mean = reference()
    assert len(calls) == 1 and path.endswith(".pt") and "syntheticvideos-train-16px-4f-fvd" in path
    again, cached_mean = reference()
    assert len(calls) == 1 and again == path, "the second run must read the cache"
    assert torch.equal(mean, cached_mean)
    changed = [
        reference(num_videos=6)[0],
        reference(resolution=8)[0],
        reference(dataset=synthetic(8, seed=1))[0],
        reference(dataset_kwargs={"num_videos": 9})[0],
        reference(seed=5, num_videos=6)[0],
    ]
    assert len(calls) == 6 and len({path, *changed}) == 6
    save_scripted(TinyVideoDetector(seed=1), f"{weights_dir}/i3d_torchscript.pt")  # a different detector file
    assert reference()[0] != path and len(calls) == 7


#################################################################################
#                       The callback, inside a real training run                #
#################################################################################


def test_metrics_callback_logs_fvd_with_its_sampler_to_every_logger(tmp_path, tiny_overrides, weights_dir):
    from tests.conftest import compose_train
    from utils.run import train

    cfg = compose_train(
        tmp_path,
        [
            *tiny_overrides,
            "callbacks=metrics",
            "metrics@callbacks.metrics.suite=[fvd,is_ucf]",
            f"paths.weights_dir={weights_dir}",
            "callbacks.metrics.suite.num_frames=4",
            "callbacks.metrics.suite.metrics.is.splits=2",
            "callbacks.metrics.every_n_steps=2",
            "callbacks.metrics.num_videos=4",
            "callbacks.metrics.batch_size=2",
            "callbacks.metrics.sampler.num_steps=2",
            "callbacks.metrics.real.num_videos=6",
            "callbacks.metrics.real.batch_size=3",
            "callbacks.metrics.progress=false",
        ],
    )
    metrics = train(cfg)
    for key in ("val/fvd", "val/fvd_ddim2-eta0.0", "val/is", "val/is_std", "val/is_ddim2-eta0.0"):
        assert key in metrics and np.isfinite(metrics[key]), key
    run = tmp_path / "run"
    rows = (run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [row.split(",")[header.index("val/fvd")] for row in rows[1:]]
    assert len([v for v in logged if v]) == 2, "FVD at steps 2 and 4"
    record = json.loads((run / "metrics" / "step_0000004.json").read_text())
    sha = I3DTorchScript(weights_dir=weights_dir).sha256
    assert record["sampler"] == "ddim2-eta0.0" and record["detectors"]["fvd"]["sha256"] == sha
    assert record["values"]["fvd"] == pytest.approx(metrics["val/fvd"])
    assert sha in (run / "csv" / "version_0" / "hparams.yaml").read_text()
    assert list((tmp_path / "weights" / "real_stats").glob("syntheticvideos-train-16px-4f-fvd-*.pt"))
