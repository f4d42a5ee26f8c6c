"""What `evaluate.py` runs: FVD/FID/KID/IS of a checkpoint's samples or of a folder of videos vs real data.

Protocol (StyleGAN-V, as Latte reports): `num_videos` (2048) generated videos, their first 16 frames, against
the real clips of `real` (2048, 16 frames at the dataset's stride); detectors from the weight registry.
Writes `metrics.json` (values, protocol, detector files and sha256, reference cache files) and `metrics.md`
(the table, also printed) into the run folder.

Several GPUs: `torchrun --nproc_per_node=8 evaluate.py ...`. Each rank generates (or reads) its share of the
videos and of the real clips, the metrics sync, and rank 0 writes the record; the values equal one process's.
"""

import json
import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from metrics.reference import batch_range
from metrics.suite import MetricSuite, update_with_samples
from metrics.video_folder import VideoFolder
from utils.distributed import join_torchrun, rank_and_world_size

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    """Compute the configured metrics; return (and write) the result record."""
    if (cfg.get("ckpt_path") is None) == (cfg.get("videos_dir") is None):
        raise ValueError(
            "set exactly one of ckpt_path=<checkpoint> or videos_dir=<folder of generated videos>"
        )
    device = join_torchrun(cfg.device)
    rank, world_size = rank_and_world_size()
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    start, phases = time.perf_counter(), {}  # phases: where this rank's seconds went
    suite: MetricSuite = instantiate(cfg.metrics).to(device)
    real = instantiate(cfg.real)
    references = suite.prepare_reference(real, progress=cfg.progress)

    if cfg.get("ckpt_path") is not None and cfg.get("stream_frames"):
        from utils.stream import load_streamer, stream_sampler, train_clips

        streamer = load_streamer(cfg.ckpt_path, cfg)
        streamer.generator.to(device).eval()
        streamer.autoencoder.to(device)
        ready = time.perf_counter()
        sample = stream_sampler(
            streamer.generator,
            streamer.objective,
            streamer.autoencoder,
            train_clips(streamer.run_config),
            cfg.stream_frames,
            suite.head,
            suite.tail,
        )
        update_with_samples(
            suite,
            sample,
            cfg.num_videos,
            cfg.batch_size,
            seed=cfg.seed,
            progress=cfg.progress,
            seconds=phases,
        )
        source = {"ckpt_path": str(cfg.ckpt_path), "sampler": f"stream{cfg.stream_frames}", "seed": cfg.seed}
        num_generated = cfg.num_videos
    elif cfg.get("ckpt_path") is not None:
        from utils.run import load_module  # the training stack is only needed for checkpoints

        module = load_module(cfg.ckpt_path, cfg).to(device).eval()
        ready = time.perf_counter()
        source = {"ckpt_path": str(cfg.ckpt_path), "sampler": module.sampler.name, "seed": cfg.seed}
        update_with_samples(  # this rank's share of the num_videos
            suite,
            lambda n, generator: module.sample(n, generator=generator),
            cfg.num_videos,
            cfg.batch_size,
            seed=cfg.seed,
            progress=cfg.progress,
            seconds=phases,
        )
        num_generated = cfg.num_videos
    else:
        if suite.tail:
            raise ValueError(
                f"metrics of a video's last frames ({', '.join(suite.views())}) need streams generated here: "
                "pass ckpt_path=<AAPT checkpoint> stream_frames=<frames> instead of videos_dir"
            )
        folder = VideoFolder(
            cfg.videos_dir, suite.num_frames, cfg.videos_stride, cfg.num_videos, resolution=real.resolution
        )
        if len(folder) < cfg.num_videos:
            log.warning(f"{cfg.videos_dir} has {len(folder)} videos, fewer than num_videos={cfg.num_videos}")
        ready = time.perf_counter()
        mine = batch_range(-(-len(folder) // cfg.batch_size), rank, world_size)  # this rank's batches
        share = Subset(
            folder, range(mine.start * cfg.batch_size, min(mine.stop * cfg.batch_size, len(folder)))
        )
        for batch in DataLoader(share, batch_size=cfg.batch_size, num_workers=cfg.num_workers):
            suite.update(batch["video"])
        phases["features"] = time.perf_counter() - ready  # reading the videos included
        source = {"videos_dir": str(Path(cfg.videos_dir).expanduser()), "stride": cfg.videos_stride}
        num_generated = len(folder)

    counted = time.perf_counter()
    values = suite.compute()
    phases = {"setup": ready - start, **phases, "statistics": time.perf_counter() - counted}
    record = {
        "values": values,
        "num_generated": num_generated,
        "num_real": len(real.indices(suite.num_frames)),
        "num_frames": suite.num_frames,
        "views": suite.views(),
        "source": source,
        "real": real.describe(suite.num_frames),
        "detectors": suite.describe(),
        "references": references,
        "seconds": round(time.perf_counter() - start, 1),
        "phase_seconds": {name: round(value, 3) for name, value in phases.items()},  # rank 0's
        "processes": world_size,
    }
    if rank != 0:
        return record
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    table = markdown_table(record)
    (out / "metrics.md").write_text(table)
    print(table)
    return record


def markdown_table(record: dict) -> str:
    """The values of a result record as a markdown table, with the protocol and detector files."""
    source = record["source"]
    what = source.get("ckpt_path") or source.get("videos_dir")
    sampler = f", sampler {source['sampler']}" if "sampler" in source else ""
    lines = [
        f"Generated: {what}{sampler} ({record['num_generated']} videos; "
        f"{', '.join(f'{name}: {view}' for name, view in record['views'].items())}); "
        f"real: {record['real']['dataset']['target']} {record['real']['split']} "
        f"({record['num_real']} clips, {record['real']['resolution']}px)",
        "",
        "| metric | value | detector file | sha256 |",
        "|---|---|---|---|",
    ]
    for key, value in record["values"].items():
        metric = key.removesuffix("_std")
        detector = record["detectors"].get(metric, {})
        lines.append(
            f"| {key} | {value:.4f} | {detector.get('file', '')} | {detector.get('sha256', '')[:16]} |"
        )
    phases = ", ".join(f"{name} {value:.1f}" for name, value in record["phase_seconds"].items())
    lines += ["", f"{record['seconds']:.1f} s on {record['processes']} process(es): {phases} (rank 0's)"]
    return "\n".join(lines) + "\n"
