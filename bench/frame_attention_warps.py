"""GPU time of the fused attention across frames (backbones/frame_attention.py) per number of warps.

Forward and backward kernel of one temporal attention of Latte-XL/2 at the paper's training shape (batch 5,
16 frames, 256 token locations, 16 heads of 72, bf16), timed by torch.profiler over 20 calls, and the memory
traffic each implies (forward: q, k, v in and the output out; backward: q, k, v, output and its gradient in,
dq, dk, dv out). ``backbones.frame_attention.WARPS`` is the value the model uses. Needs a CUDA GPU.

    python bench/frame_attention_warps.py --json /tmp/frame_attention_warps.json
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import frame_attention  # noqa: E402


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--shape", type=int, nargs=5, default=[5, 16, 256, 16, 72], help="b f l h e")
    parser.add_argument("--warps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "the fused kernels run on a CUDA GPU"
    b, f, l, h, e = args.shape  # noqa: E741
    qkv = torch.randn(b, f, l, 3 * h * e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(b, f, l, h, e, device="cuda", dtype=torch.bfloat16)
    tensor_bytes = b * f * l * h * e * 2  # one of q, k, v, the output, its gradient
    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}, {datetime.date.today()}, b f l h e = {args.shape}")
    print("| warps | forward us | backward us | forward GB/s | backward GB/s |\n|---|---|---|---|---|")
    default, rows = frame_attention.WARPS, []
    for warps in args.warps:
        frame_attention.WARPS = warps

        def call() -> None:
            qkv.grad = None
            frame_attention.attend_across_frames(qkv.view(b, f, l, 3, h, e)).backward(grad)

        for _ in range(3):  # compile the kernels for this number of warps
            call()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.calls):
                call()
            torch.cuda.synchronize()
        us = {event.key: event.self_device_time_total / event.count for event in prof.key_averages()}
        fwd, bwd = us["_attention_across_frames_forward"], us["_attention_across_frames_backward"]
        rows.append(dict(warps=warps, forward_us=fwd, backward_us=bwd))
        rates = f"{4 * tensor_bytes / fwd / 1e3:.0f} | {8 * tensor_bytes / bwd / 1e3:.0f}"  # bytes / us / 1e3
        print(f"| {warps} | {fwd:.1f} | {bwd:.1f} | {rates} |")
    frame_attention.WARPS = default
    if args.json:
        record = dict(device=device, torch=torch.__version__, date=str(datetime.date.today()))
        record.update(shape=args.shape)
        args.json.write_text(json.dumps(dict(record, model_warps=default, rows=rows)))


if __name__ == "__main__":
    main()
