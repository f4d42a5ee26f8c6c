"""Generated videos read back from a folder: video files (mp4, avi, ...) or one folder of frames per video.

As StyleGAN-V's folder route: entries in sorted name order, the first `num_videos` of them, the first
`num_frames` frames of each at `stride` (offset 0); a video with too few frames is an error, not skipped.
Items are {"video": (f, 3, h, w) uint8}, frames before channels like every dataset here.
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_video_file(path: Path, count: int) -> list[np.ndarray]:
    """Up to `count` leading RGB frames (h, w, 3) uint8 of a video file."""
    if path.suffix.lower() == ".gif":
        with Image.open(path) as image:
            frames = []
            for index in range(min(count, getattr(image, "n_frames", 1))):
                image.seek(index)
                frames.append(np.asarray(image.convert("RGB")))
            return frames
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        import imageio.v2 as imageio

        with imageio.get_reader(path, format="FFMPEG") as reader:
            frames = []
            for frame in reader:
                frames.append(np.asarray(frame)[..., :3])
                if len(frames) == count:
                    break
            return frames
    import cv2  # e.g. the GPU image, which has OpenCV but not imageio-ffmpeg

    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1].copy())  # BGR -> RGB
    capture.release()
    return frames


class VideoFolder(Dataset):
    """The first `num_frames` frames (at `stride`) of each of the first `num_videos` videos of a folder."""

    def __init__(
        self,
        root: str | Path,
        num_frames: int = 16,
        stride: int = 1,
        num_videos: int | None = None,
        resolution: int | None = None,
    ):
        """resolution: if set, every frame must be resolution x resolution (the real clips' size)."""
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"videos_dir '{self.root}' is not a folder of generated videos")
        entries = sorted(
            p
            for p in self.root.iterdir()
            if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            or (p.is_dir() and any(f.suffix.lower() in FRAME_SUFFIXES for f in p.iterdir()))
        )
        if not entries:
            raise FileNotFoundError(
                f"'{self.root}' holds no videos: expected video files ({', '.join(VIDEO_SUFFIXES)}) or one "
                f"folder of frame images ({', '.join(FRAME_SUFFIXES)}) per video"
            )
        self.entries = entries[:num_videos] if num_videos is not None else entries
        self.num_frames = num_frames
        self.stride = stride
        self.resolution = resolution

    def __len__(self) -> int:
        """Number of videos read."""
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """{"video": (num_frames, 3, h, w) uint8} of video `index`."""
        path = self.entries[index]
        needed = (self.num_frames - 1) * self.stride + 1
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)[:needed]
            frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        else:
            frames = read_video_file(path, needed)
        if len(frames) < needed:
            raise ValueError(
                f"'{path}' has {len(frames)} frames; the metrics need {needed} ({self.num_frames} at stride "
                f"{self.stride})"
            )
        video = torch.from_numpy(np.stack(frames[:: self.stride])).permute(0, 3, 1, 2)  # (f, 3, h, w) uint8
        if self.resolution is not None and video.shape[2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"'{path}' has {video.shape[3]}x{video.shape[2]} frames; the real clips are "
                f"{self.resolution}x{self.resolution}: resize the generated videos the same way"
            )
        return {"video": video.contiguous()}
