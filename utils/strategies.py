"""Multi-GPU strategies: data parallelism (``trainer=ddp``) and sharded data parallelism (``trainer=fsdp``).

``DataParallel`` is Lightning's DDP, which finds unused parameters for the GAN modules by itself.

``ShardedDataParallel`` is Lightning's ``ModelParallelStrategy`` with all ranks in one data-parallel mesh (no
tensor parallelism); ``VideoModule.configure_model`` calls ``shard_module``, which applies ``fully_shard``
to every transformer block, every transformer and every saved top-level submodule (backbone, EMA,
discriminator, VGT, teacher). The EMA is sharded like the weights it averages, so its update stays local.

Checkpoints are folders (``last.ckpt/``: one ``.distcp`` shard file per rank + ``meta.pt``) written into a
temporary folder renamed into place; they resume on any number of ranks and read as one ordinary
checkpoint file anywhere ``utils.files.load_file`` reads one (sample.py, evaluate.py, ``init=checkpoint``).
"""

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from utils.files import META, load_file

#################################################################################
#                                Data parallel                                  #
#################################################################################


class DataParallel(DDPStrategy):
    """Lightning's DDP (keyword arguments: ``torch.nn.parallel.DistributedDataParallel``'s).

    A module with manual optimization (AAPT, APLA: a generator and a critic) makes backward passes that each
    reach only one network's parameters, so DDP must look for the unused ones: that is switched on for it.

    ``split_compiled_graphs``: let dynamo cut compiled graphs at the gradient buckets' boundaries (its
    ``optimize_ddp``, set for the fit and restored after it), which a whole-model compile needs for its
    all-reduce to overlap the backward. ``LatteDiffusion`` compiles block by block: a bucket is sent as soon
    as the backward of its blocks' graphs ends, and cutting every block's graph again at 25 MB only costs
    fusion (compiled Latte-XL/2 on H100s: 84% scaling efficiency with cuts, 93.7% without on 2 GPUs;
    bench/RESULTS.md).
    """

    def __init__(self, *args, split_compiled_graphs: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.split_compiled_graphs = split_compiled_graphs
        self._optimize_ddp = torch._dynamo.config.optimize_ddp  # read again in setup; teardown restores it

    def setup(self, trainer) -> None:
        if not self.lightning_module.automatic_optimization:
            self._ddp_kwargs.setdefault("find_unused_parameters", True)
        self._optimize_ddp = torch._dynamo.config.optimize_ddp  # the process's own, back after the fit
        torch._dynamo.config.optimize_ddp = self.split_compiled_graphs  # read when each graph compiles
        super().setup(trainer)

    def teardown(self) -> None:
        super().teardown()
        torch._dynamo.config.optimize_ddp = self._optimize_ddp


#################################################################################
#                              Sharding a module                                #
#################################################################################


def shard_module(
    module: nn.Module,
    mesh: DeviceMesh,
    skip: tuple[str, ...] = (),
    reshard_after_forward: bool = True,
    param_dtype: torch.dtype | None = None,
) -> None:
    """``fully_shard`` every transformer block (each module of a ``blocks`` list), then each top-level child
    with parameters except those named in ``skip`` (frozen, stored apart: the autoencoder).

    A child's own ``forward`` gathers the rest of its weights (embeddings, heads, a discriminator's trunk
    outside its blocks) for everything it calls, ``features`` included; one block's are gathered at a time.
    ``param_dtype``: gather the blocks' weights cast to it (the shards, the optimizer and the EMA stay fp32;
    the gradients are reduced in fp32). Under autocast every matmul casts its weights to bf16 anyway, so
    this changes no arithmetic but the LayerNorm affines' rounding; the children's own weights (embeddings,
    the frozen position embeddings added to the fp32 residual stream, heads: under 1% of the bytes) stay fp32.
    The inputs are left as they come (a timestep must not round to bf16).
    """
    blocks_policy = MixedPrecisionPolicy(
        param_dtype=param_dtype,
        reduce_dtype=torch.float32 if param_dtype is not None else None,
        cast_forward_inputs=False,
    )
    for name, child in module.named_children():
        if name in skip or not any(True for _ in child.parameters()) or isinstance(child, FSDPModule):
            continue
        trained = any(p.requires_grad for p in child.parameters())  # the EMA, a teacher: no backward ever
        reshard = reshard_after_forward or not trained  # reshards what their forwards leave gathered
        blocks = [m.blocks for m in child.modules() if isinstance(getattr(m, "blocks", None), nn.ModuleList)]
        for block in [block for blocklist in blocks for block in blocklist]:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=blocks_policy)
        fully_shard(child, mesh=mesh, reshard_after_forward=reshard)
        child.gathered_dtype = param_dtype  # its blocks': a sampler runs it under autocast to that


#################################################################################
#                                   Strategy                                    #
#################################################################################


def aside(path: Path) -> Path:
    """Where a sharded checkpoint folder stays while its replacement is renamed in: ``.<name>.old``."""
    return path.with_name(f".{path.name}.old")


def remove(path: Path) -> None:
    """Delete a file or a folder, if there is one."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class ShardedDataParallel(ModelParallelStrategy):
    """FSDP2 across all ranks of all nodes, sharded checkpoints that resume on any number of ranks.

    ``reshard_after_forward``: free the gathered weights after each forward (ZeRO-3; False keeps them until
    the backward, ZeRO-2-like: less communication, more memory).
    ``param_dtype``: ``bfloat16`` gathers the transformer blocks' weights in bf16, half the bytes of fp32
    all-gathers. Under ``bf16-mixed`` autocast every matmul casts its weights to bf16 anyway, so the
    arithmetic is DDP's but for the rounding of LayerNorm affines (``shard_module``). Only for
    ``LatteDiffusion`` (AAPT and APLA sample outside autocast). Null (the default) gathers fp32.
    """

    def __init__(self, reshard_after_forward: bool = True, param_dtype: str | None = None, **kwargs: Any):
        kwargs = {"data_parallel_size": "auto", "tensor_parallel_size": 1, **kwargs}
        super().__init__(save_distributed_checkpoint=True, **kwargs)  # one file per rank: resumes anywhere
        if param_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"param_dtype is null, bfloat16 or float16, got {param_dtype!r}")
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype = getattr(torch, param_dtype) if param_dtype else None

    def setup(self, trainer) -> None:
        if self.param_dtype is not None and not str(trainer.precision).endswith("-mixed"):
            raise ValueError(
                f"trainer.strategy.param_dtype={self.param_dtype} needs a mixed precision (bf16-mixed) whose "
                f"autocast matches the gathered half-precision weights to the fp32 activations; got "
                f"trainer.precision={trainer.precision}"
            )
        module = trainer.lightning_module
        if self.param_dtype is not None and not module.half_gathers_ok:
            raise ValueError(
                f"trainer.strategy.param_dtype={self.param_dtype} is for LatteDiffusion: "
                f"{type(module).__name__} samples (rollouts, inversions, streams) outside autocast, where "
                "fp32 activations cannot meet half-precision weights; leave it null"
            )
        super().setup(trainer)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank: one data-parallel mesh
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any = None) -> None:
        """Write the shards and ``meta.pt`` to a temporary folder, then swap it in: a crash at any point keeps
        a whole checkpoint, under its name or, between the two renames, as ``.<name>.old`` (which
        ``utils.run.checkpoint_in_run_folder`` also finds)."""
        path = Path(self.broadcast(str(filepath)))
        tmp, old = path.with_name(f".{path.name}.tmp"), aside(path)
        if self.global_rank == 0:
            remove(tmp)
            remove(old)  # a swap that crashed while it removed the previous one
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()
        if self.global_rank == 0:
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            remove(old)
        self.barrier()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a sharded checkpoint folder into the sharded module and optimizers (any number of ranks).

        The ``unsaved`` submodules (the autoencoder) are not in the checkpoint and keep their weights.
        Returns the rest (loops, callbacks, RNG states) as Lightning expects.
        """
        path = Path(self.broadcast(str(checkpoint_path)))
        if not (path / META).is_file():
            raise ValueError(
                f"trainer=fsdp resumes from a sharded checkpoint folder; {path} is not one. To start from a "
                "single-file checkpoint use init=checkpoint init.path=<file> (weights only)"
            )
        skip = tuple(f"{name}." for name in self.lightning_module.unsaved)
        weights = {k: v for k, v in get_model_state_dict(self.model).items() if not k.startswith(skip)}
        dcp.load({"state_dict": weights}, checkpoint_id=path)
        set_model_state_dict(self.model, weights, options=StateDictOptions(strict=False))
        for i, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{i}": get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state[f"optimizer_{i}"])
        return torch.load(path / META, map_location="cpu", weights_only=True)


def export(path: str, out: str) -> None:
    """Write the sharded checkpoint folder ``path`` as one checkpoint file ``out`` (what DDP would write)."""
    torch.save(load_file(path, "a sharded checkpoint folder"), out)
    print(f"wrote {out}")


if __name__ == "__main__":  # python -m utils.strategies <sharded checkpoint folder> <out.ckpt>
    import sys

    export(*sys.argv[1:3])
