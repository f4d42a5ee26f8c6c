"""Lightning callbacks: periodic video sampling and the loss-curve plot."""

from callbacks.loss_curve import LossCurve
from callbacks.video_sampler import VideoSampler

__all__ = ["LossCurve", "VideoSampler"]
