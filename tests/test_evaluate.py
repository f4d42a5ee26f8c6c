"""evaluate.py: metrics of a folder of generated videos or of a checkpoint's samples, written and printed."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from datamodules import SyntheticVideos
from metrics import C3DTorchScript, FrechetDistance, I3DTorchScript, KernelDistance, MetricSuite, RealVideos
from metrics.evaluation import evaluate
from metrics.standins import TinyC3D, TinyVideoDetector, save_scripted
from tests.conftest import ROOT, compose_train
from utils.video import to_uint8, video_grid, write_mp4

EVALUATE = [  # a few-second evaluation: 4-frame clips of 16 px, stand-in detectors
    "metrics=[fvd,is_ucf]",
    "metrics.num_frames=4",
    "metrics.metrics.is.splits=2",
    "data.resolution=16",
    "data.dataset.num_videos=8",
    "data.num_workers=0",
    "real.num_videos=8",
    "real.batch_size=4",
    "num_videos=6",
    "batch_size=4",
    "progress=false",
]


@pytest.fixture
def weights_dir(tmp_path) -> Path:
    """Stand-ins for the TorchScript detector files under their registry names."""
    save_scripted(TinyVideoDetector(), tmp_path / "weights" / "i3d_torchscript.pt")
    save_scripted(TinyC3D(), tmp_path / "weights" / "c3d_ucf101.pt")
    return tmp_path / "weights"


def write_frame_folders(root: Path, count: int, num_frames: int) -> torch.Tensor:
    """`count` synthetic clips as folders of PNG frames (lossless); returns them as uint8 (b, f, c, h, w)."""
    clips = torch.stack([SyntheticVideos("val", num_frames, 16, 0, count)[i]["video"] for i in range(count)])
    frames = to_uint8(clips)
    for i, video in enumerate(frames):
        (root / f"video_{i:03d}").mkdir(parents=True)
        for k, frame in enumerate(video):
            Image.fromarray(frame.permute(1, 2, 0).numpy()).save(root / f"video_{i:03d}" / f"{k:06d}.png")
    return frames


def test_evaluate_a_folder_of_frame_folders_matches_the_suite_and_writes_json_and_markdown(
    tmp_path, weights_dir, capsys
):
    frames = write_frame_folders(tmp_path / "fake", count=7, num_frames=5)
    cfg = compose_train(
        tmp_path,
        [*EVALUATE, f"videos_dir={tmp_path / 'fake'}", f"paths.weights_dir={weights_dir}"],
        config_name="evaluate",
    )
    record = evaluate(cfg)

    suite = MetricSuite({"fvd": FrechetDistance(I3DTorchScript(weights_dir=str(weights_dir)))}, num_frames=4)
    real = RealVideos(
        partial(SyntheticVideos, num_videos=8, seed=0), resolution=16, num_videos=8, num_workers=0
    )
    suite.prepare_reference(real, progress=False)
    suite.update(frames[:6])  # the first num_videos=6 of 7, sorted by name, their first 4 frames
    assert record["values"]["fvd"] == pytest.approx(suite.compute()["fvd"], rel=1e-6)  # other batching
    assert record["num_generated"] == 6 and record["num_real"] == 8 and record["num_frames"] == 4
    assert record["detectors"]["fvd"]["sha256"] == I3DTorchScript(weights_dir=str(weights_dir)).sha256
    assert record["detectors"]["is"]["sha256"] == C3DTorchScript(weights_dir=str(weights_dir)).sha256

    out = tmp_path / "run"
    assert json.loads((out / "metrics.json").read_text())["values"] == record["values"]
    table = (out / "metrics.md").read_text()
    for row in ("| fvd |", "| is |", "| is_std |", "i3d_torchscript.pt", "c3d_ucf101.pt"):
        assert row in table
    assert list(record["phase_seconds"]) == ["setup", "features", "statistics"], "no generation: a folder"
    assert f"{record['seconds']:.1f} s on 1 process(es): setup" in table
    assert "| fvd |" in capsys.readouterr().out
    assert record["references"]["fvd"].startswith(str(weights_dir / "real_stats"))


@pytest.mark.parametrize("real, stride", [(None, 6), ("stylegan_v", 3)])  # None: real=default, data's 6
def test_evaluate_against_a_dataset_on_disk_reads_its_root_at_the_protocol_stride(
    tmp_path, weights_dir, real, stride
):
    from tests.helpers.fake_videos import make_taichi

    make_taichi(tmp_path / "taichi")  # train: videos of 50, 54 and 48 frames
    write_frame_folders(tmp_path / "fake", count=6, num_frames=4)
    overrides = [
        *(o for o in EVALUATE if not o.startswith("data.dataset.")),  # synthetic-only keys
        "data=taichi",
        f"data.root={tmp_path / 'taichi'}",
        *([] if real is None else [f"real={real}"]),
        f"videos_dir={tmp_path / 'fake'}",
        f"paths.weights_dir={weights_dir}",
    ]
    record = evaluate(compose_train(tmp_path, overrides, config_name="evaluate"))
    assert record["num_real"] == 3 and record["values"]["fvd"] > 0
    assert Path(record["references"]["fvd"]).name.startswith(f"taichi-train-16px-4f-s{stride}-fvd")


@pytest.mark.parametrize(
    "overrides, stride",
    [
        (["data=taichi"], 6),  # real=default takes the data preset's real_frame_stride
        (["data=ffs"], 3),
        (["data=synthetic"], 3),
        (["data=taichi", "real=stylegan_v"], 3),  # an explicit real= wins
        (["data=ffs", "real=taichi"], 6),
        (["data=taichi", "real.frame_stride=4"], 4),  # and so does an explicit stride
    ],
)
def test_real_clip_stride_follows_the_data_preset_in_evaluate_and_the_metrics_callback(
    tmp_path, overrides, stride
):
    evaluate_cfg = compose_train(tmp_path, overrides, config_name="evaluate")
    callback = [o.replace("real=", "real@callbacks.metrics.real=") for o in overrides]
    callback = [o.replace("real.", "callbacks.metrics.real.") for o in callback]
    train_cfg = compose_train(tmp_path, ["callbacks=metrics", *callback])
    assert evaluate_cfg.real.frame_stride == stride
    assert train_cfg.callbacks.metrics.real.frame_stride == stride


def test_kid_is_reported_x1000_under_a_name_that_says_so(tmp_path, weights_dir):
    evaluate_cfg = compose_train(tmp_path, [], config_name="evaluate")
    assert list(evaluate_cfg.metrics.metrics) == ["fvd", "fid", "kid_x1000"]
    train_cfg = compose_train(tmp_path, ["callbacks=metrics", "metrics@callbacks.metrics.suite=kid"])
    assert list(train_cfg.callbacks.metrics.suite.metrics) == ["kid_x1000"]  # logged as val/kid_x1000

    detector = I3DTorchScript(weights_dir=str(weights_dir))  # a light stand-in for the InceptionV3
    kid_cfg = evaluate_cfg.metrics.metrics.kid_x1000
    scaled = instantiate(kid_cfg, detector=detector, subset_size=8, num_subsets=4)
    raw = KernelDistance(detector, num_subsets=4, subset_size=8, scale=1.0)
    generated, real = torch.randn(2, 12, detector.num_features, generator=torch.Generator().manual_seed(0))
    values = {}
    for name, metric in (("kid_x1000", scaled), ("kid", raw)):
        suite = MetricSuite({name: metric})  # the key names the values
        metric.set_reference({"features": real})
        metric.update(features=generated)
        values |= suite.compute()
    assert set(values) == {"kid_x1000", "kid_x1000_std", "kid", "kid_std"}
    assert values["kid_x1000"] == pytest.approx(1000 * values["kid"], rel=1e-9) and values["kid"] != 0
    assert values["kid_x1000_std"] == pytest.approx(1000 * values["kid_std"], rel=1e-9)


def test_evaluate_reads_mp4_files_at_a_stride_and_rejects_short_videos(tmp_path, weights_dir):
    clips = torch.stack([SyntheticVideos("val", 9, 16, 0, 6)[i]["video"] for i in range(6)])
    for i, clip in enumerate(clips):
        write_mp4(tmp_path / "fake" / f"{i:03d}.mp4", video_grid(clip[None], pad=0), fps=8)
    overrides = [*EVALUATE, f"videos_dir={tmp_path / 'fake'}", f"paths.weights_dir={weights_dir}"]
    record = evaluate(compose_train(tmp_path, [*overrides, "videos_stride=2"], config_name="evaluate"))
    assert record["num_generated"] == 6 and record["source"]["stride"] == 2 and record["values"]["fvd"] > 0

    with pytest.raises(ValueError, match="has 9 frames; the metrics need 10"):
        evaluate(compose_train(tmp_path, [*overrides, "videos_stride=3"], config_name="evaluate"))
    with pytest.raises(ValueError, match="exactly one of ckpt_path"):
        evaluate(
            compose_train(tmp_path, [*EVALUATE, f"paths.weights_dir={weights_dir}"], config_name="evaluate")
        )


def test_evaluate_a_checkpoint_samples_it_with_the_configured_sampler(tmp_path, tiny_overrides, weights_dir):
    from utils.run import train

    train(compose_train(tmp_path / "train", [*tiny_overrides, "trainer.max_steps=2"]))
    ckpt = tmp_path / "train" / "run" / "checkpoints" / "last.ckpt"
    overrides = [*EVALUATE, f"ckpt_path={ckpt}", f"paths.weights_dir={weights_dir}", "sampler=ddim"]
    record = evaluate(compose_train(tmp_path, [*overrides, "sampler.num_steps=2"], config_name="evaluate"))
    assert record["source"]["sampler"] == "ddim2-eta0.0" and record["source"]["ckpt_path"] == str(ckpt)
    assert record["num_generated"] == 6
    assert record["values"]["fvd"] > 0 and record["values"]["is"] >= 1
    phases = record["phase_seconds"]
    assert list(phases) == ["setup", "generate", "features", "statistics"], "where evaluate()'s time went"
    assert phases["generate"] > 0 and phases["features"] > 0
    assert sum(phases.values()) <= record["seconds"] + 0.5, "the phases are parts of the whole (rounded)"


def test_evaluate_py_runs_from_the_command_line(tmp_path, weights_dir):
    write_frame_folders(tmp_path / "fake", count=6, num_frames=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATTE_")} | {"HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *EVALUATE, f"videos_dir={tmp_path / 'fake'}"]
        + [f"paths.weights_dir={weights_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| fvd |" in result.stdout and "| is |" in result.stdout
    (run,) = (tmp_path / "logs" / "evaluate" / "runs").iterdir()
    assert set(json.loads((run / "metrics.json").read_text())["values"]) == {"fvd", "is", "is_std"}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["videos_dir", "ckpt_path"])
def test_evaluate_under_torchrun_on_two_processes_equals_one_process(
    tmp_path, tiny_overrides, weights_dir, source
):
    """torchrun --nproc_per_node=2 (gloo on CPU): each rank its share of generated videos and real clips."""
    if source == "videos_dir":
        write_frame_folders(tmp_path / "fake", count=7, num_frames=5)
        given = f"videos_dir={tmp_path / 'fake'}"
    else:
        from utils.run import train

        train(compose_train(tmp_path / "train", [*tiny_overrides, "trainer.max_steps=2"]))
        given = f"ckpt_path={tmp_path / 'train' / 'run' / 'checkpoints' / 'last.ckpt'}"
    overrides = [*EVALUATE, given, f"paths.weights_dir={weights_dir}", "real.cache_dir=null", "sampler=ddim"]
    overrides += ["sampler.num_steps=2", "batch_size=2"]  # 3 batches of generated videos: ranks get 1 and 2
    alone = evaluate(compose_train(tmp_path / "one", overrides, config_name="evaluate"))

    env = {k: v for k, v in os.environ.items() if not k.startswith("LATTE_")} | {"HOME": str(tmp_path)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*torchrun, str(ROOT / "evaluate.py"), *overrides, f"hydra.run.dir={tmp_path / 'two'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert record["processes"] == 2 and record["num_generated"] == alone["num_generated"] == 6
    for key, value in alone["values"].items():
        assert record["values"][key] == pytest.approx(value, rel=1e-5, abs=1e-8), key
