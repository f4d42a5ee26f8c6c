"""Video data: one generic DataModule and the datasets it serves (``b f c h w`` clips in [-1, 1])."""

from datamodules.synthetic import SyntheticVideos
from datamodules.video import VideoDataModule

__all__ = ["SyntheticVideos", "VideoDataModule"]
