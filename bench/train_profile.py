"""Where one Latte-XL/2 training step spends its GPU time, and which attention backend is fastest.

The step of ``bench/train_throughput.py`` (16 x 4 x 32 x 32 latents, batch 5, bf16 autocast, fp32 master
weights, fused AdamW, Latte's mse + vb loss) runs compiled under ``torch.profiler``; every GPU kernel is
put in one class by its name (matmul, attention, compiler-fused elementwise, optimizer, copies, other) and
the table gives each class's milliseconds per step and share. A second table times the eager and the
compiled step with each SDPA backend forced first (``sdpa_kernel(..., set_priority=True)``), across frames
too. The profile runs the model's own choice: bf16 on a GPU attends across frames through the fused Triton
kernels of ``backbones/frame_attention.py`` (``_attention_across_frames_*``: the attention class).

    python bench/train_profile.py                       # on a GPU
    python bench/train_profile.py --eager --backends "" # the eager step's profile alone
    python bench/train_profile.py --size tiny --input-size 8 --frames 4 --steps 2 --backends math  # CPU smoke
"""

import argparse
import collections
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import Latte  # noqa: E402
from backbones.latte import Attention  # noqa: E402
from diffusion import GaussianDiffusion  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Wait for queued GPU work (timing reads a host clock)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# kernel-name pattern -> class, first match wins (cuBLAS/cuDNN/CUTLASS/Triton names on sm90)
KERNEL_CLASSES = [
    (r"nccl", "communication (NCCL)"),
    (r"flash|fmha|attention|cudnn.*sdpa|_efficient_attention", "attention"),
    (r"gemm|nvjet|cutlass|xmma|sm90_|matmul|splitk", "matmul"),
    (r"multi_tensor|adam", "optimizer"),
    (r"triton", "fused elementwise (compiler)"),
    (r"copy|transpose|cat|Memcpy|Memset", "copies"),
    (r"elementwise|reduce|norm|softmax|gelu|silu", "elementwise (eager kernels)"),
]


def kernel_class(name: str) -> str:
    """The class of a GPU kernel by its name."""
    for pattern, label in KERNEL_CLASSES:
        if re.search(pattern, name, flags=re.I):
            return label
    return "other"


def build_step(args, compile_model: bool):
    """A closure doing one fwd + bwd + AdamW step of Latte at the bench shape."""
    model = Latte(size=args.size, patch_size=args.patch, input_size=args.input_size, num_frames=args.frames)
    model = model.to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=DEVICE.type == "cuda")
    forward = torch.compile(model) if compile_model else model
    diffusion = GaussianDiffusion()
    x0 = torch.randn(args.batch, args.frames, 4, args.input_size, args.input_size, device=DEVICE)
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32

    def step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (args.batch,), device=DEVICE)
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=DEVICE.type == "cuda"):
            loss = diffusion.training_losses(forward, x0, t)["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_step(step, warmup: int, steps: int) -> float:
    """Median-free mean seconds per step after warm-up (steps run back to back, as in training)."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def profile(
    step, steps: int
) -> tuple[dict[str, float], list[tuple[str, float]], list[tuple[str, float, int]]]:
    """GPU ms per step by kernel class, the 12 longest kernels, and the 15 torch operators whose own kernels
    took longest (name, ms per step, calls per step), over ``steps`` profiled steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    by_class, by_kernel = collections.Counter(), collections.Counter()
    for event in prof.events():
        if DEVICE.type == "cuda" and event.device_type == torch.autograd.DeviceType.CUDA:
            by_class[kernel_class(event.name)] += event.device_time_total / 1e3 / steps  # ms per step
            by_kernel[event.name[:90]] += event.device_time_total / 1e3 / steps
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::") and e.self_device_time_total > 0]
    ops.sort(key=lambda e: -e.self_device_time_total)
    by_op = [(e.key, e.self_device_time_total / 1e3 / steps, e.count // steps) for e in ops[:15]]
    return dict(by_class), by_kernel.most_common(12), by_op


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--size", default="XL")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--backends", default="flash,cudnn,efficient", help='"": no backend table')
    parser.add_argument("--eager", action="store_true", help="profile the eager step (default: compiled)")
    parser.add_argument("--json", default=os.environ.get("OUT", ".") + "/train_profile.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(f"device: {device}, torch {torch.__version__}")
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    backends |= {"efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}

    compiled = DEVICE.type == "cuda" and not args.eager
    step = build_step(args, compile_model=compiled)
    step_s = time_step(step, args.warmup, args.steps)
    classes, kernels, operators = profile(step, args.steps)
    total = sum(classes.values())
    mode, rate = "compiled" if compiled else "eager", args.batch / step_s
    print(f"\n{mode} step {1e3 * step_s:.1f} ms ({rate:.2f} samples/s); GPU kernels {total:.1f} ms")
    print("| kernel class | ms / step | share of GPU time |\n|---|---|---|")
    for label, ms in sorted(classes.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {ms:.2f} | {ms / total:.1%} |")
    print(f"| idle GPU (step - kernels) | {1e3 * step_s - total:.2f} | |")
    print("\n| longest kernels | ms / step |\n|---|---|")
    for name, ms in kernels:
        print(f"| `{name}` | {ms:.2f} |")
    print("\n| torch operator (its own kernels) | ms / step | calls / step |\n|---|---|---|")
    for name, ms, calls in operators:
        print(f"| `{name}` | {ms:.2f} | {calls} |")

    rows = []
    for name in filter(None, args.backends.split(",")):
        order = [backends[name], *[b for b in backends.values() if b != backends[name]]]
        for compiled in (False, True) if DEVICE.type == "cuda" else (False,):
            torch._dynamo.reset()
            Attention.time_backends = order  # across frames too: SDPA instead of the fused kernel
            with sdpa_kernel(order, set_priority=True):
                seconds = time_step(build_step(args, compiled), args.warmup, args.steps)
            Attention.time_backends = None
            rows.append({"backend": name, "compiled": compiled, "step_ms": 1e3 * seconds})
    print("\n| SDPA backend first | compiled | step ms | samples/s |\n|---|---|---|---|")
    for r in rows:
        rate = 1e3 * args.batch / r["step_ms"]
        print(f"| {r['backend']} | {r['compiled']} | {r['step_ms']:.1f} | {rate:.1f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    record = {"device": device, "torch": torch.__version__, "date": str(datetime.date.today())}
    record |= {
        "compiled": compiled,
        "step_ms": 1e3 * step_s,
        "classes": classes,
        "kernels": kernels,
        "operators": operators,
        "backends": rows,
    }
    Path(args.json).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
