"""trainer=ddp and trainer=fsdp on two CPU processes (gloo): FSDP2 trains every module as DDP does, its
sharded checkpoints resume on another number of processes and read as ordinary files; GAN modules run
under DDP. Plus the pieces that make sharding work: lock-step sampling, run folders holding folders."""

import copy
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.device_mesh import init_device_mesh

from diffusion.sampling import Sampler
from lightning_modules import AAPTGan, LatteDiffusion
from metrics import suite
from tests.conftest import ROOT, TINY, compose_train
from tests.test_aapt import AAPT_GAN
from tests.test_apla import APLA_RUN
from utils.files import load_file
from utils.run import checkpoint_in_run_folder
from utils.strategies import DataParallel, ShardedDataParallel, shard_module

CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2"]
MODULES = {  # tiny runs of the three modules, 4 steps with checkpoints at steps 2 and 4
    "latte": TINY,
    "aapt_gan": AAPT_GAN,
    "apla": [*APLA_RUN, "data.dataset.num_videos=2", "~callbacks.metrics", "sampler.precision=bf16"],
}
PER_RANK_BUFFERS = ("first_frames.", "video_latents", "video_label")  # data each rank kept: not weights


def train(tmp_path: Path, name: str, *overrides: str) -> Path:
    """Run train.py in a subprocess into ``tmp_path/name``; that run folder."""
    run = tmp_path / name
    command = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run


def assert_same_training(sharded: dict, replicated: dict, atol: float) -> None:
    """Same step, weights (EMA included) and optimizer states, up to float summation order."""
    assert sharded["global_step"] == replicated["global_step"]
    weights = {k: v for k, v in replicated["state_dict"].items() if not k.startswith(PER_RANK_BUFFERS)}
    assert weights.keys() <= sharded["state_dict"].keys()
    different = [k for k, v in weights.items() if not torch.allclose(sharded["state_dict"][k], v, atol=atol)]
    assert not different, f"FSDP and DDP trained different weights: {different[:5]}"
    assert len(sharded["optimizer_states"]) == len(replicated["optimizer_states"])
    for mine, theirs in zip(sharded["optimizer_states"], replicated["optimizer_states"]):
        assert mine["state"].keys() == theirs["state"].keys(), "optimizer states keyed by parameter position"
        for i, state in theirs["state"].items():
            for key, value in state.items():
                assert torch.allclose(mine["state"][i][key].float(), value.float(), atol=atol), (i, key)


#################################################################################
#                    Two processes: FSDP against DDP, resumes                   #
#################################################################################


@pytest.mark.slow
def test_fsdp_trains_latte_as_ddp_does_and_resumes_its_sharded_checkpoint_on_one_process(tmp_path):
    """FSDP ends on DDP's weights, EMA and Adam: eager, and compiled with weights gathered until the backward
    (ZeRO-2; the EMA, sampled every 2 steps, reshards anyway)."""
    ddp = train(tmp_path, "ddp", *TINY, "trainer=ddp", *CPU)
    fsdp = train(tmp_path, "fsdp", *TINY, "trainer=fsdp", *CPU)
    folder = fsdp / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    assert not list(folder.parent.glob(".*")), "no temporary folder stays behind"
    replicated = load_file(ddp / "checkpoints" / "last.ckpt", "a checkpoint")
    assert_same_training(load_file(folder, "a checkpoint"), replicated, 1e-5)
    zero2 = [
        "module.compile=true",
        "trainer.strategy.reshard_after_forward=false",
    ]  # + EMA sampled every 2 steps
    compiled = train(tmp_path, "compiled", *TINY, "trainer=fsdp", *CPU, *zero2)
    assert_same_training(load_file(compiled / "checkpoints" / "last.ckpt", "a checkpoint"), replicated, 1e-5)

    # the same command on one process, in the same folder: continues from the 2-process shards
    train(tmp_path, "fsdp", *TINY, "trainer=fsdp", *CPU[:2], "trainer.devices=1", "trainer.max_steps=6")
    resumed = load_file(folder, "a checkpoint")
    assert resumed["global_step"] == 6
    adam = resumed["optimizer_states"][0]["state"][0]
    assert int(adam["step"]) == 6, "the optimizer state of the 4 sharded steps was restored, not restarted"

    # a sharded folder is a checkpoint for sample.py, and one file for anything else
    sample = [sys.executable, str(ROOT / "sample.py"), f"ckpt_path={folder}", "num_videos=2", "batch_size=2"]
    sample += [f"hydra.run.dir={tmp_path / 'samples'}"]
    result = subprocess.run(sample, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "samples" / "videos").glob("*.mp4"))) == 2
    export = [sys.executable, "-m", "utils.strategies", str(folder), str(tmp_path / "one.ckpt")]
    subprocess.run(export, cwd=ROOT, check=True, capture_output=True)
    one = torch.load(tmp_path / "one.ckpt", weights_only=True)
    assert one["global_step"] == 6 and all(
        torch.equal(v, one["state_dict"][k]) for k, v in resumed["state_dict"].items()
    )


@pytest.mark.slow
@pytest.mark.parametrize("module", ["aapt_gan", "apla"])
def test_the_two_optimizer_modules_train_under_fsdp_as_under_ddp(tmp_path, module):
    """AAPT (generator rollout through a KV cache, a discriminator trunk) and APLA (`:q` gradient rows, a
    noise discriminator): both optimizers' states and all weights agree after 4 steps."""
    ddp = train(tmp_path, "ddp", *MODULES[module], "trainer=ddp", *CPU)
    fsdp = train(tmp_path, "fsdp", *MODULES[module], "trainer=fsdp", *CPU)
    replicated = load_file(ddp / "checkpoints" / "last.ckpt", "a checkpoint")
    assert len(replicated["optimizer_states"]) == 2
    assert_same_training(load_file(fsdp / "checkpoints" / "last.ckpt", "a checkpoint"), replicated, 1e-3)


#################################################################################
#                        What sharding needs, without it                        #
#################################################################################


class Kept:
    """A metric suite that counts the videos it is given."""

    device = torch.device("cpu")

    def __init__(self):
        self.videos = 0

    def update(self, videos: torch.Tensor) -> None:
        self.videos += len(videos)


def one_rank(monkeypatch, rank: int, ranks: int, videos: int, lockstep: bool) -> tuple[list[int], int, int]:
    """(the batch sizes sample() was called with, the videos kept, the share returned) of ``rank``."""
    calls, kept = [], Kept()
    monkeypatch.setattr(suite, "rank_and_world_size", lambda: (rank, ranks))
    sample = lambda n, generator: calls.append(n) or torch.zeros(n, 2, 3, 4, 4)  # noqa: E731
    share = suite.update_with_samples(kept, sample, videos, 2, progress=False, lockstep=lockstep)
    return calls, kept.videos, share


def test_ddp_finds_unused_parameters_of_gan_modules_and_leaves_compiled_block_graphs_uncut(
    monkeypatch, tmp_path
):
    """trainer=ddp builds DataParallel from its yaml; its setup chooses what DDP and dynamo need."""
    monkeypatch.setattr(DDPStrategy, "setup", lambda self, trainer: None)  # no process group here
    monkeypatch.setattr(DDPStrategy, "teardown", lambda self: None)
    with torch._dynamo.config.patch(optimize_ddp="python_reducer"):  # the process's own choice
        check_ddp_setup(monkeypatch, tmp_path)


def check_ddp_setup(monkeypatch, tmp_path) -> None:
    """With and without split_compiled_graphs, for a module with and without manual optimization."""
    for split, manual in [(None, True), ("true", False)]:
        cut = [] if split is None else [f"trainer.strategy.split_compiled_graphs={split}"]
        strategy = instantiate(compose_train(tmp_path, ["trainer=ddp", *cut]).trainer.strategy)
        assert isinstance(strategy, DataParallel)
        strategy._lightning_module = LatteDiffusion.__new__(LatteDiffusion)
        monkeypatch.setattr(LatteDiffusion, "automatic_optimization", not manual, raising=False)
        strategy.setup(None)
        assert torch._dynamo.config.optimize_ddp is (split == "true"), (
            "per-block graphs are not cut by default"
        )
        assert strategy._ddp_kwargs.get("find_unused_parameters", False) is manual
        strategy.teardown()
        assert torch._dynamo.config.optimize_ddp == "python_reducer", "restored after the fit"


def test_bf16_gathers_feed_the_blocks_bf16_weights_and_keep_fp32_shards_gradients_and_inputs(tmp_path):
    """trainer.strategy.param_dtype=bfloat16 (one rank): the blocks run on bf16 copies of the weights, the
    timestep and the fp32 residual stream come in as they are, the shards and their gradients stay fp32,
    the output and gradients are the fp32 model's under autocast; a fp32 sampler runs it under autocast."""
    cfg = compose_train(tmp_path, [*TINY, "trainer=fsdp", "trainer.strategy.param_dtype=bfloat16"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, ShardedDataParallel) and strategy.param_dtype is torch.bfloat16
    latte = SimpleNamespace(precision="bf16-mixed", lightning_module=LatteDiffusion.__new__(LatteDiffusion))
    with pytest.raises(ValueError, match="mixed precision"):
        strategy.setup(SimpleNamespace(**{**vars(latte), "precision": "32-true"}))
    with pytest.raises(ValueError, match="AAPTGan samples .* outside autocast"):
        strategy.setup(SimpleNamespace(**{**vars(latte), "lightning_module": AAPTGan.__new__(AAPTGan)}))
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        ShardedDataParallel(param_dtype="bf16")
    module = instantiate(cfg.module)
    with torch.no_grad():  # random weights: adaLN-Zero's zero init would make every output and gradient 0
        for p in module.backbone.parameters():
            p.normal_(0, 0.05)
    module.reset_ema()
    reference = copy.deepcopy(module.backbone)
    model = module.backbone
    x = torch.randn(2, model.num_frames, model.in_channels, model.input_size, model.input_size)
    t = torch.tensor([999.0, 3.0])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard_module(module, init_device_mesh("cpu", (1,)), skip=module.unsaved, param_dtype=torch.bfloat16)
        seen = []  # (the first block's weight dtype, its input's) when it runs

        def record(block, args):
            seen.append((next(block.parameters()).dtype, args[0].dtype))

        model.blocks[0].register_forward_pre_hook(record)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
            expected = reference(x, t)
        out.float().square().mean().backward()
        expected.float().square().mean().backward()
        assert seen == [(torch.bfloat16, torch.float32)], "bf16 weights meet the activations as they come"
        trained = [p for p in model.parameters() if p.requires_grad]
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trained)
        assert out.abs().mean() > 0.01, "the check below compares something"
        assert torch.allclose(out.float(), expected.float(), atol=1e-6), "autocast casts the weights alike"
        grads = zip(model.named_parameters(), reference.parameters())
        different = [
            n
            for (n, p), q in grads
            if p.requires_grad and not torch.allclose(p.grad.full_tensor(), q.grad, atol=1e-6)
        ]
        assert not different, f"gradients differ from autocast's: {different[:3]}"
        assert all(q.grad.abs().sum() > 0 for q in reference.blocks.parameters()), "every block weight learns"
        sampled = Sampler("ddim", num_steps=2, precision="fp32").inference_model(
            module.ema, torch.device("cpu")
        )
        assert sampled(x, t).dtype == torch.float32  # under autocast to bf16, its output fp32
    finally:
        dist.destroy_process_group()


def test_module_compile_compiles_each_backbone_block_once(tmp_path):
    """module.compile=true: every block compiled in place (its state-dict keys unchanged), the rest eager."""
    module = instantiate(compose_train(tmp_path, [*TINY, "module.compile=true"]).module)
    keys = sorted(module.state_dict())
    module.configure_model()
    compiled = [block._compiled_call_impl for block in module.backbone.blocks]
    assert all(compiled) and module.backbone._compiled_call_impl is None
    assert not any(block._compiled_call_impl for block in module.ema.blocks), "the EMA is only averaged"
    module.configure_model()  # again (a second fit): the same compiled blocks
    assert [block._compiled_call_impl for block in module.backbone.blocks] == compiled
    assert sorted(module.state_dict()) == keys


@pytest.mark.parametrize("videos, ranks", [(9, 2), (10, 3), (7, 4), (8, 2)])
def test_lockstep_sampling_calls_the_model_as_often_on_every_rank(monkeypatch, videos, ranks):
    """Batches of 2 over the ranks: in lockstep every rank calls sample() as often, and together they still
    keep exactly the videos asked for."""
    runs = [one_rank(monkeypatch, rank, ranks, videos, lockstep=True) for rank in range(ranks)]
    assert len({len(calls) for calls, _, _ in runs}) == 1, f"unequal calls per rank: {runs}"
    assert all(kept == share for _, kept, share in runs) and sum(kept for _, kept, _ in runs) == videos


def test_lockstep_drops_the_extra_batch_of_a_rank_with_fewer(monkeypatch):
    """5 batches over 2 ranks: rank 0 has 2 (rank 1 has 3); under lockstep it samples a third and drops it."""
    assert one_rank(monkeypatch, 0, 2, 9, lockstep=False) == ([2, 2], 4, 4)
    assert one_rank(monkeypatch, 0, 2, 9, lockstep=True) == ([2, 2, 2], 4, 4)


def test_a_sharded_checkpoint_swapped_out_when_a_crash_came_is_still_found(tmp_path):
    (tmp_path / "checkpoints" / ".last.ckpt.old").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".last.ckpt.old" / "meta.pt").write_bytes(b"x")
    assert checkpoint_in_run_folder(tmp_path) == str(tmp_path / "checkpoints" / ".last.ckpt.old")


def test_a_run_folder_resumes_from_its_newest_checkpoint_file_or_sharded_folder(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "last.ckpt").mkdir(parents=True)
    assert checkpoint_in_run_folder(tmp_path) is None, "a folder without meta.pt is no checkpoint"
    (checkpoints / "last.ckpt" / "meta.pt").write_bytes(b"x")
    os.utime(checkpoints / "last.ckpt" / "meta.pt", (1, 1))  # written long ago
    assert checkpoint_in_run_folder(tmp_path) == str(checkpoints / "last.ckpt")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    assert checkpoint_in_run_folder(tmp_path) == str(hpc), "the newer one"
