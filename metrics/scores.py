"""FVD / FID, KID and IS as torchmetrics `Metric`s: per-rank states over generated videos, synced under DDP.

Each metric owns a detector (`metrics.detectors`) and accumulates what its statistic needs:

| metric | states (reduced across ranks) | reference (real data, set once) | compute() |
|---|---|---|---|
| `FrechetDistance` (FVD, FID) | float64 sum(x), sum(x x^T), N (summed) | mean, covariance | {name} |
| `KernelDistance` (KID) | features (concatenated) | real features | {name, name_std} |
| `VideoInceptionScore` (IS) | probabilities (concatenated) | none | {name, name_std} |

`update(videos)` takes `b f c h w` videos (float in [-1, 1] or uint8); `update(features=...)` takes the
detector's output directly (a `MetricSuite` runs a detector shared by several metrics once). The real side is
accumulated with the same `update`, read with `reference_state()` inside `sync_context()`, and then fixed
with `set_reference()`, which `reset()` leaves in place.
"""

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from metrics.detectors import Detector
from metrics.frechet import frechet_distance, inception_score, kernel_distance, mean_and_covariance

#################################################################################
#                                   Base class                                  #
#################################################################################

CLIPS = ("first", "last")  # which frames of a generated video a metric sees


class VideoMetric(Metric):
    """A detector plus states over generated videos, compared with a fixed reference of real videos."""

    is_differentiable = False
    full_state_update = False
    needs_reference = True

    def __init__(
        self, detector: Detector, name: str, num_frames: int | None = None, clip: str = "first", **kwargs
    ):
        """num_frames: the frames of each video (and real clip) it sees, None: the suite's; clip: "first" or
        "last" of a generated video's frames (a long stream's end: its drift; real clips are all alike)."""
        super().__init__(**kwargs)
        if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 1):
            raise ValueError(f"{name}: num_frames must be an int >= 1 or null, got {num_frames!r}")
        if clip not in CLIPS:
            raise ValueError(f"{name}: clip must be one of {CLIPS}, got {clip!r}")
        self.detector = detector
        self.name = name
        self.num_frames, self.clip = num_frames, clip
        self.reference: dict[str, torch.Tensor] | None = None

    def update(self, videos: torch.Tensor | None = None, features: torch.Tensor | None = None) -> None:
        """Add `b f c h w` videos (or the detector's features of them) to this rank's state."""
        assert (videos is None) != (features is None), "pass either videos or features, not both"
        if features is None:
            features = self.detector(videos)  # (n, d)
        assert features.ndim == 2 and features.shape[1] == self.detector.num_features, (
            f"{self.name}: features must be (n, {self.detector.num_features}), got {tuple(features.shape)}"
        )
        self.accumulate(features)

    def accumulate(self, features: torch.Tensor) -> None:
        """Add (n, d) features to the states."""
        raise NotImplementedError

    def reference_state(self) -> dict[str, torch.Tensor]:
        """What to keep of the current (real-data) states as the reference, on the CPU."""
        raise NotImplementedError

    def set_reference(self, reference: dict[str, torch.Tensor]) -> None:
        """Fix the real-data reference that compute() compares the generated videos with."""
        self.reference = {key: value.cpu() for key, value in reference.items()}

    def settings(self) -> dict:
        """Constructor settings that change the reference (they enter its cache key)."""
        return {}

    def reference_key(self) -> dict:
        """What identifies this metric's reference: the statistic, its settings and the detector."""
        return {"statistic": type(self).__name__, **self.settings(), "detector": self.detector.describe()}

    def _reference(self) -> dict[str, torch.Tensor]:
        """The reference, or a clear error when it was never set."""
        if self.reference is None:
            raise RuntimeError(f"{self.name}: no real-data reference set; call MetricSuite.prepare_reference")
        return self.reference


#################################################################################
#                             Fréchet distance (FVD, FID)                       #
#################################################################################


class FrechetDistance(VideoMetric):
    """Fréchet distance of detector features (FVD with an I3D, FID with the per-frame InceptionV3)."""

    higher_is_better = False

    def __init__(self, detector: Detector, name: str = "fvd", **kwargs):
        super().__init__(detector, name, **kwargs)
        d = detector.num_features
        self.add_state("feature_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer_sum", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def accumulate(self, features: torch.Tensor) -> None:
        x = features.float().double()  # as StyleGAN-V: float32 features, float64 sums
        self.feature_sum += x.sum(dim=0)  # (d,)
        self.outer_sum += x.T @ x  # (d, d)
        self.count += x.shape[0]

    def gaussian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and biased covariance (divided by N) of the accumulated features, float64."""
        mean, cov = mean_and_covariance(self.feature_sum, self.outer_sum, float(self.count))
        return torch.from_numpy(mean), torch.from_numpy(cov)

    def reference_state(self) -> dict[str, torch.Tensor]:
        mean, cov = self.gaussian()
        return {"mean": mean, "cov": cov, "count": self.count.detach().cpu()}

    def compute(self) -> dict[str, torch.Tensor]:
        reference = self._reference()
        mean, cov = self.gaussian()
        distance = frechet_distance(mean, cov, reference["mean"], reference["cov"])
        return {self.name: torch.tensor(distance, dtype=torch.float64)}


#################################################################################
#                            Kernel distance (KID)                              #
#################################################################################


class KernelDistance(VideoMetric):
    """KID: polynomial-kernel MMD^2 between generated and real features over random subsets.

    Defaults follow StyleGAN-V's kid50k_full (100 subsets of at most 1000, kernel (x.y / d + 1)^3), including
    its report of KID x1000: `scale` multiplies mean and std, and the name says so (`kid_x1000`, `_std`).
    """

    higher_is_better = False

    def __init__(
        self,
        detector: Detector,
        name: str = "kid_x1000",
        num_subsets: int = 100,
        subset_size: int = 1000,
        degree: int = 3,
        gamma: float | None = None,
        coef: float = 1.0,
        scale: float = 1000.0,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(detector, name, **kwargs)
        if num_subsets < 1 or subset_size < 2:
            raise ValueError(
                f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}"
            )
        self.num_subsets = num_subsets
        self.subset_size = subset_size
        self.degree = degree
        self.gamma = gamma
        self.coef = coef
        self.scale = scale
        self.seed = seed
        self.add_state("features", [], dist_reduce_fx="cat")

    def accumulate(self, features: torch.Tensor) -> None:
        self.features.append(features.float())

    def reference_state(self) -> dict[str, torch.Tensor]:
        return {"features": dim_zero_cat(self.features).cpu()}

    def compute(self) -> dict[str, torch.Tensor]:
        real = self._reference()["features"]
        generated = dim_zero_cat(self.features)  # (n, d)
        mean, std = kernel_distance(
            generated, real, self.num_subsets, self.subset_size, self.degree, self.gamma, self.coef, self.seed
        )
        return {
            self.name: torch.tensor(mean * self.scale, dtype=torch.float64),
            f"{self.name}_std": torch.tensor(std * self.scale, dtype=torch.float64),
        }


#################################################################################
#                          Inception Score (C3D, UCF101)                        #
#################################################################################


class VideoInceptionScore(VideoMetric):
    """IS of generated videos from the C3D's UCF-101 probabilities: shuffled (seed 42), 10 splits."""

    higher_is_better = True
    needs_reference = False

    def __init__(
        self, detector: Detector, name: str = "is", splits: int = 10, seed: int | None = 42, **kwargs
    ):
        super().__init__(detector, name, **kwargs)
        self.splits = splits
        self.seed = seed
        self.add_state("probs", [], dist_reduce_fx="cat")

    def accumulate(self, features: torch.Tensor) -> None:
        self.probs.append(features.float())

    def compute(self) -> dict[str, torch.Tensor]:
        mean, std = inception_score(dim_zero_cat(self.probs), self.splits, self.seed)
        return {
            self.name: torch.tensor(mean, dtype=torch.float64),
            f"{self.name}_std": torch.tensor(std, dtype=torch.float64),
        }
