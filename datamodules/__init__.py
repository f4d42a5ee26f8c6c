"""Video data: one generic DataModule and the datasets it serves (``b f c h w`` clips in [-1, 1]).

The latent cache lives in ``datamodules.cache_latents`` (not imported here, so that
``python -m datamodules.cache_latents`` runs it as a fresh module).
"""

from datamodules.synthetic import SyntheticVideos
from datamodules.video import VideoDataModule
from datamodules.videos import DecodedVideos, VideoIndex, VideoRecord

__all__ = ["DecodedVideos", "SyntheticVideos", "VideoDataModule", "VideoIndex", "VideoRecord"]
