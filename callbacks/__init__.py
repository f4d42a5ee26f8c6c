"""Lightning callbacks: checkpoints, video sampling, the loss-curve plot, generation metrics (FVD, ...)."""

from callbacks.checkpoint import RunCheckpoint
from callbacks.data_health import DataHealth
from callbacks.loss_curve import LossCurve
from callbacks.metrics import GenerationMetrics
from callbacks.video_sampler import VideoSampler

__all__ = ["DataHealth", "GenerationMetrics", "LossCurve", "RunCheckpoint", "VideoSampler"]
