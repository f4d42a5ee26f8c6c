"""Writing videos: ``b f c h w`` tensors in [-1, 1] to uint8 frames, grids, mp4 and gif files (and back)."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageSequence


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] floats to uint8 the way the Latte reference saves videos: clamp((x/2 + 0.5)*255 + 0.5)."""
    return ((video.float() * 0.5 + 0.5) * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def video_grid(videos: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``n f c h w`` videos in [-1, 1] into one ``f H W 3`` uint8 array (a grid of ``nrow`` columns)."""
    assert videos.ndim == 5, f"expected videos (n, f, c, h, w), got {tuple(videos.shape)}"
    n, f, c, h, w = videos.shape
    assert c in (1, 3), f"can only write 1- or 3-channel videos, got c={c} (decode latents first)"
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    frames = to_uint8(videos.detach().cpu()).expand(n, f, 3, h, w)
    canvas = torch.zeros(f, 3, ncol * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        row, col = divmod(i, nrow)
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        canvas[:, :, top : top + h, left : left + w] = frames[i]
    return rearrange(canvas, "f c h w -> f h w c").numpy()


def grid_videos(frames: np.ndarray, num_videos: int, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Cut ``f H W 3`` frames of a ``video_grid`` of ``num_videos`` back into ``n f h w 3`` videos."""
    nrow = nrow or math.ceil(math.sqrt(num_videos))
    ncol = math.ceil(num_videos / nrow)
    height, width = frames.shape[1:3]
    h, w = (height - pad) // ncol - pad, (width - pad) // nrow - pad
    assert (ncol * (h + pad) + pad, nrow * (w + pad) + pad) == (height, width), (
        f"{height}x{width} frames are not a grid of {num_videos} videos in {nrow} columns with padding {pad}"
    )
    videos = []
    for i in range(num_videos):
        row, col = divmod(i, nrow)
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        videos.append(frames[:, top : top + h, left : left + w])
    return np.stack(videos)


def read_gif(path: str | Path) -> np.ndarray:
    """Read a gif (e.g. from ``write_gif``) as ``f h w 3`` uint8 RGB frames."""
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Write ``f h w 3`` uint8 frames as an H.264 mp4 (imageio-ffmpeg, else OpenCV)."""
    with Mp4Writer(path, fps) as writer:
        for frame in _even_size(frames):
            writer.append(frame)
    return Path(path)


class Mp4Writer:
    """An mp4 written one ``h w 3`` uint8 frame at a time (imageio-ffmpeg's H.264, else OpenCV's mp4v)."""

    def __init__(self, path: str | Path, fps: int = 8):
        self.path, self.fps = Path(path), fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer, self.frames = None, 0

    def _open(self, size: tuple[int, int]) -> None:
        """Start the encoder for frames of ``size`` (h, w)."""
        if importlib.util.find_spec("imageio_ffmpeg") is not None:
            import imageio.v2 as imageio

            self.writer = imageio.get_writer(
                self.path, fps=self.fps, codec="libx264", quality=9, macro_block_size=1
            )
            self.write, self.finish = self.writer.append_data, self.writer.close
        else:  # e.g. the GPU image, which has OpenCV but not imageio-ffmpeg
            import cv2

            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (size[1], size[0]))
            self.write = lambda frame: self.writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
            self.finish = self.writer.release

    def append(self, frame: np.ndarray) -> None:
        """Append one ``h w 3`` uint8 frame (padded to an even size, which H.264 requires)."""
        frame = _even_size(frame[None])[0]
        if self.writer is None:
            self._open(frame.shape[:2])
        self.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Finish the file."""
        if self.writer is not None:
            self.finish()
            self.writer = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_gif(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Write ``f h w 3`` uint8 frames as a looping gif."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def _even_size(frames: np.ndarray) -> np.ndarray:
    """Pad frames to even height and width, which H.264 encoders require."""
    f, h, w, c = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
