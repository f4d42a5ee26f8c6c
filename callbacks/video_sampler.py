"""Periodic sampling: generate videos with the EMA weights, write mp4 + gif grids, log them to the loggers."""

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from utils.video import to_uint8, video_grid, write_gif, write_mp4


class VideoSampler(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training) sample a fixed-seed video grid."""

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 10_000,
        num_videos: int = 4,
        fps: int = 8,
        seed: int = 0,
        on_train_end: bool = True,
    ):
        if every_n_steps < 1 or num_videos < 1:
            raise ValueError(f"every_n_steps and num_videos must be >= 1, got {every_n_steps}, {num_videos}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_videos = num_videos
        self.fps = fps
        self.seed = seed
        self.sample_on_train_end = on_train_end
        self.written: list[Path] = []
        self._last_step = -1

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.sample_and_log(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.sample_on_train_end and trainer.global_step != self._last_step:
            self.sample_and_log(trainer, pl_module)

    def sample_and_log(self, trainer: Trainer, pl_module: LightningModule) -> list[Path]:
        """Sample, write ``step_XXXXXXX.{mp4,gif}`` into ``dirpath``, log the video to wandb / TensorBoard.

        Every rank samples the same videos (under trainer=fsdp each forward needs all ranks; under DDP the
        others would wait at the next all-reduce anyway); rank 0 writes and logs them.
        """
        step = self._last_step = trainer.global_step
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)  # same noise every time
        videos = pl_module.sample(self.num_videos, generator=generator)  # (n, f, c, h, w) in [-1, 1]
        if not trainer.is_global_zero:
            return []
        grid = video_grid(videos)
        paths = [
            write_mp4(self.dirpath / f"step_{step:07d}.mp4", grid, self.fps),
            write_gif(self.dirpath / f"step_{step:07d}.gif", grid, self.fps),
        ]
        self.written += paths
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("samples/video", [str(paths[1])], step=step, format=["gif"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_video("samples/video", to_uint8(videos.cpu()), step, fps=self.fps)
        return paths
