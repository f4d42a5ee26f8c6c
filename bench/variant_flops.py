"""Parameters and forward FLOPs of Latte-XL/2 for every model variant and axis, beside the Latte paper's.

One video (batch 1) of 16 frames x 4 x 32 x 32 SD-VAE latents (256 px), forward only, counted with
torch's ``FlopCounterMode`` on the meta device (shapes only, so it takes seconds on a CPU) under the math
SDPA backend: the counter has no formula for the fused CPU attention kernel, while the math backend
decomposes attention into the matmuls it counts. A multiply-add counts as 2 FLOPs.

    python bench/variant_flops.py            # the table as markdown
    python bench/variant_flops.py --time     # on a GPU: also ms per training step (batch 4, bf16 autocast)
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import Latte  # noqa: E402

FRAMES, LATENT, CHANNELS = 16, 32, 4
# The Latte paper's Latte-XL variants: parameters (M) and FLOPs (G).
PAPER = {1: (673.68, 5572.69), 2: (673.68, 5572.69), 3: (676.33, 6153.15), 4: (676.44, 1545.15)}
CONFIGS = [
    ("variant 1 (interleaved, official)", dict(variant=1)),
    ("variant 2 (late fusion)", dict(variant=2)),
    ("variant 3 (factorised attention)", dict(variant=3)),
    ("variant 4 (factorised heads)", dict(variant=4)),
    ("variant 1, compression (s=2)", dict(variant=1, patch_embed="compression", temporal_stride=2)),
    ("variant 1, all_tokens", dict(variant=1, conditioning="all_tokens")),
    ("variant 1, rope", dict(variant=1, temporal_pos="rope")),
]
ATTENTION_OPS = ("aten.bmm", "aten.baddbmm")  # the math SDPA backend's q @ k^T and softmax @ v


def count(kwargs: dict) -> dict:
    """Depth, trainable parameters, total and attention-matrix FLOPs of one XL/2 forward."""
    with torch.device("meta"):
        model = Latte(
            size="XL", patch_size=2, input_size=LATENT, in_channels=CHANNELS, num_frames=FRAMES, **kwargs
        )
        x = torch.randn(1, FRAMES, CHANNELS, LATENT, LATENT)
        t = torch.tensor([500])
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x, t)
    ops = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    tokens = model.latent_frames * model.num_patches
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(
        depth=model.depth,
        params=params,
        flops=counter.get_total_flops(),
        attention=sum(flops for op, flops in ops.items() if op.startswith(ATTENTION_OPS)),
        two_n_tokens=2 * params * tokens,  # every parameter used once per token, as a multiply-add
    )


def step_ms(kwargs: dict, batch: int = 4, steps: int = 10, warmup: int = 3) -> tuple[float, float]:
    """Median ms of one fwd + bwd + fused-AdamW step (bf16 autocast) on the GPU, and peak memory (GiB)."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Latte(
            size="XL", patch_size=2, input_size=LATENT, in_channels=CHANNELS, num_frames=FRAMES, **kwargs
        )
        x = torch.randn(batch, FRAMES, CHANNELS, LATENT, LATENT)
        t = torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, t).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[warmup:]), torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    """Count every configuration (and with --time, time it on the GPU); print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="also time a training step on the GPU")
    timed = parser.parse_args().time
    header = (
        "| configuration | depth | params (M) | paper params (M) | GFLOPs (ours) | of which attention "
        "matrices | 2 x params x tokens (G) | paper GFLOPs |"
    )
    print(header + (" ms/step | peak GiB |" if timed else ""))
    print("|---" * (10 if timed else 8) + "|")
    for name, kwargs in CONFIGS:
        r = count(kwargs)
        paper = PAPER.get(kwargs["variant"]) if len(kwargs) == 1 else None
        paper_params, paper_flops = (f"{paper[0]:.2f}", f"{paper[1]:.2f}") if paper else ("-", "-")
        row = (
            f"| {name} | {r['depth']} | {r['params'] / 1e6:.2f} | {paper_params} | {r['flops'] / 1e9:.2f} | "
            f"{r['attention'] / 1e9:.2f} | {r['two_n_tokens'] / 1e9:.2f} | {paper_flops} |"
        )
        if timed:
            ms, gib = step_ms(kwargs)
            row += f" {ms:.1f} | {gib:.1f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
