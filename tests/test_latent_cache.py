"""Tests for datamodules/cache_latents.py: the VAE latent cache, on real videos and a tiny random VAE."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from backbones.autoencoders import DiffusersAutoencoderKL
from datamodules import index
from datamodules.cache_latents import LatentCache, build_latent_cache, command_overrides
from datamodules.video import VideoDataModule
from datamodules.videos import DecodedVideos
from tests.conftest import ROOT, compose_train
from tests.helpers.fake_videos import make_ffs, touch_later, write_garbage, write_video
from tests.helpers.vae import TINY_SCALE, tiny_vae

pytestmark = pytest.mark.filterwarnings("ignore::datamodules.videos.SkippedVideoWarning")

SIZES = dict(num_frames=16, resolution=16)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder (config.json + safetensors) holding the tiny VAE."""
    folder = tmp_path_factory.mktemp("tiny_vae")
    tiny_vae().save_pretrained(folder)
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh fake FaceForensics folder (3 good videos of 48-60 frames, a corrupt and a short one)."""
    make_ffs(tmp_path / "ffs")
    return tmp_path / "ffs"


def autoencoder(vae_dir: Path, sample_posterior: bool = False) -> DiffusersAutoencoderKL:
    """The frozen wrapper around the tiny VAE, as `autoencoder=sd_vae` builds it."""
    return DiffusersAutoencoderKL(
        str(vae_dir), downsample=2, chunk_size=32, sample_posterior=sample_posterior
    )


def factory(**options) -> partial:
    """A FaceForensics dataset factory (train and val read the same folder), as the ffs preset builds it."""
    split_dirs = {"train": "train/videos", "val": "train/videos", "test": "train/videos"}
    return partial(DecodedVideos, partial(index.ffs_index, split_dirs=split_dirs), **options)


def cache(directory: Path, vae_dir: Path, **options) -> LatentCache:
    """A LatentCache for the tiny VAE (float32 unless asked otherwise: exact comparisons)."""
    return LatentCache(
        str(directory), autoencoder_path=str(vae_dir), **{"dtype": "float32", "device": "cpu"} | options
    )


def datamodule(root: Path, latents: LatentCache | None = None, **options) -> VideoDataModule:
    """A DataModule over the fake FaceForensics, from videos or (given `latents`) from the cache."""
    options = dict(batch_size=2, num_workers=0, pin_memory=False) | SIZES | options
    return VideoDataModule(
        factory(), root=str(root), use_latent_cache=latents is not None, latent_cache=latents, **options
    )


def build(root: Path, latents: LatentCache, vae_dir: Path, **options) -> dict[str, int]:
    """Build the cache for the train and val splits of a DataModule with `options`."""
    dm = datamodule(root, **options)
    return latents.build([dm.build("train"), dm.build("val")], autoencoder(vae_dir), progress=False)


#################################################################################
#                        Cache Equals Encoding on the Fly                       #
#################################################################################


@pytest.mark.parametrize("use_image_num", [0, 2])
def test_cached_batches_equal_encoding_on_the_fly(tmp_path, root, vae_dir, use_image_num):
    latents = cache(tmp_path / "cache", vae_dir, sample_posterior=False)
    assert build(root, latents, vae_dir) == {"encoded": 3, "cached": 0, "failed": 0}
    ae = autoencoder(vae_dir, sample_posterior=False)
    pixels = datamodule(root, use_image_num=use_image_num)
    cached = datamodule(root, latents, use_image_num=use_image_num)
    for dm in (pixels, cached):
        dm.setup("fit")
    for loader in ("train_dataloader", "val_dataloader"):
        for epoch in range(2):
            torch.manual_seed(epoch)  # the same shuffle, windows and flips for both
            expected = [ae.encode(batch["video"]) for batch in getattr(pixels, loader)()]
            torch.manual_seed(epoch)
            found = [batch for batch in getattr(cached, loader)()]
            assert len(found) == len(expected) > 0
            for batch, z in zip(found, expected):
                assert "video" not in batch, "cached batches carry latents, not pixels"
                frames = 16 + (use_image_num if loader == "train_dataloader" else 0)
                assert batch["latents"].shape == z.shape == (len(z), frames, 4, 8, 8)
                torch.testing.assert_close(batch["latents"], z, atol=3e-5, rtol=1e-5)  # fp32, other batching


def test_cached_validation_batches_are_the_same_in_worker_processes(tmp_path, root, vae_dir):
    latents = cache(tmp_path / "cache", vae_dir, sample_posterior=True)
    build(root, latents, vae_dir)
    batches = []
    for num_workers in (0, 1):
        dm = datamodule(root, latents, num_workers=num_workers, val_batch_size=3)
        dm.setup("validate")
        batches.append(next(iter(dm.val_dataloader()))["latents"])
    assert batches[0].shape == (3, 16, 4, 8, 8)
    assert torch.equal(batches[0], batches[1]), "seeded clips and noise, whichever process reads them"


def test_cache_holds_every_frame_plain_and_flipped(tmp_path, root, vae_dir):
    latents = cache(tmp_path / "cache", vae_dir, dtype="float16")
    build(root, latents, vae_dir)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    videos = manifest["videos"]
    assert sorted(videos) == ["train/videos/a.mp4", "train/videos/b.mp4", "train/videos/c.mp4"]
    assert [videos[name]["frames"] for name in sorted(videos)] == [60, 52, 48], "every frame of every video"
    shard = np.load(tmp_path / "cache" / manifest["shards"][0], mmap_mode="r")
    assert shard.shape == (160, 2, 2, 4, 8, 8) and shard.dtype == np.float16, (
        "(rows, views, moments, zc, h, w)"
    )
    assert not np.allclose(shard[:, 0], shard[:, 1], atol=1e-3), "the flipped view is a different image"
    assert manifest["settings"]["autoencoder"]["scaling_factor"] == TINY_SCALE
    no_flip = cache(tmp_path / "no_flip", vae_dir)
    dm = VideoDataModule(factory(flip=False), root=str(root), num_workers=0, **SIZES)
    no_flip.build([dm.build("train")], autoencoder(vae_dir), progress=False)
    manifest = json.loads((tmp_path / "no_flip" / "manifest.json").read_text())
    assert np.load(tmp_path / "no_flip" / manifest["shards"][0]).shape[1] == 1, "no flips: one view"


def test_float16_cache_is_close_to_encoding(tmp_path, root, vae_dir):
    latents = cache(tmp_path / "cache", vae_dir, sample_posterior=False, dtype="float16")
    build(root, latents, vae_dir)
    source = datamodule(root).build("val")
    clip = source[0]["video"]
    z = autoencoder(vae_dir).encode(clip[None])[0]
    torch.testing.assert_close(latents.dataset(source)[0]["latents"], z, atol=2e-2, rtol=1e-2)


def test_posterior_samples_are_mean_plus_scaled_noise(tmp_path, root, vae_dir):
    mean_cache = cache(tmp_path / "cache", vae_dir, sample_posterior=False)
    build(root, mean_cache, vae_dir)
    sampled = cache(tmp_path / "cache", vae_dir, sample_posterior=True)  # the same files, drawn from
    source = datamodule(root).build("val")
    means, draws = mean_cache.dataset(source), sampled.dataset(source)
    entry = means.entries[0]
    logvar = torch.from_numpy(np.load(tmp_path / "cache" / entry["shard"])[:, 0, 1]).float()
    std = torch.exp(0.5 * logvar).mean() * TINY_SCALE
    noise = (draws[0]["latents"] - means[0]["latents"]) / std
    assert 0.5 < noise.std() < 2 and noise.mean().abs() < 0.2, "z = mean + std * eps, eps ~ N(0, 1)"
    assert torch.equal(draws[0]["latents"], draws[0]["latents"]), "validation draws are seeded"
    train = sampled.dataset(datamodule(root).build("train"))
    assert not torch.equal(train[0]["latents"], train[0]["latents"]), "training draws are fresh"


#################################################################################
#                              Staleness and Errors                             #
#################################################################################


def test_a_changed_video_is_refused_then_reencoded_alone(tmp_path, root, vae_dir):
    latents = cache(tmp_path / "cache", vae_dir)
    build(root, latents, vae_dir)
    write_video(root / "train" / "videos" / "b.mp4", 2, 50)  # rewritten: new size and mtime
    touch_later(root / "train" / "videos" / "b.mp4")
    with pytest.raises(ValueError, match=r"(?s)1 of 3 videos .* changed .*b\.mp4.*cache_latents"):
        datamodule(root, latents).setup("fit")
    assert build(root, latents, vae_dir) == {"encoded": 1, "cached": 2, "failed": 0}
    dm = datamodule(root, latents)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["latents"].shape == (2, 16, 4, 8, 8)
    write_video(root / "train" / "videos" / "d.mp4", 5, 49)  # a new video
    with pytest.raises(ValueError, match="missing from"):
        datamodule(root, latents).setup("fit")
    assert build(root, latents, vae_dir)["encoded"] == 1


@pytest.mark.parametrize(
    "change, changed",
    [
        ({"resolution": 8}, "resolution"),
        ({"flip": False}, "flip"),
        ({"scaling_factor": 0.25}, "autoencoder"),
        ({"dtype": "float16"}, "dtype"),
        ({"autoencoder_dtype": "float16"}, "autoencoder_dtype"),
    ],
)
def test_changed_settings_make_the_cache_stale_and_rebuild_it(tmp_path, root, vae_dir, change, changed):
    build(root, cache(tmp_path / "cache", vae_dir), vae_dir)
    cache_options = {k: v for k, v in change.items() if k in ("scaling_factor", "dtype", "autoencoder_dtype")}
    latents = cache(tmp_path / "cache", vae_dir, **cache_options)
    dataset_options = {k: v for k, v in change.items() if k == "flip"}
    sizes = SIZES | {k: v for k, v in change.items() if k == "resolution"}
    dm = VideoDataModule(
        factory(**dataset_options),
        root=str(root),
        num_workers=0,
        use_latent_cache=True,
        latent_cache=latents,
        **sizes,
    )
    with pytest.raises(ValueError, match=f"stale: {changed} changed"):
        dm.setup("fit")
    source = VideoDataModule(factory(**dataset_options), root=str(root), num_workers=0, **sizes).build(
        "train"
    )
    ae = autoencoder(vae_dir)
    if "scaling_factor" in change:
        ae.scaling_factor = change["scaling_factor"]
    assert latents.build([source], ae, progress=False)["encoded"] == 3, "a new key re-encodes everything"
    assert len(latents.dataset(source)) == 3


def test_missing_cache_and_wrong_autoencoder_are_clear_errors(tmp_path, root, vae_dir):
    latents = cache(tmp_path / "nothing", vae_dir)
    with pytest.raises(FileNotFoundError, match=r"No latent cache .* python -m datamodules\.cache_latents"):
        datamodule(root, latents).setup("fit")
    other = tmp_path / "other_vae"
    tiny_vae().save_pretrained(other)
    source = datamodule(root).build("train")
    with pytest.raises(ValueError, match="must be one VAE"):
        latents.build([source], autoencoder(other), progress=False)
    from backbones.autoencoders import IdentityAutoencoder

    with pytest.raises(ValueError, match="diffusers VAE"):
        latents.build([source], IdentityAutoencoder(), progress=False)


def test_a_video_unreadable_while_caching_is_recorded_and_skipped_like_a_failed_read(tmp_path, root, vae_dir):
    latents = cache(tmp_path / "cache", vae_dir, sample_posterior=False)
    dm = datamodule(root)
    train = dm.build("train")
    write_garbage(root / "train" / "videos" / "a.mp4")  # broken after indexing, before encoding
    touch_later(root / "train" / "videos" / "a.mp4")
    fresh = datamodule(root).build("train")  # index again: a.mp4 is now skipped at index time
    assert len(fresh) == 2
    counts = latents.build([train], autoencoder(vae_dir), progress=False)
    assert counts == {"encoded": 2, "cached": 0, "failed": 1}
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert "error" in manifest["videos"]["train/videos/a.mp4"]


#################################################################################
#                                  The Command                                  #
#################################################################################


def command(root: Path, vae_dir: Path, directory: Path) -> list[str]:
    """Overrides of `python -m datamodules.cache_latents` for the fake FaceForensics and the tiny VAE."""
    return [
        "data=ffs",
        f"data.root={root}",
        "data.num_frames=16",
        "data.resolution=16",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        f"data.latent_cache.dir={directory}",
        "data.latent_cache.device=cpu",
        "autoencoder=sd_vae",
        f"autoencoder.path={vae_dir}",
        "autoencoder.downsample=2",
    ]


def test_command_composes_the_training_config_and_builds_the_cache(tmp_path, root, vae_dir):
    assert command_overrides(["data=ucf101"]) == ["~experiment", "task_name=cache_latents", "data=ucf101"]
    assert command_overrides(["experiment=latte_ffs", "task_name=x"]) == [
        "experiment=latte_ffs",
        "task_name=x",
    ]
    overrides = command(root, vae_dir, tmp_path / "cache")
    cfg = compose_train(tmp_path, ["~experiment", *overrides])
    assert build_latent_cache(cfg, progress=False) == {"encoded": 3, "cached": 0, "failed": 0}
    assert build_latent_cache(cfg, progress=False) == {"encoded": 0, "cached": 3, "failed": 0}, "up to date"
    dm = instantiate(cfg.data, use_latent_cache=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (2, 16, 4, 8, 8) and "video" not in batch


def test_command_line_runs_as_a_module(tmp_path, root, vae_dir):
    overrides = command(root, vae_dir, tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-m", "datamodules.cache_latents", *overrides, f"paths.root_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'encoded': 3" in result.stdout
    assert "Encoding videos" in result.stderr, "a progress bar while building"
    assert (tmp_path / "cache" / "manifest.json").is_file()
    assert list((tmp_path / "logs" / "cache_latents").glob("runs/*/.hydra/config.yaml")), "the run's config"


def test_training_from_the_cache_skips_the_encoder(tmp_path, root, vae_dir, monkeypatch):
    from utils.run import train

    overrides = command(root, vae_dir, tmp_path / "cache")
    build_latent_cache(compose_train(tmp_path, ["~experiment", *overrides]), progress=False)
    monkeypatch.setattr(
        DiffusersAutoencoderKL, "encode", lambda *a, **k: pytest.fail("encoded a cached batch")
    )
    tiny = [
        "backbone=latte_tiny",
        "backbone.patch_size=2",
        "trainer=cpu",
        "trainer.max_steps=2",
        "logger=csv",
    ]
    tiny += ["trainer.val_check_interval=2", "trainer.limit_val_batches=1", "data.dataset.probe_workers=1"]
    tiny += ["callbacks.video_sampler.num_videos=1", "sampler=ddim", "sampler.num_steps=2"]
    metrics = train(compose_train(tmp_path, ["~experiment", *overrides, *tiny, "data.use_latent_cache=true"]))
    assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["val/loss"])
    assert (tmp_path / "run" / "samples" / "step_0000002.gif").is_file(), "samples decode through the VAE"
    (csv,) = (tmp_path / "run" / "csv").rglob("metrics.csv")
    header, *rows = [line.split(",") for line in csv.read_text().splitlines()]
    skipped = {row[header.index("data/skipped_videos")] for row in rows} - {""}
    assert skipped == {"2.0"}, "the corrupt and the too-short video are counted and logged"


@pytest.mark.slow
def test_torchrun_builds_the_cache_on_two_ranks_like_one_process(tmp_path, root, vae_dir):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    overrides = command(root, vae_dir, tmp_path / "two")
    result = subprocess.run(
        [*torchrun, "-m", "datamodules.cache_latents", *overrides, f"paths.root_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'encoded': 3, 'cached': 0, 'failed': 0" in result.stdout, "counts summed over the ranks"
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert {shard.split("_")[1] for shard in manifest["shards"]} == {"r000", "r001"}, "one shard per rank"
    assert not list((tmp_path / "two").glob("manifest.rank*.json")), "the partial manifests are folded in"

    one = cache(tmp_path / "one", vae_dir, dtype="float16", sample_posterior=False)  # the command's dtype
    source = VideoDataModule(factory(), root=str(root), num_workers=0, **SIZES).build("train")
    one.build([source], autoencoder(vae_dir), progress=False)
    two = cache(tmp_path / "two", vae_dir, dtype="float16", sample_posterior=False)
    assert two.build([source], autoencoder(vae_dir), progress=False)["encoded"] == 0, (
        "complete after torchrun"
    )
    for i in range(len(source)):
        indices = list(range(16))
        torch.testing.assert_close(
            two.dataset(source).load(i, indices, False), one.dataset(source).load(i, indices, False)
        )


def test_an_interrupted_parallel_build_is_folded_in_and_not_encoded_again(tmp_path, root, vae_dir):
    latents = cache(tmp_path / "cache", vae_dir)
    source = VideoDataModule(factory(), root=str(root), num_workers=0, **SIZES).build("train")
    latents.build([source], autoencoder(vae_dir), progress=False)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    partial_manifest = {"key": manifest["key"], "shards": manifest["shards"], "videos": manifest["videos"]}
    (tmp_path / "cache" / "manifest.rank1.json").write_text(json.dumps({**partial_manifest, "rank": 1}))
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps({**manifest, "shards": [], "videos": {}}))
    counts = latents.build([source], autoencoder(vae_dir), progress=False)  # as if rank 1 had been killed
    assert counts == {"encoded": 0, "cached": 3, "failed": 0}, "rank 1's videos count as cached"
    assert not list((tmp_path / "cache").glob("manifest.rank*.json"))
    assert len(latents.dataset(source)) == 3
