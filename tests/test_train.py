"""End to end: train.py / sample.py through the real configs, resume, NaN stop, config errors, loggers."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from datamodules.synthetic import draw_palettes
from tests.conftest import ROOT, TINY, compose_train
from tests.helpers.probes import StartProbe
from tests.helpers.sample_checks import looks_like_the_data
from tests.helpers.wandb_offline import logged_config, logged_history
from utils.run import train
from utils.video import grid_videos, read_gif


def _run(script: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the entry points as a user would, from ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env |= {
        "HOME": str(cwd),
        "WANDB_SILENT": "true",
    }  # no wandb credentials: the logger must go offline itself
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # as every reader of checkpoints does


#################################################################################
#                 The quickstart, exactly as the README runs it                 #
#################################################################################


QUICKSTART_STEPS = 1200


@pytest.mark.slow
def test_quickstart_trains_halves_its_loss_and_samples_the_data(tmp_path):
    """... and its final samples show the data: background palettes and shapes that move (README's image).

    Its wall time is a figure for bench/RESULTS.md, not an assertion: it swings 2x with the machine's load.
    """
    result = _run("train.py", cwd=tmp_path, timeout=1800)  # a hang, not a slow machine
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "quickstart" / "runs").iterdir()

    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / f"step_{QUICKSTART_STEPS:07d}.ckpt").is_file()
    assert (run / "samples" / f"step_{QUICKSTART_STEPS:07d}.mp4").stat().st_size > 1000
    assert (run / "samples" / f"step_{QUICKSTART_STEPS:07d}.gif").stat().st_size > 1000
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert "wandb sync" in result.stdout + result.stderr, "offline wandb must say how to sync"

    history = logged_history(run / "wandb")  # wandb ran offline into the run folder
    losses = [float(v) for v in history["train/loss"]]
    assert len(losses) >= 25
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first / 2, f"loss went from {first:.3f} to {last:.3f}: not below half"
    for key in ("train/loss_mse", "train/loss_vlb", "val/loss", "samples/video", "train/loss_curve"):
        assert key in history, f"wandb run lacks {key}: {sorted(history)}"

    checkpoint = _load(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == QUICKSTART_STEPS
    assert not any(k.startswith("autoencoder.") for k in checkpoint["state_dict"])
    assert any(k.startswith("ema.") for k in checkpoint["state_dict"])

    # The 4 final samples, as the user sees them, against the data's palettes; uniform noise as the control.
    grid = read_gif(run / "samples" / f"step_{QUICKSTART_STEPS:07d}.gif")
    samples = grid_videos(grid, num_videos=4) / 255.0  # (4, f, h, w, 3)
    data = OmegaConf.load(run / ".hydra" / "config.yaml").data.dataset
    palettes = draw_palettes(data.seed, data.num_palettes).numpy()
    passed, found = looks_like_the_data(samples, palettes)
    assert passed, f"the final samples do not show the data's palettes and moving shapes: {found}"
    noise_passed, noise = looks_like_the_data(np.random.default_rng(0).random(samples.shape), palettes)
    assert not noise_passed and noise["on_a_palette"] == noise["with_a_shape"] == 0, noise

    sampled = _run(
        "sample.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "num_videos=2", cwd=tmp_path
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    (sample_run,) = (tmp_path / "logs" / "sample" / "runs").iterdir()
    assert (sample_run / "grid.mp4").stat().st_size > 1000
    assert sorted(p.name for p in (sample_run / "videos").iterdir()) == ["0000.mp4", "0001.mp4"]


#################################################################################
#                       In-process runs of the tiny config                      #
#################################################################################


def test_resume_continues_step_count_and_ema(tmp_path, tiny_overrides):
    first = compose_train(tmp_path / "a", tiny_overrides)
    train(first)
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    saved = _load(ckpt)
    assert saved["global_step"] == 4
    state = saved["state_dict"]
    ema = {k: v for k, v in state.items() if k.startswith("ema.")}
    lagging = [k for k, v in ema.items() if not torch.equal(v, state["backbone." + k[len("ema.") :]])]
    assert lagging, "after 4 steps the EMA must lag the live weights, or the test below proves nothing"

    StartProbe.seen.clear()
    resumed = compose_train(
        tmp_path / "b",
        [
            *tiny_overrides,
            "trainer.max_steps=6",
            f"ckpt_path={ckpt}",
            "+callbacks.probe._target_=tests.helpers.probes.StartProbe",
        ],
    )
    train(resumed)
    (start,) = StartProbe.seen
    assert start["step"] == 4
    assert all(torch.equal(start["ema"][k], v) for k, v in ema.items()), (
        "the EMA restarted instead of continuing"
    )
    assert _load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_a_run_started_again_in_its_folder_continues_from_its_last_checkpoint(tmp_path, tiny_overrides):
    train(compose_train(tmp_path, tiny_overrides))  # writes run/checkpoints/last.ckpt at step 4
    StartProbe.seen.clear()
    probe = "+callbacks.probe._target_=tests.helpers.probes.StartProbe"
    train(compose_train(tmp_path, [*tiny_overrides, "trainer.max_steps=6", probe]))  # the same run folder
    assert [start["step"] for start in StartProbe.seen] == [4], "a requeued job must not start over"
    assert _load(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 6


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_loss_and_keeps_its_state_dict_keys(tmp_path, tiny_overrides):
    from hydra.utils import instantiate

    cfg = compose_train(tmp_path, [*tiny_overrides, "module.compile=true"])
    module = instantiate(cfg.module)
    batch = {"video": torch.rand(2, 4, 3, 16, 16) * 2 - 1}
    keys = list(module.state_dict())
    eager = module.diffusion_losses(batch, generator=torch.Generator().manual_seed(0))["loss"]
    module.configure_model()  # what the Trainer calls before fitting
    assert all(b._compiled_call_impl for b in module.backbone.blocks), "module.compile=true did not compile"
    compiled = module.diffusion_losses(batch, generator=torch.Generator().manual_seed(0))["loss"]
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert list(module.state_dict()) == keys, "compiling must not rename checkpoint keys (_orig_mod.)"


def test_compile_mode_reaches_every_blocks_torch_compile_and_bad_modes_fail_by_name(
    tmp_path, tiny_overrides, monkeypatch
):
    """module.compile_mode is torch.compile's mode for each block; an unknown mode, or one without
    module.compile=true, fails at construction naming the key."""
    from hydra.utils import instantiate

    modes = []

    def recording_compile(fn, *args, mode=None, **kwargs):
        modes.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    tuned = ["module.compile=true", "module.compile_mode=max-autotune-no-cudagraphs"]
    module = instantiate(compose_train(tmp_path, [*tiny_overrides, *tuned]).module)
    module.configure_model()
    assert modes == ["max-autotune-no-cudagraphs"] * len(module.backbone.blocks)
    for bad in (["module.compile=true", "module.compile_mode=fastest"], ["module.compile_mode=default"]):
        with pytest.raises(Exception, match="module.compile_mode"):
            instantiate(compose_train(tmp_path, [*tiny_overrides, *bad]).module)


def test_gradient_clipping_starts_at_start_clip_iter(tmp_path, tiny_overrides):
    from tests.helpers.probes import GradNormProbe

    GradNormProbe.seen.clear()
    overrides = [
        "trainer.gradient_clip_val=1e-3",
        "module.start_clip_iter=2",
        "+callbacks.probe._target_=tests.helpers.probes.GradNormProbe",
    ]
    train(compose_train(tmp_path, [*tiny_overrides, *overrides]))
    norms = GradNormProbe.seen
    assert len(norms) == 4 and min(norms[:2]) > 1e-2, f"no clipping before step 2 (Latte): {norms}"
    assert max(norms[2:]) == pytest.approx(1e-3, rel=1e-3), f"clipped to 1e-3 from step 2: {norms}"


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, tiny_overrides):
    cfg = compose_train(
        tmp_path,
        [
            *tiny_overrides,
            "trainer.max_steps=10",
            "backbone._target_=tests.helpers.nan_backbone.NaNAfter",
            "+backbone.nan_after=3",
        ],
    )
    with pytest.raises(
        FloatingPointError, match=r"train/loss is nan at step 3.*Last good checkpoint: .*last\.ckpt"
    ):
        train(cfg)
    last = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_once_the_nan_guard_has_fired_no_later_save_writes_the_weights(tmp_path, tiny_overrides):
    """Lightning's save_on_exception saves after the guard's error: the guard refuses that save too."""
    nan_at_step_3 = ["backbone._target_=tests.helpers.nan_backbone.NaNAfter", "+backbone.nan_after=3"]
    overrides = [*tiny_overrides, "trainer.max_steps=10"]
    overrides += ["+callbacks.model_checkpoint.save_on_exception=true"]
    with pytest.warns(UserWarning, match="not saved: train/loss is nan at step 3"):
        with pytest.raises(FloatingPointError, match="train/loss is nan at step 3"):
            train(compose_train(tmp_path, [*overrides, *nan_at_step_3]))
    for path in (tmp_path / "run").rglob("*.ckpt"):
        state = _load(path)
        finite = all(torch.isfinite(v).all() for v in state["state_dict"].values())
        assert state["global_step"] <= 3 and finite, path


def test_a_nan_loss_at_the_last_step_stops_the_final_checkpoint_too(tmp_path, tiny_overrides):
    """The NaN guard reads a loss a step late (no host wait per step): a NaN at the last step is caught before
    the final checkpoint (RunCheckpoint, at the end of training) is written."""
    nan_at_step_3 = ["backbone._target_=tests.helpers.nan_backbone.NaNAfter", "+backbone.nan_after=3"]
    overrides = [*tiny_overrides, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=100"]
    message = r"train/loss is nan at step 3; stopped at step 4.*none written"
    with pytest.raises(FloatingPointError, match=message):
        train(compose_train(tmp_path, [*overrides, *nan_at_step_3]))
    assert not list((tmp_path / "run").rglob("*.ckpt")), "no checkpoint holds the weights the NaN updated"


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("backbone.size=XXL", "backbone", "size"),
        ("data.resolution=18", "backbone", "patch_size"),
        ("module.ema_decay=1.5", "module", "ema_decay"),
    ],
)
def test_bad_config_value_fails_at_start_naming_the_key(tmp_path, tiny_overrides, override, key, words):
    cfg = compose_train(tmp_path, [*tiny_overrides, override])
    with pytest.raises(InstantiationException) as error:
        train(cfg)
    message = str(error.value)
    assert f"full_key: {key}" in message or f"full_key: module.{key}" in message, message
    assert words in message, message
    assert not (tmp_path / "run" / "checkpoints").exists(), "the run must fail before training starts"


def test_csv_and_tensorboard_loggers_record_the_loss(tmp_path, tiny_overrides):
    cfg = compose_train(tmp_path, [*tiny_overrides, "logger=[csv,tensorboard]"])
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" in metrics
    (csv,) = (tmp_path / "run" / "csv").rglob("metrics.csv")
    assert "train/loss" in csv.read_text().splitlines()[0]
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))


def test_wandb_offline_run_logs_losses_config_and_videos(tmp_path, tiny_overrides):
    cfg = compose_train(tmp_path, [*tiny_overrides, "logger=wandb", "tags=[test]"])
    train(cfg)
    history = logged_history(tmp_path / "run" / "wandb")
    assert {"train/loss", "train/loss_vlb", "val/loss", "samples/video", "trainer/global_step"} <= set(
        history
    )
    assert all(video["_type"] == '"videos"' for video in history["samples/video"])
    config = json.loads(logged_config(tmp_path / "run" / "wandb")["config"])
    assert config["backbone"]["_target_"] == "backbones.Latte", "the resolved Hydra config must reach wandb"
    assert config["tags"] == ["test"]


def test_checkpoint_holds_the_resolved_config(tmp_path, tiny_overrides):
    train(compose_train(tmp_path, tiny_overrides))
    config = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]
    assert config["backbone"]["_target_"] == "backbones.Latte"
    assert json.dumps(config)  # plain containers, no OmegaConf nodes


def test_class_conditional_dit_init_training_samples_with_guidance_and_without_the_dit_file(
    tmp_path, tiny_overrides
):
    from tests.test_latte_axes import fake_dit
    from utils.run import sample

    dit = tmp_path / "DiT-XL-2-256x256.pt"
    torch.save(fake_dit(), dit)
    overrides = [
        "data.num_classes=4",
        "sampler.cfg_scale=4.0",
        "init=imagenet_dit",
        f"paths.weights_dir={tmp_path}",
    ]
    train(compose_train(tmp_path, [*tiny_overrides, *overrides]))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = _load(ckpt)["state_dict"]
    assert state["backbone.y_embedder.embedding_table.weight"].shape == (5, 128), "4 classes + the null class"
    assert (tmp_path / "run" / "samples" / "step_0000004.gif").is_file(), "guided sampling must run"

    dit.unlink()  # sampling a checkpoint must not need the DiT file its training started from
    sampling = ["sampler=ddim", "sampler.num_steps=2", "num_videos=2", f"ckpt_path={ckpt}"]
    with pytest.warns(UserWarning, match="pass sampler.cfg_scale=4.0"):
        written = sample(compose_train(tmp_path / "s", sampling, config_name="sample"))
    assert (tmp_path / "s" / "run" / "grid.mp4") in written


def test_sample_py_reads_an_official_latte_file(tmp_path):
    from backbones import Latte
    from tests.conftest import compose_train as compose
    from utils.run import sample

    torch.manual_seed(0)
    official = Latte(size="tiny", patch_size=4, input_size=16, in_channels=3, num_frames=4, num_classes=5)
    for p in official.parameters():  # non-zero weights, so the samples depend on them
        p.data.normal_(0, 0.02)
    torch.save({"ema": official.state_dict()}, tmp_path / "ucf101.pt")
    overrides = [
        f"ckpt_path={tmp_path / 'ucf101.pt'}",
        "official.model=Latte-tiny/4",
        "official.input_size=16",
        "official.num_frames=4",
        "official.in_channels=3",
        "autoencoder=identity",
        "sampler=ddim",
        "sampler.num_steps=3",
        "sampler.cfg_scale=7.0",
        "num_videos=3",
        "batch_size=2",
    ]
    written = sample(compose(tmp_path, overrides, config_name="sample"))
    names = sorted(p.relative_to(tmp_path / "run").as_posix() for p in written)
    assert names == ["grid.gif", "grid.mp4", "videos/0000.mp4", "videos/0001.mp4", "videos/0002.mp4"]
    assert all(p.stat().st_size > 500 for p in written)


def test_joint_training_class_conditional_end_to_end(tmp_path, tiny_overrides):
    cfg = compose_train(tmp_path, [*tiny_overrides, "data.num_classes=4", "data.use_image_num=3"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "run" / "samples" / "step_0000004.gif").is_file(), "sampling stays video-only"


@pytest.mark.parametrize("prior", ["mixed", "progressive"])
def test_noise_prior_reaches_training_and_every_sampling_step(tmp_path, tiny_overrides, prior, monkeypatch):
    from diffusion import noise_priors

    cls = {"mixed": noise_priors.MixedNoise, "progressive": noise_priors.ProgressiveNoise}[prior]
    shapes, draw = [], cls.__call__
    monkeypatch.setattr(
        cls, "__call__", lambda self, shape, **kw: shapes.append(tuple(shape)) or draw(self, shape, **kw)
    )
    overrides = [
        f"noise_prior={prior}",
        "sampler=ddpm",
        "trainer.max_steps=2",
        "callbacks.video_sampler.num_videos=3",
    ]
    train(compose_train(tmp_path, [*tiny_overrides, *overrides]))
    assert shapes.count((2, 4, 3, 16, 16)) == 3, "2 training steps + 1 validation batch draw from the prior"
    assert shapes.count((3, 4, 3, 16, 16)) == 5, "sampling: the initial noise + each of the 4 DDPM steps"


@pytest.mark.slow
def test_ddp_ranks_draw_their_own_timesteps_and_noise(tmp_path):
    """Two CPU processes through Lightning's DDP launcher: one init, but each rank its own random draws."""
    draws = tmp_path / "draws"
    result = _run(
        "train.py",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "+callbacks.probe._target_=tests.helpers.probes.RandomDrawProbe",
        f"+callbacks.probe.dirpath={draws}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((draws / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 != rank1, "every DDP rank drew the same t and noise: the effective batch is one rank's"
    (run,) = (tmp_path / "logs" / "quickstart" / "runs").iterdir()
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 4


def _wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    """Poll until ``path`` exists; fail if ``process`` ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"train.py ended early: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"{path.name} did not appear in {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_slurm_requeue_signal_saves_requeues_and_the_requeued_job_resumes_in_its_folder(tmp_path):
    """As sbatch --signal=SIGUSR1@90 --requeue: Lightning checkpoints and calls scontrol (a fake one here);
    the requeued job (same command, same job id) finds its folder and continues from that checkpoint."""
    fake_bin, marks = tmp_path / "bin", tmp_path / "marks"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (fake_bin / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env |= {"HOME": str(tmp_path), "PATH": f"{fake_bin}:{env['PATH']}", "SLURM_JOB_ID": "4242"}
    env |= {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "latte", "SLURM_NODELIST": "localhost"}
    env |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    never = "1000000"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *TINY,
        f"trainer.max_steps={never}",
        f"trainer.val_check_interval={never}",
        f"callbacks.model_checkpoint.every_n_train_steps={never}",
        f"callbacks.video_sampler.every_n_steps={never}",
        "+callbacks.probe._target_=tests.helpers.probes.RestartProbe",
        f"+callbacks.probe.dirpath={marks}",
    ]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marks / "running", first, timeout=120)
        first.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit or a preemption
        _wait_for(tmp_path / "scontrol.log", first, timeout=60)
    finally:
        first.kill()
        first.communicate()
    run = tmp_path / "logs" / "quickstart" / "runs" / "slurm-4242"  # named by the job, not the clock
    (saved,) = run.glob("hpc_ckpt_*.ckpt")
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    step = _load(saved)["global_step"]
    assert step >= 3

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert int((marks / "start_step").read_text()) == step, "the requeued job must continue, not restart"
    assert [p.name for p in (tmp_path / "logs" / "quickstart" / "runs").iterdir()] == ["slurm-4242"]


def test_ddp_trainer_takes_the_node_count_of_the_slurm_or_torchrun_job(tmp_path, monkeypatch):
    for name in ("SLURM_NNODES", "GROUP_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert compose_train(tmp_path, ["trainer=ddp"]).trainer.num_nodes == 1
    monkeypatch.setenv("GROUP_WORLD_SIZE", "3")  # torchrun --nnodes=3
    assert compose_train(tmp_path, ["trainer=ddp"]).trainer.num_nodes == 3
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert compose_train(tmp_path, ["trainer=ddp"]).trainer.num_nodes == 2


@pytest.mark.slow
def test_two_nodes_under_torchrun_train_the_same_weights_into_one_run_folder(tmp_path):
    """Two "nodes" on one host (torchrun --nnodes=2 --nproc-per-node=1, c10d rendezvous, gloo): equal weights
    on both after training; one run folder (named by the rendezvous id), one checkpoint set, one wandb run."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    torchrun += ["--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", "--rdzv-id=twonodes"]
    args = [o for o in TINY if o != "logger=csv"] + ["logger=wandb", "trainer=ddp", "trainer.accelerator=cpu"]
    args += ["trainer.devices=1", "trainer.precision=32-true"]
    args += ["+callbacks.digest._target_=tests.helpers.probes.WeightsDigestProbe"]
    args += [f"+callbacks.digest.dirpath={tmp_path / 'digests'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_")) and k != "NETRC"}
    env |= {"HOME": str(tmp_path), "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    nodes = [
        subprocess.Popen(
            [*torchrun, str(ROOT / "train.py"), *args],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    records = [json.loads((tmp_path / "digests" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["node"] for r in records) == [0, 1], "each node ran one rank"
    assert records[0]["step"] == records[1]["step"] == 4
    assert records[0]["sha256"] == records[1]["sha256"], "the two nodes ended with different weights"
    (run,) = (tmp_path / "logs" / "quickstart" / "runs").iterdir()
    assert run.name == "torchrun-twonodes", "every process names the run folder by the rendezvous id"
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert len(list(run.glob("wandb/offline-run-*"))) == 1, "one wandb run, written by rank 0"
