"""Random number generators: stable seeds, seeded blocks, and the global RNG states a checkpoint carries.

A checkpoint holds one `rng_states()` per rank (plain tensors, ints and tuples, which `torch.load(...,
weights_only=True)` reads): torch's CPU generator, the rank's CUDA generator when it trains on a GPU, numpy's
and python's `random`.
"""

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from utils.distributed import rank_and_world_size


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from a stable hash of `parts` (the same in every process and Python run)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and python's global RNGs for a block, then restore their previous states.

    Only torch's CPU generator is seeded (`torch.manual_seed` would reseed every GPU's too): a block run in
    the training process leaves the GPU draws of the training step alone.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def rng_states(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states: torch CPU, CUDA of `device` (when it is a GPU), numpy, python."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),  # numpy's uint32 array as a tensor
            "pos": position,
            "gauss": (has_gauss, gauss),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_states` returned (the CUDA state only onto a GPU `device`)."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], *numpy["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def gather_rng_states(device: torch.device) -> list[dict[str, Any]]:
    """Every rank's `rng_states`, in rank order; all ranks call it together (as they save a checkpoint)."""
    state = rng_states(device)
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return [state]
    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, state)
    return states
