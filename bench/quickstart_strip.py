"""A PNG frame strip of a run's last sampled videos: one row per video, a few frames each (for the README).

    python bench/quickstart_strip.py logs/quickstart/runs/<run> --out docs/quickstart_samples.png

Reads the newest ``samples/step_*.gif`` that ``callbacks.VideoSampler`` wrote and the number of videos in it
from the run's ``.hydra/config.yaml``.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.video import grid_videos, read_gif  # noqa: E402


def last_samples(run: Path) -> Path:
    """The gif of the highest step in ``run/samples``."""
    gifs = sorted((run / "samples").glob("step_*.gif"))
    if not gifs:
        raise FileNotFoundError(f"no samples/step_*.gif in {run}: is it a train.py run folder?")
    return gifs[-1]  # step numbers are zero-padded, so the names sort by step


def frame_strip(videos: np.ndarray, num_frames: int = 4, scale: int = 4, pad: int = 2) -> np.ndarray:
    """Tile ``n f h w 3`` uint8 videos as ``n`` rows of ``num_frames`` evenly spaced frames, upscaled."""
    n, f, h, w, _ = videos.shape
    frames = videos[:, np.linspace(0, f - 1, min(num_frames, f)).round().astype(int)]  # (n, k, h, w, 3)
    frames = frames.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour: pixels stay visible
    k, hs, ws = frames.shape[1:4]
    canvas = np.full((n * (hs + pad) + pad, k * (ws + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        for j in range(k):
            top, left = pad + i * (hs + pad), pad + j * (ws + pad)
            canvas[top : top + hs, left : left + ws] = frames[i, j]
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a train.py run folder, e.g. logs/quickstart/runs/<run>")
    parser.add_argument("--out", type=Path, default=Path("docs/quickstart_samples.png"))
    parser.add_argument("--frames", type=int, default=4, help="frames shown per video")
    parser.add_argument("--scale", type=int, default=4, help="pixel upscaling")
    args = parser.parse_args()
    gif = last_samples(args.run)
    num_videos = OmegaConf.load(args.run / ".hydra" / "config.yaml").callbacks.video_sampler.num_videos
    strip = frame_strip(grid_videos(read_gif(gif), num_videos), args.frames, args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(args.out, optimize=True)
    print(f"{args.out}: {num_videos} videos x {args.frames} frames of {gif}")


if __name__ == "__main__":
    main()
