"""Sampling speed of Latte-XL/2 (16 x 4 x 32 x 32 latents): the samplers' precision and compile options.

One sampler model call (the forward that every sampling step makes) is timed per configuration: fp32 (what
sample.py did before `sampler.precision`), bf16 autocast, the weights cast once to bf16 / fp16 (the
`sampler.precision` path), and the cast model compiled (`sampler.compile=true`); `sampler.precision=float8`
(bf16 weights, the blocks' qkv/fc1/fc2 in rowwise float8) too, which is not the paper's numerics: each row's
error column is its forward's distance from fp32's (relative L2, same inputs). Seconds per video for a
sampler follow as steps x forward time / batch; one DDIM-20 run end to end checks the extrapolation.
For reference, the official Latte sampler in fp16 measured 113 ms per forward at batch 8 on an H100 (3.6 s
per 250-step DDPM video, measured for issue #14).

    python bench/sample_speed.py                        # on a GPU; prints one table, writes JSON
    python bench/sample_speed.py --size tiny --input-size 8 --frames 4 --batches 2 --no-compile  # CPU smoke
    python bench/sample_speed.py --batches 32 --configs "bf16 cast + compile" "float8 + compile"  # some rows
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones import Latte  # noqa: E402
from diffusion import GaussianDiffusion, Sampler  # noqa: E402
from utils.float8 import has_float8_tensor_cores  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Wait for queued GPU work (timing reads a host clock)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_calls(call, reps: int) -> float:
    """Median seconds of ``call()`` over ``reps`` runs."""
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def configurations(compile_too: bool, float8: bool = True) -> list[tuple[str, str, bool, bool]]:
    """(name, sampler.precision, compile, under bf16 autocast) rows; fp32 first, the baseline."""
    rows = [
        ("fp32 (before)", "fp32", False, False),
        ("bf16 autocast", "fp32", False, True),
        ("bf16 cast once", "bf16", False, False),
        ("fp16 cast once", "fp16", False, False),
    ]
    rows += [("float8", "float8", False, False)] if float8 else []
    if compile_too:
        rows += [("bf16 cast + compile", "bf16", True, False), ("fp16 cast + compile", "fp16", True, False)]
        rows += [("float8 + compile", "float8", True, False)] if float8 else []
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="XL")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--configs", nargs="+", help="only these rows (names as in the table); default: all")
    parser.add_argument("--json", default=os.environ.get("OUT", ".") + "/sample_speed.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(f"device: {device}, torch {torch.__version__}")

    model = Latte(size=args.size, patch_size=args.patch, input_size=args.input_size, num_frames=args.frames)
    model = model.to(DEVICE).eval().requires_grad_(False)
    for p in model.parameters():  # a trained-looking model: the zero-initialised output layers predict 0
        p.add_(0.02 * torch.randn_like(p))
    diffusion = GaussianDiffusion()
    float8 = has_float8_tensor_cores(DEVICE)
    if not float8:
        print("no float8 rows: this GPU has no float8 tensor cores (compute capability < 8.9)")
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(batch, args.frames, 4, args.input_size, args.input_size, device=DEVICE)
        t = torch.full((batch,), 500, device=DEVICE)
        with torch.no_grad():
            exact = model(x, t)  # fp32: what each row's error is measured against
        for name, precision, compile_model, autocast in configurations(not args.no_compile, float8):
            if args.configs and name not in args.configs:
                continue
            sampler = Sampler("ddim", 20, precision=precision, compile=compile_model)
            fast = sampler.inference_model(model, DEVICE)

            def call(fast=fast, autocast=autocast, x=x, t=t):
                with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
                    return fast(x, t)

            start = time.perf_counter()
            for _ in range(3):  # warm-up (and the compile)
                call()
            sync()
            warmup_s = time.perf_counter() - start
            if DEVICE.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            forward_s = time_calls(call, args.reps)
            error = ((call().float() - exact).norm() / exact.norm()).item()
            row = {
                "config": name,
                "batch": batch,
                "forward_ms": 1e3 * forward_s,
                "ddpm250_s_per_video": 250 * forward_s / batch,
                "ddim50_s_per_video": 50 * forward_s / batch,
                "dpm20_s_per_video": 20 * forward_s / batch,
                "peak_GiB": torch.cuda.max_memory_allocated() / 2**30
                if DEVICE.type == "cuda"
                else float("nan"),
                "warmup_s": warmup_s,
                "relative_error_vs_fp32": error,
            }
            if name.startswith(("bf16 cast", "float8")) and batch == max(
                int(b) for b in args.batches.split(",")
            ):
                shape = tuple(x.shape)  # the whole DDIM-20 loop, re-casting the weights as each call does
                run = lambda sampler=sampler, shape=shape: sampler(model, diffusion, shape, device=DEVICE)  # noqa: E731
                row["ddim20_end_to_end_s_per_video"] = time_calls(run, 1) / batch
            rows.append(row)
            del fast, sampler

    print(
        "| config | batch | forward ms | DDPM-250 s/video | DDIM-50 s/video | 20-step s/video "
        "| 20-step end to end s/video | peak GiB | warm-up s | error vs fp32 |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        e2e = r.get("ddim20_end_to_end_s_per_video")
        print(
            f"| {r['config']} | {r['batch']} | {r['forward_ms']:.1f} | {r['ddpm250_s_per_video']:.2f} | "
            f"{r['ddim50_s_per_video']:.3f} | {r['dpm20_s_per_video']:.3f} | "
            f"{'' if e2e is None else f'{e2e:.3f}'} | {r['peak_GiB']:.1f} | {r['warmup_s']:.0f} | "
            f"{r['relative_error_vs_fp32']:.2e} |"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "device": device,
                "torch": torch.__version__,
                "date": datetime.date.today().isoformat(),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
