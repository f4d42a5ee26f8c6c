"""torch.distributed helpers: the entry points that run under torchrun (evaluate.py, the latent cache), and
what FSDP-sharded weights need (``is_sharded``, ``local``)."""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_torchrun(device: str) -> torch.device:
    """This process's device ("auto": a GPU if any); under torchrun (WORLD_SIZE > 1) join its group."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # one GPU per process, as torchrun numbers them
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return torch.device(device)


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if rank_and_world_size()[1] > 1:
        dist.barrier()


def sum_over_ranks(values: list[int], device: torch.device) -> list[int]:
    """Element-wise sums of integer counts over all ranks (the counts themselves on one process)."""
    if rank_and_world_size()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def leave_torchrun() -> None:
    """Leave the process group, all ranks together (exiting with it alive can abort in its threads)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` holds FSDP-sharded parameters (every rank must then call its forward together)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def gathered_dtype(module: object) -> torch.dtype:
    """The dtype a sharded ``module``'s forward gathers its weights in (``trainer.strategy.param_dtype``);
    fp32 for anything else."""
    return getattr(module, "gathered_dtype", None) or torch.float32


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor, the tensor itself otherwise."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
