"""Training throughput of the Latte backbone at the paper's shape, against diffusers' LatteTransformer3DModel.

One fwd + bwd + AdamW step of Latte-XL/2 on 16x4x32x32 latents (256 px video through the SD VAE), batch 5 per
GPU, bf16 autocast with fp32 master weights (Lightning's ``precision=bf16-mixed``), loss = Latte's mse + vb.
Prints samples/s, model FLOP utilisation (FLOPs from torch's FLOP counter over a *measured* bf16 matmul peak)
and peak memory, for our backbone and for diffusers' port at equal depth (14 spatial + 14 temporal blocks,
Latte-1's GELU-tanh MLP, one dummy text token), eager and ``torch.compile``d.

    python bench/train_throughput.py                # on a GPU; --steps/--batch/--no-compile to change the run
    python bench/train_throughput.py --size tiny --input-size 8 --frames 4 --steps 2 --no-compile  # CPU smoke
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import Latte  # noqa: E402
from diffusion import GaussianDiffusion  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Wait for queued device work (timing reads a host clock)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """Measured dense bf16 matmul rate on random data (median of ``reps``), the MFU denominator."""
    a, b = (torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


class DiffusersLatte(torch.nn.Module):
    """diffusers' LatteTransformer3DModel as ``(b f c h w, t) -> b f 2c h w`` (one dummy text token)."""

    def __init__(
        self, depth: int, hidden: int, heads: int, patch: int, size: int, channels: int, frames: int
    ):
        super().__init__()
        from diffusers import LatteTransformer3DModel

        self.net = LatteTransformer3DModel(
            num_attention_heads=heads,
            attention_head_dim=hidden // heads,
            in_channels=channels,
            out_channels=2 * channels,
            num_layers=depth // 2,
            sample_size=size,
            patch_size=patch,
            norm_type="ada_norm_single",
            activation_fn="gelu-approximate",  # Latte-1's MLP (4D, GELU-tanh); the class default is GEGLU
            caption_channels=hidden,
            cross_attention_dim=hidden,
            video_length=frames,
        )
        self.learn_sigma = True
        self.hidden = hidden

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        text = torch.zeros(x.shape[0], 1, self.hidden, device=x.device, dtype=x.dtype)  # (b, 1, d)
        out = self.net(x.transpose(1, 2), timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        return out.transpose(1, 2)  # (b, f, 2c, h, w)


def measure(name: str, model: torch.nn.Module, args, peak: float, compile_model: bool) -> dict:
    """Time ``args.steps`` optimizer steps after warm-up; count FLOPs of one fwd+bwd."""
    model = model.to(DEVICE).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=DEVICE.type == "cuda")
    diffusion = GaussianDiffusion()
    forward = torch.compile(model) if compile_model else model
    shape = (args.batch, args.frames, 4, args.input_size, args.input_size)
    x0 = torch.randn(shape, device=DEVICE)
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32

    def step() -> torch.Tensor:
        t = torch.randint(0, diffusion.num_timesteps, (args.batch,), device=DEVICE)
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=DEVICE.type == "cuda"):
            loss = diffusion.training_losses(forward, x0, t)["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    with FlopCounterMode(display=False) as counter:  # eager, one fwd + bwd (+ the negligible optimizer)
        t = torch.randint(0, diffusion.num_timesteps, (args.batch,), device=DEVICE)
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=DEVICE.type == "cuda"):
            diffusion.training_losses(model, x0, t)["loss"].mean().backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    compile_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - compile_start
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    assert torch.isfinite(loss), f"{name}: non-finite loss {loss}"
    step_s = statistics.median(times)
    row = {
        "model": name,
        "compiled": compile_model,
        "params_M": sum(p.numel() for p in params) / 1e6,
        "step_ms": 1e3 * step_s,
        "samples_per_s": args.batch / step_s,
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / 1e12 / peak if peak else float("nan"),
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan"),
        "warmup_s": warmup_s,
    }
    return row


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and batch options of the bench step: Latte-XL/2, 16 x 32 x 32 latents, batch 5 by default."""
    parser.add_argument("--size", default="XL")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shape_arguments(parser)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--json", default=os.environ.get("OUT", ".") + "/train_throughput.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    peak = matmul_peak_tflops() if DEVICE.type == "cuda" else 0.0
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(f"device: {device}, torch {torch.__version__}, measured bf16 matmul peak: {peak:.0f} TFLOP/s")

    def ours() -> torch.nn.Module:
        return Latte(
            size=args.size, patch_size=args.patch, input_size=args.input_size, num_frames=args.frames
        )

    def theirs() -> torch.nn.Module:
        reference = ours()
        return DiffusersLatte(
            depth=reference.depth,
            hidden=reference.hidden_size,
            heads=reference.num_heads,
            patch=args.patch,
            size=args.input_size,
            channels=4,
            frames=args.frames,
        )

    rows = []
    for compile_model in [False] + ([] if args.no_compile else [True]):
        rows.append(measure(f"ours Latte-{args.size}/{args.patch}", ours(), args, peak, compile_model))
        if not args.no_diffusers:
            rows.append(measure("diffusers LatteTransformer3DModel", theirs(), args, peak, compile_model))

    header = f"{'model':36s} {'compiled':>8s} {'params M':>9s} {'step ms':>8s} {'samples/s':>9s} "
    header += f"{'TFLOP/step':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>8s}"
    print(header)
    for r in rows:
        print(
            f"{r['model']:36s} {str(r['compiled']):>8s} {r['params_M']:9.1f} {r['step_ms']:8.1f} "
            f"{r['samples_per_s']:9.2f} {r['tflop_per_step']:10.2f} {r['achieved_tflops']:8.1f} "
            f"{r['mfu']:6.1%} {r['peak_mem_GiB']:8.2f}"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"device": device, "torch": torch.__version__, "peak": peak, "rows": rows})
    )


if __name__ == "__main__":
    main()
