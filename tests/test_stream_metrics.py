"""Evaluation of streams (issue #12 item 5): FVD of the first and last frames (drift) and FVD128."""

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from callbacks import GenerationMetrics
from datamodules import SyntheticVideos
from metrics import FrechetDistance, I3DTorchScript, MetricSuite, RealVideos
from metrics.evaluation import evaluate
from metrics.standins import TinyVideoDetector, save_scripted
from tests.conftest import compose_train
from tests.helpers.aapt_standin import save_standin, tiny_standin

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def weights_dir(tmp_path) -> Path:
    """A stand-in for the I3D TorchScript file under its registry name."""
    save_scripted(TinyVideoDetector(), tmp_path / "weights" / "i3d_torchscript.pt")
    return tmp_path / "weights"


def fvd(weights_dir, **view) -> FrechetDistance:
    """FVD through the stand-in I3D file, with a view (num_frames, clip)."""
    return FrechetDistance(I3DTorchScript(weights_dir=str(weights_dir)), **view)


def real_clips(count: int = 8) -> RealVideos:
    """Synthetic real clips of 16 px."""
    clips = partial(SyntheticVideos, num_videos=count, seed=0)
    return RealVideos(clips, resolution=16, num_videos=count, num_workers=0)


def test_views_see_the_first_or_last_frames_and_share_one_reference(weights_dir, monkeypatch):
    suite = MetricSuite(
        {
            "fvd_first": fvd(weights_dir, clip="first"),
            "fvd_last": fvd(weights_dir, clip="last"),
            "fvd8": fvd(weights_dir, num_frames=8),
        },
        num_frames=4,
    )
    assert (suite.num_frames, suite.head, suite.tail) == (8, 8, 4)
    assert suite.metrics["fvd_first"].detector is suite.metrics["fvd8"].detector, "one detector copy"
    assert suite.views()["fvd_last"] == "last 4 frames"
    read = []
    real = real_clips()
    batches = real.batches
    monkeypatch.setattr(real, "batches", lambda n, *a: read.append(n) or batches(n, *a))
    suite.prepare_reference(real, progress=False)
    assert sorted(read) == [4, 8], "4-frame real clips once for both 4-frame views, 8-frame clips for fvd8"
    reference = suite.metrics["fvd_first"].reference["mean"]
    torch.testing.assert_close(suite.metrics["fvd_last"].reference["mean"], reference)

    videos = torch.stack([SyntheticVideos("val", 12, 16, 0, 6)[i]["video"] for i in range(6)])  # (6, 12, ...)
    suite.update(videos)
    values = suite.compute()
    plain = MetricSuite({"fvd": fvd(weights_dir)}, num_frames=4)
    plain.prepare_reference(real_clips(), progress=False)
    for name, frames in (("fvd_first", videos[:, :4]), ("fvd_last", videos[:, -4:])):
        plain.reset()
        plain.update(frames)
        assert values[name] == pytest.approx(plain.compute()["fvd"], rel=1e-6), name
    assert values["fvd_first"] != pytest.approx(values["fvd_last"], rel=1e-3)
    with pytest.raises(ValueError, match="fvd8 sees the first 8 frames of every video, but these have 6"):
        suite.update(videos[:, :6])
    with pytest.raises(ValueError, match="clip must be one of"):
        fvd(weights_dir, clip="middle")


def test_the_stream_metrics_preset_holds_drift_and_fvd128(tmp_path, weights_dir):
    cfg = compose_train(
        tmp_path, ["metrics=stream", f"paths.weights_dir={weights_dir}"], config_name="evaluate"
    )
    suite = instantiate(cfg.metrics)
    assert suite.views() == {
        "fvd_first16": "first 16 frames",
        "fvd_last16": "last 16 frames",
        "fvd128": "first 128 frames",
    }
    assert (suite.num_frames, suite.head, suite.tail) == (128, 128, 16) and len(suite.groups) == 3


STREAM_EVAL = [
    "metrics=fvd_drift",
    "metrics.metrics.fvd_first16.num_frames=4",
    "metrics.metrics.fvd_last16.num_frames=4",
    "data.resolution=16",
    "data.dataset.num_videos=8",
    "data.num_workers=0",
    "real.num_videos=8",
    "real.batch_size=4",
    "num_videos=4",
    "batch_size=2",
    "stream_frames=12",
    "progress=false",
]


def test_evaluate_streams_a_checkpoint_and_reports_the_first_and_last_frames(tmp_path, weights_dir):
    ckpt = tmp_path / "aapt.ckpt"
    save_standin(ckpt, size=16)
    overrides = [*STREAM_EVAL, f"ckpt_path={ckpt}", f"paths.weights_dir={weights_dir}"]
    record = evaluate(compose_train(tmp_path, overrides, config_name="evaluate"))
    first, last = record["values"]["fvd_first16"], record["values"]["fvd_last16"]
    assert first > 0 and last > 0 and first != pytest.approx(last, rel=1e-3)
    assert record["source"]["sampler"] == "stream12" and record["views"]["fvd_last16"] == "last 4 frames"
    assert "fvd_last16: last 4 frames" in (tmp_path / "run" / "metrics.md").read_text()
    with pytest.raises(ValueError, match="last frames .* need streams generated here"):
        videos = [o for o in overrides if not o.startswith(("ckpt_path", "stream_frames"))]
        evaluate(compose_train(tmp_path, [*videos, f"videos_dir={tmp_path}"], "evaluate"))


def test_the_metrics_callback_streams_the_ema_generator(tmp_path, weights_dir):
    module = tiny_standin(size=16)
    suite = MetricSuite({"first": fvd(weights_dir, clip="first"), "last": fvd(weights_dir, clip="last")}, 4)
    callback = GenerationMetrics(
        suite, real_clips(), None, num_videos=4, batch_size=2, stream_frames=10, progress=False
    )
    clips = SyntheticVideos("train", 4, 16, 0, 8)
    trainer = SimpleNamespace(
        global_step=7,
        is_global_zero=True,
        loggers=[],
        callback_metrics={},
        datamodule=SimpleNamespace(build=lambda split: clips),
    )
    callback.on_fit_start(trainer, module)  # no sampler or diffusion: nothing to check
    values = callback.evaluate(trainer, module)
    assert set(values) == {"first", "last"} and values["first"] != pytest.approx(values["last"], rel=1e-3)
    assert {"val/first_stream10", "val/last"} <= set(trainer.callback_metrics)
    assert callback.history[-1]["views"] == {"first": "first 4 frames", "last": "last 4 frames"}
    with pytest.raises(ValueError, match="stream_frames=2 is shorter than the metrics' 4 frames"):
        GenerationMetrics(suite, real_clips(), stream_frames=2)
