"""How AAPT's synthetic stages continue real first frames: sharpness, palette, motion and error against the
real continuation, on held-out synthetic clips (CPU, seconds).

    python bench/aapt_synthetic_quality.py logs/aapt_synthetic_distill/runs/<run>/checkpoints/last.ckpt \
        logs/aapt_synthetic_gan/runs/<run>/checkpoints/last.ckpt

Every checkpoint continues the same first frames with the same noise (its EMA weights; stage 1 with Euler
steps, stages 2-3 one forward per frame). Figures, each over the generated frames 1..F-1 of every clip:
- ``sharpness``: mean |finite difference| of the generated frames over the real frames' (1 = as sharp as the
  data; a blurry one-step generator is below 1, an unfinished denoiser above);
- ``palette``: L1 distance between the 4x4x4-bin colour histograms of generated and real frames (0-2);
- ``motion``: mean |frame k - frame k-1| of generated over real clips;
- ``mse``: against the real continuation of the same first frame (the shapes' motion is deterministic).
"""

import argparse
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules import SyntheticVideos  # noqa: E402
from utils.config import register_resolvers  # noqa: E402
from utils.run import load_module  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def gradient_energy(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute horizontal and vertical finite difference of frames (b, f, c, h, w)."""
    return (video.diff(dim=-1).abs().mean() + video.diff(dim=-2).abs().mean()) / 2


def palette(video: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """Normalised joint RGB histogram (bins^3,) of frames (b, f, 3, h, w) in [-1, 1]."""
    index = ((video.clamp(-1, 1) + 1) / 2 * bins).long().clamp(max=bins - 1)  # (b, f, 3, h, w)
    flat = index[:, :, 0] * bins * bins + index[:, :, 1] * bins + index[:, :, 2]  # (b, f, h, w)
    histogram = torch.bincount(flat.flatten(), minlength=bins**3).float()
    return histogram / histogram.sum()


def figures(generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """The four figures of generated frames against the real frames they continue, both (b, f, 3, h, w)."""
    return {
        "sharpness": float(gradient_energy(generated) / gradient_energy(real)),
        "palette": float((palette(generated) - palette(real)).abs().sum()),
        "motion": float(generated.diff(dim=1).abs().mean() / real.diff(dim=1).abs().mean()),
        "mse": float((generated - real).square().mean()),
    }


@torch.no_grad()
def continue_clips(ckpt: str, clips: torch.Tensor, seed: int) -> torch.Tensor:
    """Frames 1..F-1 (b, F-1, 3, h, w) that checkpoint ``ckpt`` makes from the clips' first frames."""
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("sample", overrides=[f"ckpt_path={ckpt}", "sampler=euler", "sampler.num_steps=16"])
    module = load_module(ckpt, cfg, overrides=[]).eval()
    first = module.autoencoder.encode(clips[:, :1]).float()  # (b, 1, c, h', w')
    noise = torch.randn(
        (clips.shape[0], clips.shape[1] - 1, *first.shape[2:]), generator=torch.Generator().manual_seed(seed)
    )
    frames = module.generate(module.ema, first, noise, None)  # (b, F-1, c, h', w')
    return module.autoencoder.decode(frames).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    register_resolvers()
    torch.manual_seed(args.seed)
    data = SyntheticVideos("val", args.frames, args.resolution, num_videos=args.clips)
    clips = torch.stack([data[i]["video"] for i in range(args.clips)])  # (n, F, 3, h, w)
    real = clips[:, 1:]
    print(f"{'checkpoint':70s} sharpness palette motion mse")
    for ckpt in args.checkpoints:
        values = figures(continue_clips(ckpt, clips, args.seed), real)
        print(
            f"{ckpt[-70:]:70s} "
            + " ".join(f"{values[k]:.4f}" for k in ("sharpness", "palette", "motion", "mse"))
        )


if __name__ == "__main__":
    main()
