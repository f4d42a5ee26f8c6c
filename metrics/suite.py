"""A set of configured metrics run together: shared detector passes, real-data references, generation.

`MetricSuite` is what the callback and `evaluate.py` use: `prepare_reference(real)` loads (or computes once
and caches) every metric's real-data reference, `update(videos)` feeds generated `b f c h w` videos (their
first `num_frames` frames, the protocol's 16), `compute()` syncs across DDP ranks and returns plain floats.
`update_with_samples` generates videos batch by batch, each rank a contiguous share of global batches.
"""

import json
import logging
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from metrics.reference import (
    CACHE_FORMAT,
    RealVideos,
    batch_range,
    load_reference,
    save_reference,
    stable_seed,
)
from metrics.scores import VideoMetric
from utils.distributed import rank_and_world_size

log = logging.getLogger(__name__)

#################################################################################
#                               Distributed helpers                             #
#################################################################################


def all_ranks_agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise AND of boolean flags over all ranks (the flags themselves on one process)."""
    if rank_and_world_size()[1] == 1 or not flags:
        return flags
    tensor = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return [bool(v) for v in tensor.tolist()]


#################################################################################
#                                  The suite                                    #
#################################################################################


class MetricSuite:
    """Named video metrics sharing detectors; feeds them the first `num_frames` frames of every video.

    The dict keys name the values (`{"fvd": ...}`, `{"kid_x1000": ..., "kid_x1000_std": ...}`) and the cache
    files.
    Metrics whose detectors are identical (class, settings, file sha256) share one copy, run once per batch
    and view. A metric may see its own view of each video (`num_frames`, `clip`: the first or the last frames,
    e.g. FVD on a long stream's first and last 16 frames, or StyleGAN-V's FVD128); `num_frames` is the
    default view's length, and every video must have the longest view's frames.
    """

    def __init__(self, metrics: dict[str, VideoMetric], num_frames: int = 16):
        if not metrics:
            raise ValueError("a MetricSuite needs at least one metric (e.g. metrics=fvd)")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
        self.metrics = dict(metrics)
        self.groups: dict[
            str, list[str]
        ] = {}  # (detector identity, view) -> names of the metrics that use it
        detectors = {}  # detector identity -> the one copy
        for name, metric in self.metrics.items():
            metric.name = name  # the key names its values: {name: ..., name_std: ...}
            metric.num_frames = metric.num_frames or num_frames
            identity = json.dumps(metric.detector.describe(), sort_keys=True)
            metric.detector = detectors.setdefault(identity, metric.detector)  # the same network and file
            self.groups.setdefault(json.dumps([identity, metric.num_frames, metric.clip]), []).append(name)
        self.num_frames = max(metric.num_frames for metric in self.metrics.values())  # every video's minimum
        views = [(m.clip, m.num_frames) for m in self.metrics.values()]
        self.head = max([n for clip, n in views if clip == "first"], default=0)  # frames seen from the start
        self.tail = max([n for clip, n in views if clip == "last"], default=0)  # frames seen from the end
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> "MetricSuite":
        """Move every metric (states and detector) to `device`."""
        self.device = torch.device(device)
        for metric in self.metrics.values():
            metric.to(self.device)
        return self

    def clips(self, videos: torch.Tensor, metric: VideoMetric) -> torch.Tensor:
        """The frames of `b f c h w` videos that `metric` sees (its first or last num_frames), on device."""
        assert videos.ndim == 5 and videos.shape[2] in (1, 3), (
            f"videos must be (b, f, c, h, w) with c = 1 or 3 (frames first), got {tuple(videos.shape)}"
        )
        if videos.shape[1] < metric.num_frames:
            raise ValueError(
                f"{metric.name} sees the {metric.clip} {metric.num_frames} frames of every video, but these "
                f"have {videos.shape[1]} (b f c h w = {tuple(videos.shape)})"
            )
        n = metric.num_frames
        return (videos[:, :n] if metric.clip == "first" else videos[:, -n:]).to(self.device)

    def update(self, videos: torch.Tensor, only: list[str] | None = None) -> None:
        """Feed `b f c h w` videos to every metric (or those in `only`), one detector pass per group."""
        for names in self.groups.values():
            names = [name for name in names if only is None or name in only]
            if names:
                metric = self.metrics[names[0]]
                features = metric.detector(self.clips(videos, metric))  # (n, d)
                for name in names:
                    self.metrics[name].update(features=features)

    def views(self) -> dict[str, str]:
        """What each metric sees of a video, e.g. {"fvd": "first 16 frames", "fvd_last16": "last 16 ..."}."""
        return {name: f"{m.clip} {m.num_frames} frames" for name, m in self.metrics.items()}

    def compute(self) -> dict[str, float]:
        """Every metric's values (synced over ranks), e.g. {"fvd": ..., "is": ..., "is_std": ...}."""
        values = {}
        for metric in self.metrics.values():
            values.update({key: float(value) for key, value in metric.compute().items()})
        return values

    def reset(self) -> None:
        """Clear the generated-video states (references stay)."""
        for metric in self.metrics.values():
            metric.reset()

    def describe(self) -> dict[str, dict]:
        """Per metric: the detector class, file, sha256 and settings that produced its numbers."""
        return {name: metric.detector.describe() for name, metric in self.metrics.items()}

    def prepare_reference(self, real: RealVideos, progress: bool = True) -> dict[str, str | None]:
        """Load each metric's real-data reference from the cache, or compute the missing ones (all ranks).

        Returns {metric: cache file or None}. A reference is recomputed whenever anything in its key changes:
        dataset factory and arguments, split, resolution, frames, clip count, seed, statistic, detector file
        sha256 and settings. Metrics with the same key (e.g. FVD of the first and of the last 16 frames: real
        clips are alike throughout) share one computation.
        """
        rank, world_size = rank_and_world_size()
        needing = {name: m for name, m in self.metrics.items() if m.needs_reference}
        keys = {
            name: {
                "format": CACHE_FORMAT,
                "real": real.describe(m.num_frames),
                "metric": m.reference_key(),
            }
            for name, m in needing.items()
        }
        paths = {name: real.cache_path(m.num_frames, name, keys[name]) for name, m in needing.items()}
        cached = {name: load_reference(paths[name], keys[name]) if paths[name] else None for name in needing}
        usable = all_ranks_agree([cached[name] is not None for name in needing], self.device)
        missing = [name for name, ok in zip(needing, usable) if not ok]
        for name in needing:
            if name not in missing:
                needing[name].set_reference(cached[name])
                if rank == 0:
                    log.info(f"{name}: real reference from cache {paths[name]}")
        same = {}  # reference key -> the missing metric that computes it
        for name in missing:
            same.setdefault(json.dumps(keys[name], sort_keys=True), name)
        if missing:
            self._compute_references(real, sorted(set(same.values())), rank, world_size, progress)
            for name in sorted(set(same.values())):
                metric = needing[name]
                with metric.sync_context():
                    reference = metric.reference_state()
                metric.reset()
                metric.set_reference(reference)
            for name in missing:
                reference = needing[same[json.dumps(keys[name], sort_keys=True)]].reference
                needing[name].set_reference(reference)
                if rank == 0 and paths[name] is not None:
                    save_reference(paths[name], keys[name], reference)
                    log.info(f"{name}: real reference computed and cached in {paths[name]}")
        return {name: str(paths[name]) if paths[name] else None for name in needing}

    def _compute_references(
        self, real: RealVideos, names: list[str], rank: int, world_size: int, progress: bool
    ) -> None:
        """Feed this rank's share of the real clips (as long as each metric's view) to the metrics `names`."""
        for name in names:
            self.metrics[name].reset()
        for num_frames in sorted({self.metrics[name].num_frames for name in names}):
            these = [name for name in names if self.metrics[name].num_frames == num_frames]
            total = len(real.indices(num_frames))
            label = f"real clips of {num_frames} frames ({', '.join(these)})"
            bar = tqdm(total=total, desc=label, disable=not progress or rank != 0)
            for videos in real.batches(num_frames, rank, world_size):
                self.update(videos, only=these)
                bar.update(videos.shape[0] * world_size)
            bar.close()


#################################################################################
#                                   Generation                                  #
#################################################################################


def update_with_samples(
    suite: MetricSuite,
    sample: Callable[[int, torch.Generator], torch.Tensor],
    num_videos: int,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    lockstep: bool = False,
    seconds: dict[str, float] | None = None,
) -> int:
    """Generate `num_videos` videos in global batches (this rank: a contiguous run) and feed them to `suite`.

    sample(n, generator) -> `n f c h w` videos in [-1, 1]; batch j's generator (on the suite's device) is
    seeded from (seed, j), so a run's videos depend on seed and batch_size, not on the number of ranks.
    ``lockstep``: every rank calls `sample` equally often (a rank with one batch fewer samples one more and
    drops it), as a sharded model's forward needs every rank. ``seconds``: filled with this rank's time in
    ``generate`` and ``features`` (each batch's device work waited for). Returns how many videos this rank
    generated.
    """
    rank, world_size = rank_and_world_size()
    num_batches = -(-num_videos // batch_size)
    mine = batch_range(num_batches, rank, world_size)
    share = min(mine.stop * batch_size, num_videos) - mine.start * batch_size
    calls = -(-num_batches // world_size) if lockstep else len(mine)  # the most batches any rank has
    bar = tqdm(total=num_videos, desc="generating videos", disable=not progress or rank != 0)
    timings = {"generate": 0.0, "features": 0.0}
    for j in range(mine.start, mine.start + calls):
        n = min(batch_size, num_videos - j * batch_size) if j in mine else batch_size
        generator = torch.Generator(suite.device).manual_seed(stable_seed("generate", seed, j))
        start = clock(suite.device)
        videos = sample(n, generator)  # (n, f, c, h, w)
        assert videos.shape[0] == n, f"sample({n}) returned {videos.shape[0]} videos"
        generated = clock(suite.device)
        timings["generate"] += generated - start
        if j not in mine:
            continue  # lockstep's extra call
        suite.update(videos)
        timings["features"] += clock(suite.device) - generated
        bar.update(n * world_size)
    bar.close()
    if seconds is not None:
        seconds.update(timings)
    return share


def clock(device: torch.device) -> float:
    """Seconds on a host clock once ``device`` has done the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
