"""Real-time streaming on one GPU: causal Latte-B/2 and -XL/2, one forward per frame, SD-VAE decode per frame.

A 1,440-frame stream of 256² video (32x32x4 latents; the SD VAE decodes each latent frame to one video frame),
window 30 + 1 sink frame, RoPE, bf16 weights, through the code stream.py runs (``diffusion.streaming``: the
static ring-buffer KV cache, ``StreamStep``, ``FrameDecoder``). Random weights; the SD VAE is read from
``--vae-path`` (a diffusers folder) when given, else built with random weights from its config.

Per model and mode (eager; ``graph``: the step and the decoder captured as CUDA graphs; ``compile-graph``:
torch.compile'd, then captured), four streams of ``--frames`` frames:
  1. step only, synchronised per frame: latency p50/p99 in windows of ±``--half-window`` frames around each
     frame of ``--at`` (100 and 1,400);
  2. step + decode + copy of the uint8 frame to the host, synchronised per frame (what stream.py does):
     the same latencies, and its frames/s;
  3. step only, no per-frame sync: frames/s without decoding;
  4. step + decode overlapped: the decoder and the host copy run on a second CUDA stream while the next step
     runs (the host takes frame k-1 while frame k is made): frames/s with decoding.
Prints one table, writes JSON with the device, torch version and date. Targets (issue #12, one H100): B/2
>= 100 and XL/2 >= 60 video frames/s including decoding, p99 latency at frame 1,400 within 10% of frame 100.

    python bench/stream_latency.py --json stream_latency.json              # one GPU: B/2 and XL/2, 3 modes
    python bench/stream_latency.py --tiny                                  # CPU smoke test, seconds
"""

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import DiffusersAutoencoderKL, Latte  # noqa: E402
from diffusion import FlowMatching  # noqa: E402
from diffusion.streaming import DecodeAhead, FrameDecoder, StreamStep  # noqa: E402

MODES = {  # mode -> (compile mode of the step and the decoder, CUDA graphs)
    "eager": (None, False),
    "graph": (None, True),
    "compile-graph": ("default", True),
}
TARGET_FPS = {"B": 100, "XL": 60}  # issue #12: video frames/s including decoding on one H100
SD_VAE = dict(  # the SD kl-f8 VAE's architecture (stabilityai/sd-vae-ft-ema config.json)
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)
TINY_VAE = dict(SD_VAE, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16)
TINY_VAE.update(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def sync(device: torch.device) -> None:
    """Wait for queued device work (timing reads a host clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_generator(size: str, args: argparse.Namespace, device: torch.device) -> Latte:
    """A causal Latte over [noise, previous frame] (2c -> c channels), random weights, in the stream dtype."""
    torch.manual_seed(0)
    model = Latte(
        size=size,
        patch_size=2,
        input_size=args.input_size,
        in_channels=2 * args.channels,
        out_channels=args.channels,
        learn_sigma=False,
        num_frames=16,
        temporal_mask="causal",
        temporal_pos="rope",
        window=args.window,
        sink_frames=args.sink,
    )
    with torch.no_grad():
        for param in model.parameters():  # the zero-initialised adaLN and output layers: random too
            if param.requires_grad and not param.any():
                param.normal_(std=0.02)
    return model.to(device, args.dtype).eval()


def build_vae(args: argparse.Namespace, folder: Path, device: torch.device) -> DiffusersAutoencoderKL:
    """The SD VAE through the framework's wrapper: from --vae-path, else its config with random weights."""
    path = args.vae_path
    if path is None:
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        AutoencoderKL(**(TINY_VAE if args.tiny else SD_VAE)).save_pretrained(folder / "vae")
        path = folder / "vae"
    vae = DiffusersAutoencoderKL(path=str(path), latent_channels=args.channels, downsample=args.downsample)
    return vae.to(device).eval()


def windows(latencies: list[float], at: list[int], half: int) -> dict[str, float]:
    """p50/p99 (ms) of the per-frame latencies in [k - half, k + half) around each frame k of ``at``."""
    out = {}
    for k in at:
        ms = sorted(1e3 * t for t in latencies[max(0, k - half) : k + half])
        out[f"p50_ms@{k}"] = round(ms[len(ms) // 2], 3)
        out[f"p99_ms@{k}"] = round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3)
    return out


def synced_stream(step: StreamStep, decoder: FrameDecoder | None, args, device) -> list[float]:
    """Per-frame latency (s) of a stream synced per frame; with a decoder, until the frame is on the host."""
    step.start(step.previous.clone())
    noise = torch.randn((args.frames, *step.noise.shape), device=device, dtype=args.dtype)
    latencies = []
    for k in range(args.frames):
        sync(device)
        tick = time.perf_counter()
        latent = step.step(noise[k])  # (1, 1, c, h, w)
        if decoder is None:
            sync(device)
        else:
            decoder(latent).cpu()  # (1, H, W, 3) uint8 on the host: waits for the frame
        latencies.append(time.perf_counter() - tick)
    return latencies


def free_stream(step: StreamStep, args, device) -> float:
    """Frames/s of the step alone, without a per-frame sync."""
    step.start(step.previous.clone())
    noise = torch.randn((args.frames, *step.noise.shape), device=device, dtype=args.dtype)
    sync(device)
    tick = time.perf_counter()
    for k in range(args.frames):
        step.step(noise[k])
    sync(device)
    return args.frames / (time.perf_counter() - tick)


def overlapped_stream(step: StreamStep, decoder: FrameDecoder, args, device) -> float:
    """Frames/s with decoding on a second CUDA stream overlapping the next step (``DecodeAhead``, as in
    stream.py); the host takes each frame one step late. On a CPU: decoded at once."""
    step.start(step.previous.clone())
    noise = torch.randn((args.frames, *step.noise.shape), device=device, dtype=args.dtype)
    ahead = DecodeAhead(decoder)
    sync(device)
    tick = time.perf_counter()
    for k in range(args.frames):
        ahead.push(step.step(noise[k]))  # frame k-1 is on the host (an mp4 writer would take it here)
    ahead.finish()
    return args.frames / (time.perf_counter() - tick)


def run(size: str, mode: str, decoder: FrameDecoder, args, device) -> dict:
    """The four streams of one model and mode; one row of the table."""
    compile_mode, graph = MODES[mode]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build_generator(size, args, device)
    shape = (args.channels, args.input_size, args.input_size)
    tick = time.perf_counter()
    step = StreamStep(model, FlowMatching(), 1, shape, compile_mode, graph)
    setup_s = time.perf_counter() - tick
    step_only = synced_stream(step, None, args, device)
    with_decode = synced_stream(step, decoder, args, device)
    row = {
        "model": f"Latte-{size}/2",
        "mode": mode,
        "setup_s": round(setup_s, 1),
        **{f"step_{k}": v for k, v in windows(step_only, args.at, args.half_window).items()},
        **{f"full_{k}": v for k, v in windows(with_decode, args.at, args.half_window).items()},
        "fps_no_decode": round(free_stream(step, args, device), 1),
        "fps_decode_serial": round(args.frames / sum(with_decode), 1),
        "fps_decode_overlap": round(overlapped_stream(step, decoder, args, device), 1),
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }
    last, first = row[f"full_p99_ms@{args.at[-1]}"], row[f"full_p99_ms@{args.at[0]}"]
    row["p99_drift"] = round(last / first - 1, 3)
    fps = max(row["fps_decode_serial"], row["fps_decode_overlap"])
    row["meets_targets"] = fps >= TARGET_FPS.get(size, 0) and row["p99_drift"] <= 0.10  # and p99 within 10%
    return row


def table(rows: list[dict], at: list[int]) -> str:
    """The rows as one markdown table."""
    head = ["model", "mode", "setup (s)"]
    head += [f"step p50/p99 @{k} (ms)" for k in at] + [f"step+decode p50/p99 @{k} (ms)" for k in at]
    head += [
        "fps no decode",
        "fps decode (serial)",
        "fps decode (overlap)",
        "p99 drift",
        "peak GiB",
        "targets",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["mode"], r["setup_s"]]
        cells += [f"{r[f'step_p50_ms@{k}']:.2f} / {r[f'step_p99_ms@{k}']:.2f}" for k in at]
        cells += [f"{r[f'full_p50_ms@{k}']:.2f} / {r[f'full_p99_ms@{k}']:.2f}" for k in at]
        cells += [r["fps_no_decode"], r["fps_decode_serial"], r["fps_decode_overlap"]]
        cells += [f"{100 * r['p99_drift']:+.1f}%", r["peak_gib"], "met" if r["meets_targets"] else "missed"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="B,XL", help="comma-separated Latte sizes (patch 2)")
    parser.add_argument(
        "--modes", default="eager,graph,compile-graph", help=f"comma-separated: {','.join(MODES)}"
    )
    parser.add_argument("--frames", type=int, default=1440)
    parser.add_argument("--at", default="100,1400", help="frames around which latency percentiles are taken")
    parser.add_argument("--half-window", type=int, default=32, help="frames on each side of each --at frame")
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--sink", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--downsample", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", help="generator weights and latents")
    parser.add_argument("--vae-dtype", default="float16")
    parser.add_argument("--vae-path", default=None, help="a diffusers SD VAE folder; default: random weights")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model and VAE, 12 frames")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)  # a few tokens per call: more threads only contend on a shared CPU
        args.sizes, args.frames, args.at, args.half_window = "tiny", 12, "3,9", 2
        args.window, args.input_size, args.downsample = 4, 8, 2
        args.dtype, args.vae_dtype = "float32", "float32"
        args.modes = ",".join(m for m in args.modes.split(",") if args.device != "cpu" or not MODES[m][1])
    args.at = [int(k) for k in args.at.split(",")]
    args.dtype, args.vae_dtype = getattr(torch, args.dtype), getattr(torch, args.vae_dtype)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        vae = build_vae(args, Path(folder), device)
        latent = torch.zeros((1, 1, args.channels, args.input_size, args.input_size), device=device)
        decoders = {}  # one per mode, shared by the models (the same latent shape)
        for mode in args.modes.split(","):
            tick = time.perf_counter()
            compile_mode, graph = MODES[mode]
            channels_last = device.type == "cuda"
            decoders[mode] = FrameDecoder(vae, latent, args.vae_dtype, channels_last, compile_mode, graph)
            print(f"decoder {mode}: ready in {time.perf_counter() - tick:.1f} s", flush=True)
        for size in args.sizes.split(","):
            for mode in args.modes.split(","):
                rows.append(run(size, mode, decoders[mode], args, device))
                print(json.dumps(rows[-1]), flush=True)
    print(table(rows, args.at))
    record = {
        "device": name,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
