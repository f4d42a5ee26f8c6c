"""FVD feature-extraction speed: 2048 videos x 16 frames at 256 px through the I3D, as the metrics run it.

The real `i3d_torchscript.pt` is not available, so a randomly initialised I3D of the same architecture
(`metrics.InceptionI3d`, 12.7M parameters) is scripted behind the StyleGAN-V call signature, saved, and loaded
through `metrics.I3DTorchScript` exactly like the real file: `b f c h w` videos in [-1, 1] -> reference uint8
rounding -> uint8 [B, 3, T, H, W] -> in-module rescale and resize to 224 -> 400-d features, full fp32 (no
TF32). The same network also runs eagerly through `metrics.I3DVideoGPT` (the `i3d_pretrained_400.pt` route).
Timed: feature extraction of all videos (videos are made on the device, so no data loading), the float64
statistics update, and the final 400-d Fréchet distance.

    python bench/fvd_speed.py                          # on a GPU: 2048 x 16 x 256², batch 8 (the reference's)
    python bench/fvd_speed.py --device cpu --num-videos 2 --batch-size 1 --resolution 32   # CPU smoke run
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metrics import FrechetDistance, I3DTorchScript, I3DTorchScriptLike, I3DVideoGPT, InceptionI3d  # noqa: E402
from metrics.frechet import frechet_distance  # noqa: E402
from metrics.standins import randomize_, save_scripted  # noqa: E402


def sync(device: torch.device) -> None:
    """Wait for queued device work (timing reads a host clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_route(name: str, detector, args: argparse.Namespace, device: torch.device) -> dict:
    """Extract features of args.num_videos random videos in batches; time extraction, statistics, distance."""
    detector = detector.to(device)
    metric = FrechetDistance(detector).to(device)
    generator = torch.Generator(device).manual_seed(0)
    shape = (args.batch_size, args.frames, 3, args.resolution, args.resolution)

    def batch() -> torch.Tensor:
        return torch.rand(shape, device=device, generator=generator) * 2 - 1  # (b, f, c, h, w) in [-1, 1]

    for _ in range(args.warmup):
        detector(batch())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    extract = update = 0.0
    for start in range(0, args.num_videos, args.batch_size):
        videos = batch()[: args.num_videos - start]
        sync(device)
        t0 = time.perf_counter()
        features = detector(videos)  # (b, 400)
        sync(device)
        t1 = time.perf_counter()
        metric.update(features=features)
        sync(device)
        extract, update = extract + t1 - t0, update + time.perf_counter() - t1
    t0 = time.perf_counter()
    mean, cov = metric.gaussian()
    frechet_distance(mean, cov, mean + 1, cov)
    distance = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "route": name,
        "videos": args.num_videos,
        "batch": args.batch_size,
        "extract_s": round(extract, 3),
        "videos_per_s": round(args.num_videos / extract, 2),
        "stats_update_s": round(update, 3),
        "frechet_s": round(distance, 3),
        "peak_gib": round(peak, 2),
    }


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-videos", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--routes", default="torchscript,pytorch", help="comma-separated: torchscript,pytorch"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")

    network = randomize_(InceptionI3d(), seed=0).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if "torchscript" in args.routes:
            save_scripted(I3DTorchScriptLike(network), Path(folder) / "i3d_torchscript.pt")
            rows.append(
                time_route("I3DTorchScript (scripted)", I3DTorchScript(weights_dir=folder), args, device)
            )
        if "pytorch" in args.routes:
            torch.save(network.state_dict(), Path(folder) / "i3d_pretrained_400.pt")
            rows.append(time_route("I3DVideoGPT (eager)", I3DVideoGPT(weights_dir=folder), args, device))

    print(
        "| route | videos | batch | extraction (s) | videos/s | stats update (s) | Fréchet (s) | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['route']} | {r['videos']} | {r['batch']} | {r['extract_s']} | {r['videos_per_s']} | "
            f"{r['stats_update_s']} | {r['frechet_s']} | {r['peak_gib']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
