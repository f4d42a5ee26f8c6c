"""Video generation metrics (FVD, FID, KID, IS) following the StyleGAN-V protocol that Latte reports.

`frechet_distance` and the other statistics (`metrics.frechet`), the detectors and their weight registry
(`metrics.detectors`, `metrics.weights`), the DDP-synced torchmetrics metrics (`metrics.scores`), real-data
references with an on-disk cache (`metrics.reference`) and the suite that runs them (`metrics.suite`).
"""

from metrics.detectors import C3DTorchScript, Detector, I3DTorchScript, I3DVideoGPT, InceptionV3
from metrics.frechet import frechet_distance, inception_score, kernel_distance, polynomial_mmd
from metrics.i3d import I3DTorchScriptLike, InceptionI3d
from metrics.reference import RealVideos
from metrics.scores import FrechetDistance, KernelDistance, VideoInceptionScore, VideoMetric
from metrics.suite import MetricSuite, update_with_samples
from metrics.video_folder import VideoFolder
from metrics.weights import WEIGHTS, WeightFile, file_sha256, resolve_weights

__all__ = [
    "WEIGHTS",
    "C3DTorchScript",
    "Detector",
    "FrechetDistance",
    "I3DTorchScript",
    "I3DTorchScriptLike",
    "I3DVideoGPT",
    "InceptionI3d",
    "InceptionV3",
    "KernelDistance",
    "MetricSuite",
    "RealVideos",
    "VideoFolder",
    "VideoInceptionScore",
    "VideoMetric",
    "WeightFile",
    "file_sha256",
    "frechet_distance",
    "inception_score",
    "kernel_distance",
    "polynomial_mmd",
    "resolve_weights",
    "update_with_samples",
]
