"""(e) Metrics on 2 DDP ranks (gloo, CPU) equal those on 1 process, references and their cache included."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metrics import (
    C3DTorchScript,
    FrechetDistance,
    I3DTorchScript,
    MetricSuite,
    RealVideos,
    VideoInceptionScore,
    update_with_samples,
)
from metrics.standins import TinyC3D, TinyVideoDetector, save_scripted
from tests.test_metrics_pipeline import RandomOffsetClips


def sample(n: int, generator: torch.Generator) -> torch.Tensor:
    """Deterministic "generated" videos from a batch's generator: (n, f, c, h, w) in [-1, 1]."""
    return torch.rand(n, 5, 3, 8, 8, generator=generator) * 2 - 1


def run_metrics(rank: int, world_size: int, folder: str, runs: list[tuple[str, str]]) -> None:
    """One rank: for each (cache, tag), references (computed or read), 11 videos in batches of 2, compute."""
    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size
        )
    weights = f"{folder}/weights"
    for cache, tag in runs:
        suite = MetricSuite(
            {
                "fvd": FrechetDistance(I3DTorchScript(weights_dir=weights, num_features=16)),
                "is": VideoInceptionScore(C3DTorchScript(weights_dir=weights, num_classes=10), splits=3),
            },
            num_frames=4,
        )
        clips = partial(RandomOffsetClips, num_videos=13)
        real = RealVideos(clips, resolution=8, num_videos=11, batch_size=3, num_workers=0, cache_dir=cache)
        suite.prepare_reference(real, progress=False)
        generated = torch.tensor([update_with_samples(suite, sample, 11, batch_size=2, progress=False)])
        values = suite.compute()
        if world_size > 1:
            dist.all_reduce(generated)
        if rank == 0:
            record = {
                "values": values,
                "generated": int(generated),
                "mean": suite.metrics["fvd"].reference["mean"],
            }
            Path(folder, f"{tag}.json").write_text(json.dumps({**record, "mean": record["mean"].tolist()}))
    if world_size > 1:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and the metric stack
def test_two_gloo_ranks_give_the_same_metrics_as_one_process(tmp_path):
    save_scripted(TinyVideoDetector(num_features=16), tmp_path / "weights" / "i3d_torchscript.pt")
    save_scripted(TinyC3D(num_classes=10), tmp_path / "weights" / "c3d_ucf101.pt")
    folder = str(tmp_path)
    run_metrics(0, 1, folder, [(f"{folder}/cache-1", "single")])
    runs = [(f"{folder}/cache-2", "ddp"), (f"{folder}/cache-1", "ddp-cached")]  # computed, then read
    mp.spawn(run_metrics, args=(2, folder, runs), nprocs=2, join=True)

    single, ddp, cached = (
        json.loads((tmp_path / f"{t}.json").read_text()) for t in ("single", "ddp", "ddp-cached")
    )
    assert single["generated"] == ddp["generated"] == 11
    assert ddp["mean"] == pytest.approx(single["mean"], rel=1e-12), "real statistics must not depend on ranks"
    for record in (ddp, cached):
        assert record["values"]["fvd"] == pytest.approx(single["values"]["fvd"], rel=1e-9)
        assert record["values"]["is"] == pytest.approx(single["values"]["is"], rel=1e-9)
        assert record["values"]["is_std"] == pytest.approx(single["values"]["is_std"], rel=1e-6)
    assert single["values"]["fvd"] > 1 and single["values"]["is"] > 1.01, "the values must be informative"
    assert len(list((tmp_path / "cache-2").glob("*.pt"))) == 1, "rank 0 writes the computed reference once"
    assert len(list((tmp_path / "cache-1").glob("*.pt"))) == 1, "2 ranks read the 1-process cache (same key)"
