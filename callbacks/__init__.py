"""Lightning callbacks: periodic video sampling, the loss-curve plot and generation metrics (FVD, ...)."""

from callbacks.data_health import DataHealth
from callbacks.loss_curve import LossCurve
from callbacks.metrics import GenerationMetrics
from callbacks.video_sampler import VideoSampler

__all__ = ["DataHealth", "GenerationMetrics", "LossCurve", "VideoSampler"]
