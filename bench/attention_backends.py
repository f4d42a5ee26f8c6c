"""Which SDPA kernel runs Latte's two attentions fastest, alone and inside the whole training step.

Latte-XL/2 at the paper's shape has two very different attention shapes: within each frame, 80 sequences of
256 tokens (batch 5 x 16 frames), and across frames, 1,280 sequences of 16 tokens (batch 5 x 256 locations),
16 heads of 72 each time. Part 1 times forward + backward of each attention core (the layout rearranges, SDPA
and the rearrange back, as the model runs them, from the fused qkv linear's output in bf16) with each SDPA
backend forced, eager and compiled. Part 2 times the whole ``bench/train_throughput.py`` step (fwd + bwd
+ fused AdamW, bf16 autocast) with the attention across frames forced to each backend
(``TemporalAttention.time_backends``) and the attention within frames left to torch; row ``model`` is the
model's own choice: across frames the fused Triton kernel of ``backbones/frame_attention.py`` (bf16/fp16 on
sm80+, no regrouping of q, k, v), within frames torch's.

    python bench/attention_backends.py                      # on a GPU
    python bench/attention_backends.py --size tiny --input-size 8 --frames 4 --batch 2 --reps 2 \
        --backends math --no-compile --steps 2 --warmup 1   # CPU smoke run
"""

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from einops import rearrange
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import Latte  # noqa: E402
from backbones.latte import LATTE_SIZES, Frames, TemporalAttention, attend_within_frames  # noqa: E402
from bench.train_throughput import DEVICE, add_shape_arguments, measure, sync  # noqa: E402

BACKENDS = {  # "model": the model's own choice (across frames: backbones/frame_attention.py's fused kernel;
    # within frames: torch's, cuDNN first on sm90); the others force one SDPA kernel
    "model": None,
    "cudnn": (SDPBackend.CUDNN_ATTENTION,),
    "flash": (SDPBackend.FLASH_ATTENTION,),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION,),
    "math": (SDPBackend.MATH,),
}


def cores(args, backends) -> dict:
    """The two attention cores: fused qkv output (b, t, l, 3d) -> attention output (b, t, l, h*e)."""
    heads = LATTE_SIZES[args.size]["num_heads"]
    across = TemporalAttention(LATTE_SIZES[args.size]["hidden_size"], heads)
    across.time_backends = backends
    frames = Frames(args.frames, None)

    def split(qkv: torch.Tensor) -> torch.Tensor:
        return rearrange(qkv, "b t l (three h e) -> three b h t l e", three=3, h=heads)  # (3, b, h, t, l, e)

    def within(qkv: torch.Tensor) -> torch.Tensor:
        x = attend_within_frames(split(qkv), backends)  # (b, h, t, l, e)
        return rearrange(x, "b h t l e -> b t l (h e)")  # (b, t, l, d)

    def over_time(qkv: torch.Tensor) -> torch.Tensor:
        x = across.attend_across_frames(split(qkv), frames, None)  # (b, h, f, l, e)
        return rearrange(x, "b h f l e -> b f l (h e)")  # (b, f, l, d)

    return {"within frames": within, "across frames": over_time}


def time_core(fn, args) -> float:
    """Median ms of forward + backward of ``fn`` on a bf16 fused-qkv tensor at the bench shape."""
    d = LATTE_SIZES[args.size]["hidden_size"]
    grid = args.input_size // args.patch
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    qkv = torch.randn(
        args.batch, args.frames, grid * grid, 3 * d, device=DEVICE, dtype=dtype, requires_grad=True
    )
    grad = torch.randn(args.batch, args.frames, grid * grid, d, device=DEVICE, dtype=dtype)
    for _ in range(3):
        fn(qkv).backward(grad)
    times = []
    for _ in range(args.reps):
        qkv.grad = None  # written fresh each call, as the qkv linear's output gradient is in a model
        sync()
        start = time.perf_counter()
        fn(qkv).backward(grad)
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shape_arguments(parser)
    parser.add_argument("--reps", type=int, default=30, help="timed fwd + bwd calls per attention core")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per whole-step row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument(
        "--step-backends", nargs="+", choices=list(BACKENDS), help="whole-step rows (default: --backends)"
    )
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # as bench/train_throughput.py, whose step part 2 times
    torch.backends.cudnn.allow_tf32 = True
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(f"device: {device}, torch {torch.__version__}, {datetime.date.today()}")
    modes = [False] + ([] if args.no_compile else [True])
    depth = LATTE_SIZES[args.size]["depth"] // 2  # Latte's variant 1: half the blocks attend within frames

    core_rows = []
    print("| attention | backend | compiled | fwd + bwd ms | x blocks per step (ms) |\n|---|---|---|---|---|")
    for name in BACKENDS:
        if name not in args.backends:
            continue
        for compiled in modes:
            for attention, fn in cores(args, BACKENDS[name]).items():
                torch._dynamo.reset()
                try:
                    ms = time_core(torch.compile(fn) if compiled else fn, args)
                except RuntimeError as error:  # a kernel that does not take this shape or dtype
                    print(f"| {attention} | {name} | {compiled} | n/a: {str(error).splitlines()[0][:80]} | |")
                    continue
                core_rows.append(dict(attention=attention, backend=name, compiled=compiled, ms=ms))
                print(f"| {attention} | {name} | {compiled} | {ms:.3f} | {depth * ms:.1f} |")
                write(args.json, device, core_rows, [])

    step_rows = []
    step_args = SimpleNamespace(**vars(args))
    print("\n| attention across frames | compiled | step ms | samples/s | peak GiB |\n|---|---|---|---|---|")
    for name in BACKENDS:
        if name not in (args.step_backends or args.backends):
            continue
        TemporalAttention.time_backends = BACKENDS[name]
        for compiled in modes:
            torch._dynamo.reset()
            model = Latte(
                size=args.size, patch_size=args.patch, input_size=args.input_size, num_frames=args.frames
            )
            try:
                row = measure(f"Latte-{args.size}/{args.patch}", model, step_args, 0.0, compiled)
            except RuntimeError as error:  # a kernel that does not take this shape or dtype
                print(f"| {name} | {compiled} | n/a: {str(error).splitlines()[0][:80]} | | |")
                continue
            step_rows.append(dict(row, time_backend=name))
            print(
                f"| {name} | {compiled} | {row['step_ms']:.1f} | {row['samples_per_s']:.2f} | "
                f"{row['peak_mem_GiB']:.1f} |"
            )
            write(args.json, device, core_rows, step_rows)  # a row cut off by a time limit loses only itself
    TemporalAttention.time_backends = None
    write(args.json, device, core_rows, step_rows)


def write(path: Path | None, device: str, cores: list[dict], steps: list[dict]) -> None:
    """The rows so far as JSON with the device, torch version and date (nothing without a path)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = dict(device=device, torch=torch.__version__, date=str(datetime.date.today()))
        path.write_text(json.dumps(dict(record, cores=cores, steps=steps)))


if __name__ == "__main__":
    main()
