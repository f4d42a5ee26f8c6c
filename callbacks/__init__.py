"""Lightning callbacks: periodic video sampling, the loss-curve plot, data health."""

from callbacks.data_health import DataHealth
from callbacks.loss_curve import LossCurve
from callbacks.video_sampler import VideoSampler

__all__ = ["DataHealth", "LossCurve", "VideoSampler"]
