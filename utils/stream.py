"""What ``stream.py`` runs: a causal one-step generator (AAPT) streamed frame by frame into an mp4.

One forward per latent frame over the static ring-buffer KV cache (``diffusion.streaming``), each frame
decoded as it comes (one latent frame = one video frame: the SD VAE is per-frame 2-D; identity in pixel
space) and appended to ``stream.mp4``; per-frame latency and frames/s go to the log and to ``latency.json``.

The first frame: ``first_frame=<image or video file>`` (its first frame, center-cropped and resized), else the
first frame of clip ``first_clip`` of the run's own data (the train split of the checkpoint's ``data``), so a
stream starts from a real frame of what the model was trained on. A class-conditional model follows a
schedule ``labels={frame: class}`` and the lines typed on stdin while it streams (a class index or name).
"""

import json
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from diffusion.objective import Objective
from diffusion.streaming import DecodeAhead, FrameDecoder, StreamStep, stream_videos
from utils.video import Mp4Writer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Streamer:
    """What a stream needs of a trained AAPT run."""

    generator: nn.Module  # causal Latte over [noise, previous frame] on channels, with a window
    objective: Objective  # reads the generator's output as the clean frame (flow matching: t = 1)
    autoencoder: nn.Module  # latents <-> pixels (identity in pixel space)
    run_config: DictConfig  # the checkpoint's stored run config (its data: the first frame)


def load_streamer(ckpt_path: str, cfg: DictConfig, use_ema: bool = True) -> Streamer:
    """The generator (EMA by default), objective and autoencoder of an AAPT checkpoint (any such module)."""
    from utils.run import load_module

    module = load_module(ckpt_path, cfg)
    missing = [name for name in ("backbone", "diffusion", "autoencoder") if not hasattr(module, name)]
    if missing:
        raise ValueError(
            f"{ckpt_path} holds a {type(module).__name__}, which has no {', '.join(missing)}: stream.py "
            "streams a causal one-step generator (AAPTGan: backbone, ema, diffusion, autoencoder)"
        )
    generator = module.ema if use_ema and getattr(module, "ema", None) is not None else module.backbone
    if "config" not in module.hparams:
        raise ValueError(f"{ckpt_path} is not a train.py checkpoint: stream.py needs the run's config in it")
    run_config = OmegaConf.create(module.hparams["config"])  # read by load_module: the file is read once
    return Streamer(generator, module.diffusion, module.autoencoder, run_config)


#################################################################################
#                                 The first frame                               #
#################################################################################


def frame_from_file(path: str | Path, resolution: int) -> torch.Tensor:
    """The (first) frame of an image or video file as (3, r, r) in [-1, 1]: center square, resized."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"first_frame={path} is not a file (an image {IMAGE_SUFFIXES} or a video)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        pixels = np.asarray(Image.open(path).convert("RGB"))  # (h, w, 3)
    else:
        from metrics.video_folder import read_video_file

        frames = read_video_file(path, 1)
        if not frames:
            raise ValueError(f"first_frame={path}: no frame could be read from this video")
        pixels = frames[0]  # (h, w, 3)
    image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 127.5 - 1  # (3, h, w)
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    square = image[None, :, top : top + side, left : left + side]  # (1, 3, s, s)
    return F.interpolate(square, size=(resolution, resolution), mode="bilinear", antialias=True)[0]


def train_clips(run_config: DictConfig) -> Dataset:
    """The train split of the run's data (the checkpoint's ``data`` config)."""
    return instantiate(run_config.data).build("train")


def first_frame(item: dict) -> tuple[torch.Tensor, int | None]:
    """The first frame (3, r, r) in [-1, 1] of a data item {"video": (f, 3, r, r), ...} and its label."""
    video = item["video"]  # (f, 3, r, r) float in [-1, 1] or uint8
    frame = video[0].float() / 127.5 - 1 if video.dtype == torch.uint8 else video[0].float()  # (3, r, r)
    label = item.get("label")
    return frame, None if label is None else int(label)


def stream_sampler(
    generator: nn.Module,
    objective: Objective,
    autoencoder: nn.Module,
    clips: Dataset,
    num_frames: int,
    head: int,
    tail: int,
) -> Callable[[int, torch.Generator], torch.Tensor]:
    """sample(n, rng) -> the first ``head`` and last ``tail`` frames (n, k, 3, H, W) of n streams of
    ``num_frames`` frames, each from the first frame of a clip drawn by ``rng`` (its class, if conditional).

    What `update_with_samples` takes, for evaluate.py and the metrics callback (``stream_frames``).
    """

    def sample(n: int, rng: torch.Generator) -> torch.Tensor:
        indices = torch.randint(len(clips), (n,), generator=rng, device=rng.device).tolist()
        frames, labels = zip(*(first_frame(clips[i]) for i in indices))
        device = next(generator.parameters()).device
        first = torch.stack(frames).to(device)[:, None]  # (n, 1, 3, H, W)
        y = torch.tensor(labels, device=device) if generator.num_classes and None not in labels else None
        if generator.num_classes and y is None:
            y = torch.randint(generator.num_classes, (n,), generator=rng, device=rng.device).to(device)
        return stream_videos(generator, objective, autoencoder, first, num_frames, head, tail, rng, y)

    return sample


#################################################################################
#                        Class labels: a schedule and stdin                     #
#################################################################################


class LabelControl:
    """The class of each frame: a schedule {frame: class} and lines typed while streaming (index or name)."""

    def __init__(self, schedule: Mapping | None, names: Sequence[str] = (), num_classes: int = 0):
        self.names = [name.lower() for name in names]
        self.num_classes = num_classes
        self.schedule = {int(frame): self.parse(str(label)) for frame, label in (schedule or {}).items()}
        if None in self.schedule.values():
            raise ValueError(f"labels={dict(schedule)}: every class must be an index or a name")
        self.typed: queue.SimpleQueue[str] = queue.SimpleQueue()

    def parse(self, text: str) -> int | None:
        """A class index from a line (an index, or a name when names are known); None if it names none."""
        text = text.strip()
        if text.lstrip("-").isdigit():
            index = int(text)
        elif text.lower() in self.names:
            index = self.names.index(text.lower())
        else:
            return None
        return index if 0 <= index < self.num_classes else None

    def listen(self, stream: TextIO) -> threading.Thread:
        """Read lines of ``stream`` (stdin) in a daemon thread; each switches the class at the next frame."""

        def read() -> None:
            for line in stream:
                self.typed.put(line)

        thread = threading.Thread(target=read, daemon=True, name="stream-labels")
        thread.start()
        return thread

    def at(self, frame: int) -> int | None:
        """The class that starts at ``frame`` (typed lines win over the schedule), or None: no change."""
        label = self.schedule.get(frame)
        while not self.typed.empty():
            line = self.typed.get()
            typed = self.parse(line)
            if typed is None:
                log.warning(f"stdin: {line.strip()!r} is no class index in [0, {self.num_classes}) or name")
            else:
                label = typed
        return label


def class_names(run_config: DictConfig) -> tuple[str, ...]:
    """The class names of the run's data where they are known (UCF101: its class folders), else ()."""
    index = OmegaConf.select(run_config, "data.dataset.index._target_", default="") or ""
    root = OmegaConf.select(run_config, "data.root", default=None)
    if index.endswith("ucf101_index") and root and Path(root).is_dir():
        from datamodules.index import ucf101_classes

        return ucf101_classes(Path(root))
    return ()


#################################################################################
#                                  The stream                                   #
#################################################################################


def stream(cfg: DictConfig, stdin: TextIO | None = None) -> dict:
    """Stream ``cfg.num_frames`` frames after the first into ``stream.mp4``; returns the latency summary."""
    device = torch.device(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    streamer = load_streamer(cfg.ckpt_path, cfg, cfg.use_ema)
    dtype = DTYPES[cfg.dtype]
    generator = streamer.generator.to(device, dtype).eval()
    autoencoder = streamer.autoencoder.to(device).eval()
    size = generator.input_size * autoencoder.downsample
    if cfg.first_frame is not None:
        frame, label = frame_from_file(cfg.first_frame, size), None
    else:
        clips = train_clips(streamer.run_config)
        frame, label = first_frame(clips[cfg.first_clip % len(clips)])
    video = frame.to(device)[None, None].expand(cfg.batch_size, 1, -1, -1, -1)  # (b, 1, 3, r, r)
    first = autoencoder.encode(video).to(dtype)  # (b, 1, c, h, w)
    step = StreamStep(
        generator, streamer.objective, cfg.batch_size, tuple(first.shape[2:]), cfg.compile, cfg.cuda_graph
    )
    decoder = FrameDecoder(
        autoencoder,
        first,
        DTYPES[cfg.decoder.dtype] if cfg.decoder.dtype else None,
        cfg.decoder.channels_last,
        cfg.decoder.compile,
        cfg.decoder.cuda_graph,
    )
    if cfg.labels and not generator.num_classes:
        raise ValueError(f"labels={dict(cfg.labels)}, but the generator is unconditional (num_classes=0)")
    labels = LabelControl(cfg.labels, class_names(streamer.run_config), generator.num_classes)
    if generator.num_classes and cfg.stdin and stdin is not None:
        labels.listen(stdin)
    y = labels.at(0)
    y = y if y is not None else (label or 0) if generator.num_classes else None
    step.start(first, y)
    noise_rng = torch.Generator(device).manual_seed(cfg.seed)
    out = Path(cfg.paths.output_dir)
    latencies, switches = [], [] if y is None else [(0, y)]
    start = time.perf_counter()
    ahead = DecodeAhead(decoder) if cfg.decoder.overlap else None
    with Mp4Writer(out / "stream.mp4", cfg.fps) as writer:
        writer.append(decoder(first)[0].cpu().numpy())  # frame 0: the given frame
        for k in range(1, cfg.num_frames + 1):
            tick = time.perf_counter()
            y = labels.at(k) if generator.num_classes else None
            if y is not None:
                switches.append((k, y))
                log.info(f"frame {k}: class {y}")
            shape = first.shape  # (b, 1, c, h, w)
            noise = torch.randn(shape, generator=noise_rng, device=device, dtype=dtype)  # (b, 1, c, h, w)
            frame = step.step(noise, y)  # (b, 1, c, h, w)
            ready = ahead.push(frame) if ahead else [decoder(frame).cpu()]  # [(b, H, W, 3) uint8]: waits
            latencies.append(time.perf_counter() - tick)  # until the frame (decoding ahead: the one before)
            for pixels in ready + (ahead.finish() if ahead and k == cfg.num_frames else []):
                writer.append(pixels[0].numpy())
            if k % cfg.log_every == 0 or k == cfg.num_frames:
                recent = latencies[-cfg.log_every :]
                log.info(
                    f"frame {k}/{cfg.num_frames}: {1e3 * statistics.median(recent):.1f} ms/frame (median of "
                    f"the last {len(recent)}), {k / (time.perf_counter() - start):.1f} frames/s so far"
                )
    summary = latency_summary(latencies, switches, device)
    (out / "latency.json").write_text(json.dumps({**summary, "ms_per_frame": [1e3 * t for t in latencies]}))
    log.info(f"wrote {cfg.num_frames + 1} frames to {out / 'stream.mp4'}: {summary['fps']:.1f} frames/s")
    return summary


def latency_summary(latencies: list[float], switches: list[tuple[int, int]], device: torch.device) -> dict:
    """p50/p99 latency (ms), frames/s, the class switches and the device of a stream."""
    ms = sorted(1e3 * t for t in latencies)
    return {
        "frames": len(ms),
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "fps": len(ms) / sum(latencies),  # generation + decoding (the mp4 encoder aside)
        "class_switches": switches,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
