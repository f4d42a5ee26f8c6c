"""Exact resume: a run stopped half-way and resumed from its checkpoint repeats the uninterrupted run bit for
bit (losses, backbone, EMA, metrics; the data order across epochs, workers and DDP ranks; every RNG) and keeps
its loss-curve history. First, without a Trainer: the training loader's place and its per-item draws."""

import csv
import json
import random
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loops.progress import _BatchProgress
from torch.utils.data import Dataset, DistributedSampler

from datamodules import VideoDataModule
from datamodules.video import EpochSampler, ResumableLoader
from tests.conftest import ROOT, TINY, compose_train
from utils.run import train

#################################################################################
#                   The training loader: its place and its draws                #
#################################################################################


class RandomDraws(Dataset):
    """10 clips whose first pixels hold (index, torch.rand, np.random.rand, random.random) drawn when read."""

    def __init__(self, split: str, num_frames: int, resolution: int, num_classes: int):
        self.shape = (num_frames, 3, resolution, resolution)

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        video = torch.zeros(self.shape, dtype=torch.float64)
        video[0, 0, 0, :4] = torch.tensor([index, torch.rand(()).item(), np.random.rand(), random.random()])
        return {"video": video}


def draws(loader, batches: int | None = None) -> list[list[float]]:
    """(index, torch, numpy, python draw) of every item of the next `batches` batches (all: None)."""
    return [row for batch in islice(loader, batches) for row in batch["video"][:, 0, 0, 0, :4].tolist()]


def training_loader(num_workers: int):
    """A fresh DataModule's training loader over `RandomDraws`: 10 clips, batches of 3, 3 batches an epoch."""
    dm = VideoDataModule(
        RandomDraws, num_frames=2, resolution=8, batch_size=3, num_workers=num_workers, pin_memory=False
    )
    dm.setup("fit")
    return dm.train_dataloader()


def test_training_items_draw_from_seed_epoch_and_index_and_the_loader_resumes_its_place():
    loader = training_loader(num_workers=0)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    epochs = [draws(loader) for _ in range(3)]  # each finished pass starts the next epoch
    after = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    assert torch.equal(before[0], after[0]) and (before[1] == after[1]).all() and before[2] == after[2], (
        "reading training items must leave the training process's global RNGs alone"
    )
    assert [len(epoch) for epoch in epochs] == [9, 9, 9], "drop_last: 3 full batches an epoch"
    assert [row[0] for row in epochs[0]] != [row[0] for row in epochs[1]], "every epoch a new order"
    first = {row[0]: row[1:] for row in epochs[0]}
    assert all(first[row[0]] != row[1:] for row in epochs[1] if row[0] in first), "new draws every epoch"

    loader = training_loader(num_workers=0)
    loader.sampler.set_epoch(1)  # as Lightning does at each epoch start
    assert draws(loader, batches=1) == epochs[1][:3]
    assert loader.state_dict() == {"epoch": 1, "batches": 1, "clips": 3}

    resumed = training_loader(num_workers=1)  # a new process with a worker: the same items and draws
    resumed.load_state_dict({"epoch": 1, "batches": 1, "clips": 3})
    assert draws(resumed) == epochs[1][3:], "the resumed loader hands out the rest of the epoch"
    assert resumed.state_dict() == {"epoch": 1, "batches": 3, "clips": 9}
    resumed.sampler.set_epoch(2)
    assert draws(resumed) == epochs[2], "and then the same next epoch"


def rank_loaders(ranks: int, trainer=None) -> list[ResumableLoader]:
    """The training loaders of `ranks` DDP ranks over `RandomDraws` (10 clips) in batches of 2."""
    dataset = RandomDraws("train", num_frames=2, resolution=8, num_classes=0)
    samplers = [EpochSampler(dataset, num_replicas=ranks, rank=rank) for rank in range(ranks)]
    return [ResumableLoader(dataset, s, trainer, batch_size=2, drop_last=True) for s in samplers]


def test_a_resume_on_another_number_of_ranks_shares_out_the_rest_of_the_epoch():
    """2 ranks use a batch of 2 clips each; resumed on 1 or 3 ranks, the ranks get the 6 clips of the epoch's
    permutation not used yet, each once, with their draws; then the next epoch is sharded as usual."""
    (everything,) = rank_loaders(1)
    everything.sampler.set_epoch(1)
    epoch = {row[0]: row for row in draws(everything)}  # clip -> its draws in epoch 1, on any rank
    order = [index for _, index in everything.sampler]  # the epoch's permutation of the 10 clips
    before = rank_loaders(2)
    for rank, loader in enumerate(before):
        loader.sampler.set_epoch(1)
        shard = DistributedSampler(range(10), num_replicas=2, rank=rank, seed=0)
        shard.set_epoch(1)
        assert [index for _, index in loader.sampler] == list(shard) == order[rank::2], "interleaved shards"
    used = [row for loader in before for row in draws(loader, batches=1)]
    place = before[0].state_dict()
    assert place == before[1].state_dict() == {"epoch": 1, "batches": 1, "clips": 4}
    assert sorted(row[0] for row in used) == sorted(order[:4]), "k batches of b on n ranks: k*b*n first clips"

    for ranks in (1, 3):
        after = rank_loaders(ranks)
        for loader in after:
            loader.load_state_dict(place)
        rest = [row for loader in after for row in draws(loader)]
        assert sorted(row[0] for row in rest) == sorted(order[4:]), f"{ranks} ranks: not the epoch's rest"
        assert all(row == epoch[row[0]] for row in rest), "a clip's draws depend on its epoch, not its rank"
        assert all(loader.state_dict()["batches"] == len(loader) for loader in after), "the epoch is over"
        for loader, fresh in zip(after, rank_loaders(ranks)):
            fresh.sampler.set_epoch(2)
            assert draws(loader) == draws(fresh), "the next epoch is sharded as in a run that started here"

    (single,) = rank_loaders(1)
    single.load_state_dict(place)
    assert [row[0] for row in draws(single)] == order[4:], "one rank takes the rest in the epoch's order"
    older = rank_loaders(2)  # a place saved before "clips" counted batches: of this world size
    older[1].load_state_dict({"epoch": 1, "batches": 1})
    assert draws(older[1]) == draws(before[1]), "an older checkpoint resumes on its own world size"


def test_a_resume_on_another_number_of_ranks_moves_lightnings_batch_count_to_the_new_one():
    """Lightning ends an epoch by its count of the epoch's batches: after 1 batch on 1 rank (2 clips used),
    2 ranks have 2 batches of the 8 other clips left of the 2 an epoch now holds, so the count starts at 0."""
    (alone,) = rank_loaders(1)
    alone.sampler.set_epoch(1)
    draws(alone, batches=1)
    for rank in (0, 1):
        progress = _BatchProgress()
        progress.increment_by(1)  # as restored from the checkpoint: 1 batch of the epoch done
        epoch_loop = SimpleNamespace(batch_progress=progress)
        loader = rank_loaders(2, SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=epoch_loop)))[rank]
        loader.load_state_dict(alone.state_dict())
        assert len(loader) == 2 and len(draws(loader)) == 4, "2 batches of 2 clips are left on each rank"
        assert (progress.current.ready, progress.current.completed, progress.total.ready) == (0, 0, 1)


#################################################################################
#           Training runs: 4 steps, or 2 steps and a resume for 2 more          #
#################################################################################

# 6 clips in batches of 2: 3 steps an epoch, so 4 steps cross an epoch boundary and step 2 is mid-epoch.
# Class-conditional, so that label dropout draws too; validation and a checkpoint every 2 steps.
RUN = [*TINY, "data.dataset.num_videos=6", "data.num_classes=2", "~callbacks.video_sampler"]


def logged_losses(run: Path) -> list[tuple[int, float]]:
    """(step, train/loss) as the csv logger wrote them, every start of the run in turn (a version each)."""
    rows = [row for path in sorted((run / "csv").rglob("metrics.csv")) for row in csv.DictReader(path.open())]
    return [(int(row["step"]), float(row["train/loss"])) for row in rows if row.get("train/loss")]


def losses(run: Path) -> dict[int, float]:
    """{step: train/loss} of the run."""
    return dict(logged_losses(run))


def last_checkpoint(run: Path) -> dict:
    """The run's last checkpoint, read as plain tensors and containers (no pickled objects)."""
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_run(resumed: Path, full: Path, steps: range) -> None:
    """The resumed run logged the full run's losses at `steps` and ended on its weights and metrics."""
    expected, found = losses(full), losses(resumed)
    assert {s: found.get(s) for s in steps} == {s: expected[s] for s in steps}, "losses after resuming differ"
    weights, resumed_weights = last_checkpoint(full)["state_dict"], last_checkpoint(resumed)["state_dict"]
    assert sorted(weights) == sorted(resumed_weights)
    assert {k.split(".")[0] for k in weights} == {"backbone", "ema"}
    different = [k for k, v in weights.items() if not torch.equal(v, resumed_weights[k])]
    assert not different, f"final weights differ: {different[:5]}"
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (full, resumed)]
    assert metrics[0] == metrics[1] and "val/loss" in metrics[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run folders: "full" (4 steps, a DataLoader worker), "half" (2 steps), "resumed" (from half, to 4)."""
    root = tmp_path_factory.mktemp("resume")
    run = lambda name, *overrides: train(compose_train(root / name, [*RUN, *overrides]))  # noqa: E731
    run("full", "trainer.max_steps=4", "data.num_workers=1")
    run("half", "trainer.max_steps=2")
    half = f"ckpt_path={root}/half/run/checkpoints/last.ckpt"
    run("resumed", "trainer.max_steps=4", "data.num_workers=1", half)
    return {name: root / name / "run" for name in ("full", "half", "resumed")}


def test_a_run_resumed_half_way_repeats_the_uninterrupted_run_bit_for_bit(runs):
    full, half = losses(runs["full"]), losses(runs["half"])
    assert sorted(half) == [0, 1] and half == {s: full[s] for s in half}, "workers must not change the data"
    assert_same_run(runs["resumed"], runs["full"], steps=range(2, 4))


def test_the_loss_curve_of_a_resumed_run_covers_the_whole_run(runs):
    def history(run: Path) -> dict:
        (state,) = [v for k, v in last_checkpoint(run)["callbacks"].items() if k.startswith("LossCurve")]
        return dict(zip(state["steps"].tolist(), state["values"].tolist()))

    full = history(runs["full"])
    assert sorted(full) == [1, 2, 3, 4]
    assert history(runs["resumed"]) == full, "the resumed run's plot must hold the steps before the resume"
    assert (runs["resumed"] / "loss_curve.png").stat().st_size > 1000


# Two CPU processes (gloo), 8 clips: 4 a rank, 2 steps an epoch; validation and a checkpoint at steps 3 and 6.
DDP = [
    "data.dataset.num_videos=8",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "callbacks.model_checkpoint.every_n_train_steps=3",
]


@pytest.mark.slow
def test_ddp_ranks_resume_their_data_shards_and_random_streams(tmp_path):
    """6 steps, or a resume from the mid-epoch checkpoint of step 3 (validated right after it was written),
    end on the same losses and weights: each rank continues its shard of the data and its own random draws."""

    def run(name: str, *overrides: str) -> Path:
        command = [sys.executable, str(ROOT / "train.py"), *RUN, *DDP, *overrides]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return tmp_path / "logs" / "quickstart" / "runs" / name

    full = run("full", "hydra.run.dir=logs/quickstart/runs/full")
    step_3 = full / "checkpoints" / "step_0000003.ckpt"
    states = torch.load(step_3, map_location="cpu", weights_only=True)["rng_states"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"]), "one stream per rank"
    resumed = run("resumed", "hydra.run.dir=logs/quickstart/runs/resumed", f"ckpt_path={step_3}")
    assert sorted(losses(resumed)) == [3, 4, 5]
    assert_same_run(resumed, full, steps=range(3, 6))


#################################################################################
#        Pre-emption: a signal mid-epoch on 2 processes, the same command       #
#################################################################################

# 12 clips on 2 ranks in batches of 2: 3 steps an epoch. Every rank gets SIGTERM (the process group, as SLURM
# signals every task) as step 4 ends, a batch into the second epoch. Validated at step 6; no periodic saves.
PREEMPT = [
    *RUN,
    "data.dataset.num_videos=12",
    "trainer.max_steps=8",
    "trainer.val_check_interval=6",
    "callbacks.model_checkpoint.every_n_train_steps=1000",
    "+callbacks.clips._target_=tests.helpers.probes.ClipsProbe",
    "+callbacks.clips.dirpath=${paths.output_dir}/clips",
    "+callbacks.start._target_=tests.helpers.probes.StartProbe",
    "+callbacks.start.dirpath=${paths.output_dir}/starts",
]
TWO_PROCESSES = DDP[1:5]
STOP = ["+callbacks.stop._target_=tests.helpers.probes.SignalAtStep", "+callbacks.stop.step=4"]


def train_py(cwd: Path, name: str, *overrides: str) -> tuple[int, Path]:
    """`python train.py` in its own process group into the run folder `name`: the exit code and the folder."""
    command = [sys.executable, str(ROOT / "train.py"), *PREEMPT, *overrides, f"hydra.run.dir=runs/{name}"]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, start_new_session=True
    )
    assert result.returncode in (0, 143), result.stderr[-3000:]
    return result.returncode, cwd / "runs" / name


def batches(run: Path, rank: int) -> dict[int, list[str]]:
    """{step: the hashes of its clips} that rank `rank` of the run trained on, restarts included."""
    lines = (run / "clips" / f"rank{rank}.jsonl").read_text().splitlines()
    return {line["step"]: line["clips"] for line in map(json.loads, lines)}


def clips(run: Path, steps: range) -> list[str]:
    """The hashes of the clips all ranks of the run trained on at `steps`, sorted."""
    ranks = [batches(run, rank) for rank in range(len(list((run / "clips").iterdir())))]
    return sorted(clip for rank in ranks for step, batch in rank.items() if step in steps for clip in batch)


@pytest.fixture(scope="module")
def preempted(tmp_path_factory) -> dict[str, Path]:
    """Run folders: "full" (8 steps on 2 processes) and "stopped" (a copy of one stopped at step 4)."""
    root = tmp_path_factory.mktemp("preempt")
    code, full = train_py(root, "full", *TWO_PROCESSES)
    assert code == 0
    code, stopped = train_py(root, "stopped", *TWO_PROCESSES, *STOP)
    assert code == 143, "a run stopped by SIGTERM exits as SIGTERM would end it"
    assert last_checkpoint(stopped)["global_step"] == 4, "every rank saves and stops at the same step"
    return {"root": root, "full": full, "stopped": stopped.rename(root / "stopped")}


def restart(preempted: dict[str, Path], *overrides: str) -> Path:
    """The stopped run (a fresh copy) started again in its folder by the same command + `overrides`."""
    run = preempted["root"] / "runs" / "stopped"  # where it ran: the checkpoint callback's state names it
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(preempted["stopped"], run)
    code, run = train_py(preempted["root"], "stopped", *TWO_PROCESSES, *STOP, *overrides)
    assert code == 0
    return run


def adam_moments(checkpoint: dict) -> list[torch.Tensor]:
    """The first Adam moment of every parameter in the checkpoint's optimizer state."""
    return [state["exp_avg"] for state in checkpoint["optimizer_states"][0]["state"].values()]


@pytest.mark.slow
def test_a_preempted_multi_process_run_started_again_continues_as_if_never_stopped(preempted):
    """The same command again resumes from the run folder's checkpoint: losses after the restart, validation,
    final weights, EMA, Adam moments, step count and data order are the uninterrupted run's, bit for bit."""
    run = restart(preempted)
    steps = sorted(step for step, _ in logged_losses(run))
    assert steps == list(range(8)), "each step's loss once: before the stop and after the start"
    assert_same_run(run, preempted["full"], steps=range(8))
    full, resumed = last_checkpoint(preempted["full"]), last_checkpoint(run)
    assert full["global_step"] == resumed["global_step"] == 8
    moments = adam_moments(full), adam_moments(resumed)
    assert moments[0] and all(map(torch.equal, *moments)), "the optimizer state differs"
    assert all(batches(run, rank) == batches(preempted["full"], rank) for rank in (0, 1)), "the data order"


@pytest.mark.slow
def test_a_preempted_two_process_run_continues_on_one_with_its_state_and_the_rest_of_the_epoch(preempted):
    """Restarted on 1 process, the run continues from step 4 with the checkpoint's optimizer state and EMA,
    trains on the 8 clips of the epoch the 2 processes had not used, then starts the next epoch as 1 process
    does. Its losses differ from the 2-process run's: a step now averages 2 clips instead of 4."""
    stopped = last_checkpoint(preempted["stopped"])
    run = restart(preempted, "trainer.devices=1", "trainer.max_steps=9")
    assert last_checkpoint(run)["global_step"] == 9
    start = torch.load(run / "starts" / "start_step4_rank0.pt", weights_only=True)
    ema = {k: v for k, v in stopped["state_dict"].items() if k.startswith("ema.")}
    assert ema and all(torch.equal(start["ema"][k], v) for k, v in ema.items()), "the EMA started afresh"
    (optimizer,) = start["optim"]
    started = adam_moments({"optimizer_states": [optimizer]})
    assert started and all(map(torch.equal, started, adam_moments(stopped))), "the optimizer started afresh"

    full = preempted["full"]
    epoch = clips(full, range(3, 6))  # the second epoch's 12 clips (their draws depend on the epoch only)
    assert len(clips(run, range(4, 8))) == 8, "1 process: 4 steps of 2 clips finish the epoch"
    assert sorted(clips(run, range(3, 4)) + clips(run, range(4, 8))) == epoch, "each clip of the epoch once"
    first = [batches(full, rank)[6][0] for rank in (0, 1)]  # the third epoch's first 2 clips
    assert batches(run, 0)[8] == first, "then the next epoch, in its order, on 1 process"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_a_preempted_two_gpu_bf16_run_started_again_continues_within_bf16_noise(tmp_path):
    """On 2 GPUs (NCCL, bf16-mixed) the same stop and restart continue the uninterrupted run: the same step
    count, data order and validation step, losses within bf16 tolerance, and weights and Adam moments far
    closer to the uninterrupted run's than to where the run stood at the stop (bf16 kernels with atomics in
    their backward are not bit-reproducible, so the CPU test's bit-for-bit comparison does not apply)."""
    gpus = ["trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=2", "trainer.precision=bf16-mixed"]
    code, full = train_py(tmp_path, "full", *gpus)
    assert code == 0
    code, run = train_py(tmp_path, "stopped", *gpus, *STOP)
    stop = last_checkpoint(run)
    assert code == 143 and stop["global_step"] == 4, "both GPUs save and stop at step 4"
    assert train_py(tmp_path, "stopped", *gpus, *STOP)[0] == 0
    expected, found = losses(full), losses(run)
    steps = sorted(step for step, _ in logged_losses(run))
    assert steps == list(range(8)), "each step's loss once: before the stop and after the start"
    torch.testing.assert_close(found, expected, rtol=2e-2, atol=1e-3)  # bf16: 8 mantissa bits
    full, resumed = last_checkpoint(full), last_checkpoint(run)
    assert full["global_step"] == resumed["global_step"] == 8
    assert {k.split(".")[0] for k in full["state_dict"]} == {"backbone", "ema"}

    def gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return torch.stack([(x.float() - y.float()).norm() for x, y in zip(a, b, strict=True)]).norm().item()

    keys = sorted(full["state_dict"])
    weights = [[checkpoint["state_dict"][k] for k in keys] for checkpoint in (full, resumed, stop)]
    assert gap(weights[1], weights[0]) < 0.1 * gap(weights[2], weights[0]), "weights and EMA after restarting"
    moments = [adam_moments(checkpoint) for checkpoint in (full, resumed, stop)]
    assert gap(moments[1], moments[0]) < 0.1 * gap(moments[2], moments[0]), "the optimizer state"
    order = [batches(tmp_path / "runs" / name, rank) for name in ("full", "stopped") for rank in (0, 1)]
    assert order[:2] == order[2:], "the data order"
