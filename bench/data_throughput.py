"""Data-loading throughput on disk: clips/s from video files, frame folders and the latent cache.

For each source it measures (1) clips/s of one worker: `dataset[i]` in this process (decode the 16 sampled
frames, resize/crop to 256², flip, rescale; or read 16 cached latent frames and draw z), and (2) clips/s end
to end through a shuffled DataLoader (batch 5, as Latte) with N worker processes, after the first batch (so
worker start-up is not counted). The data is generated first (kept under --root for reuse):

    videos_mp4/   H.264 mp4, 320x240 (UCF101's frame size), --frames frames each, textured moving shapes
    videos_avi/   MPEG-4 part 2 avi, 320x240 (UCF101's codec family)
    frames_jpg/   folders of 256x256 jpg frames (Taichi-256 / preprocessed SkyTimelapse style)
    cache/        the latent cache of videos_mp4, built with a tiny random VAE of SD's shape (4 x 32 x 32
                  latents at 256², float16): reading cost is what the real SD VAE's cache costs; the build
                  time printed is not (the real VAE is far heavier; build on a GPU).

    python bench/data_throughput.py                              # 2-core CPU: ~3 minutes
    python bench/data_throughput.py --workers 0 2 4 8 --videos 32  # a bigger machine
"""

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules import index  # noqa: E402
from datamodules.cache_latents import LatentCache  # noqa: E402
from datamodules.synthetic import SyntheticVideos, render_clip  # noqa: E402
from datamodules.videos import DecodedVideos  # noqa: E402

WIDTH, HEIGHT = 320, 240
CODECS = {
    "videos_mp4": dict(codec="libx264", pixelformat="yuv420p", ffmpeg_params=["-crf", "23"]),
    "videos_avi": dict(codec="mpeg4", pixelformat="yuv420p", ffmpeg_params=["-q:v", "5"]),
}

#################################################################################
#                                 Fake Data                                     #
#################################################################################


def render(video: int, frames: int, size: int) -> np.ndarray:
    """uint8 (frames, size, size, 3) of textured moving shapes (SyntheticVideos' clip `video`)."""
    recipe = SyntheticVideos(num_videos=video + 1).recipe(video)
    clip = render_clip(recipe, frames, size)  # (f, 3, size, size) in [0, 1]
    return (clip.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def make_data(root: Path, videos: int, frames: int) -> None:
    """Write the fake videos and frame folders under `root` unless they are there already."""
    for folder, options in CODECS.items():
        for v in range(videos):
            path = root / folder / f"v{v:03d}.{folder[-3:]}"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            top = (WIDTH - HEIGHT) // 2
            pixels = render(v, frames, WIDTH)[:, top : top + HEIGHT]  # (f, 240, 320, 3)
            writer = imageio.get_writer(
                path, fps=25, macro_block_size=16, ffmpeg_log_level="error", **options
            )
            for frame in pixels:
                writer.append_data(frame)
            writer.close()
    for v in range(videos):
        folder = root / "frames_jpg" / f"v{v:03d}"
        if folder.exists():
            continue
        folder.mkdir(parents=True)
        for k, frame in enumerate(render(v, frames, 256)):
            Image.fromarray(frame).save(folder / f"v{v:03d}_{k}.jpg", quality=95)


def tiny_sd_shaped_vae(folder: Path) -> Path:
    """A random AutoencoderKL with SD's latent shape (4 channels, downsample 8), saved to `folder`."""
    from diffusers import AutoencoderKL

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        AutoencoderKL(
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=256,
        ).save_pretrained(folder)
    return folder


#################################################################################
#                                 Measurements                                  #
#################################################################################


def dataset(root: Path, folder: str) -> DecodedVideos:
    """The training split over one generated folder, as the presets read it (16 frames, interval 3, 256²)."""
    frames = folder.startswith("frames")
    return DecodedVideos(
        partial(index.video_folder_index, split_dirs={"train": folder}),
        root,
        num_frames=16,
        resolution=256,
        frame_interval=3,
        clip_sampling="stride" if frames else "linspace",
        spatial="center_crop_resize" if frames else "resize_center_crop",
    )


def per_worker(data: Dataset, clips: int) -> float:
    """Clips/s of `data[i]` in this process (one worker's work), median over 3 passes."""
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(clips):
            data[i % len(data)]
        rates.append(clips / (time.perf_counter() - start))
    return statistics.median(rates)


def end_to_end(data: Dataset, workers: int, batches: int, batch_size: int = 5) -> float:
    """Clips/s through a shuffled DataLoader with `workers` processes, after its first batch."""
    sampler = RandomSampler(data, replacement=True, num_samples=(batches + 1) * batch_size)  # cycles videos
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first reads are not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    """Generate the data, build the cache, measure every source, print a markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "latte_data_bench")
    parser.add_argument("--videos", type=int, default=12, help="videos per source (the loader cycles them)")
    parser.add_argument("--frames", type=int, default=150, help="frames per video (UCF101 averages ~186)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clips", type=int, default=20, help="clips per single-worker pass")
    parser.add_argument("--batches", type=int, default=8, help="timed DataLoader batches of 5")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one core per worker, as DataLoader workers run
    start = time.perf_counter()
    make_data(args.root, args.videos, args.frames)
    print(f"data under {args.root} ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    from backbones.autoencoders import DiffusersAutoencoderKL

    vae = tiny_sd_shaped_vae(args.root / "tiny_vae")
    cache = LatentCache(str(args.root / "cache"), autoencoder_path=str(vae), dtype="float16", device="cpu")
    mp4 = dataset(args.root, "videos_mp4")
    start = time.perf_counter()
    counts = cache.build([mp4], DiffusersAutoencoderKL(str(vae), chunk_size=32), progress=False)
    print(f"latent cache {counts} in {time.perf_counter() - start:.1f} s (tiny VAE)", file=sys.stderr)

    sources = {
        "video files, mp4 (H.264, 320x240)": mp4,
        "video files, avi (MPEG-4, 320x240)": dataset(args.root, "videos_avi"),
        "frame folders, jpg (256x256)": dataset(args.root, "frames_jpg"),
        "latent cache (float16 memmap)": cache.dataset(mp4),
    }
    header = ["source", "1 worker, in process"] + [f"DataLoader, {n} workers" for n in args.workers]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, data in sources.items():
        row = [f"{per_worker(data, args.clips):.1f}"]
        row += [f"{end_to_end(data, n, args.batches):.1f}" for n in args.workers]
        print(f"| {name} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
