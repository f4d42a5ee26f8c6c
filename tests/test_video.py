"""Video writing: the reference uint8 rounding, grid layout, and mp4/gif files that decode back."""

import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image

from utils.video import grid_videos, read_gif, to_uint8, video_grid, write_gif, write_mp4


def test_to_uint8_rounds_like_the_latte_reference():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0, 0.5])
    expected = [0, 0, 128, 255, 255, 191]  # clamp((x/2 + 0.5) * 255 + 0.5) truncated
    assert to_uint8(x).tolist() == expected


def test_video_grid_tiles_videos_row_major_with_padding():
    videos = torch.full((3, 2, 3, 4, 4), -1.0)
    videos[1] = 1.0  # second video white
    grid = video_grid(videos, nrow=2, pad=1)
    assert grid.shape == (2, 2 * 5 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8
    assert (grid[:, 1:5, 6:10] == 255).all(), "video 1 sits in row 0, column 1"
    assert (grid[:, 1:5, 1:5] == 0).all() and (grid[:, 6:10, 1:5] == 0).all()


def test_mp4_and_gif_decode_to_the_written_frames(tmp_path):
    frames = np.zeros((6, 16, 24, 3), dtype=np.uint8)
    for i in range(6):
        frames[i, :, 4 * i : 4 * i + 4] = 255  # a bar moving right
    mp4 = imageio.mimread(write_mp4(tmp_path / "v.mp4", frames, fps=8))
    assert len(mp4) == 6 and mp4[0].shape == (16, 24, 3)
    assert np.abs(np.stack(mp4).astype(int) - frames).mean() < 10, "lossy, but the same video"
    gif = Image.open(write_gif(tmp_path / "v.gif", frames, fps=8))
    assert gif.n_frames == 6 and abs(gif.info["duration"] - 1000 / 8) <= 10  # gif stores 10 ms units


def test_a_gif_grid_reads_back_into_its_videos(tmp_path):
    videos = torch.rand(3, 4, 3, 6, 5) * 2 - 1  # 3 videos: 2 columns, 2 rows with one empty tile
    grid = video_grid(videos, pad=2)
    assert np.array_equal(grid_videos(grid, 3), to_uint8(videos).permute(0, 1, 3, 4, 2).numpy())
    frames = read_gif(write_gif(tmp_path / "grid.gif", grid))
    assert frames.shape == grid.shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - grid).mean() < 8, "the gif's 256-colour palette is close to the frames"


def test_quickstart_strip_draws_the_newest_samples_of_a_run_one_row_per_video(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("callbacks:\n  video_sampler:\n    num_videos: 3\n")
    frames = torch.linspace(0, 0.2, 6).view(1, 6, 1, 1, 1).expand(3, 6, 3, 5, 5)  # 6 distinct frames
    for step, offset in ((600, -1.0), (1200, 0.8)):  # the older grid dark, the newest near white
        write_gif(run / "samples" / f"step_{step:07d}.gif", video_grid(frames + offset))
    out = tmp_path / "strip.png"
    script = Path(__file__).resolve().parents[1] / "bench" / "quickstart_strip.py"
    result = subprocess.run(
        [sys.executable, str(script), str(run), "--out", str(out), "--frames", "4", "--scale", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    strip = np.asarray(Image.open(out).convert("RGB"))
    assert strip.shape == (3 * (10 + 2) + 2, 4 * (10 + 2) + 2, 3), "3 rows of 4 frames, 5 px upscaled 2x"
    assert strip.min() > 220, "the newest grid (near white), not the older one"
