"""Reading the files users hand the framework (checkpoints, official Latte files, DiT and detector weights)
without running code from them, and with one-line errors that name the file.

``load_file`` is ``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only, so a
file from someone else cannot run code when it is sampled, evaluated or resumed from. No Lightning here:
the metrics read their weights without importing the training stack.
"""

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

META = "meta.pt"  # the non-tensor part of a sharded checkpoint folder (Lightning's name)


def load_file(path: str | os.PathLike, what: str) -> dict:
    """The dict that ``torch.save`` wrote to ``path``, read on the CPU without running code from the file; a
    sharded checkpoint folder reads as the file a single process would have written.

    ``what`` names the expected content in errors: "<path> is not <what> (<cause>)", one line.
    """
    path = Path(path)
    if (path / META).is_file():  # a sharded checkpoint folder (trainer=fsdp)
        return read_sharded_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected {what})")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ... by the damage
        cause = load_error_cause(error)  # not torch's text: it advises weights_only=False (running it)
        raise ValueError(f"{path} is not {what} ({cause})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not {what} (it holds a {type(loaded).__name__}, not a dict)")
    return loaded


def read_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """A sharded checkpoint folder (``.distcp`` shards + ``meta.pt``) as one checkpoint; no process group.

    Optimizer states come keyed by parameter position, as ``torch.optim`` saves them (FSDP keys them by
    name), so the result also resumes a run without sharding.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    tensors = {}  # filled from the shards' metadata, in memory: torch's dcp_to_torch_save minus its file
    reader, planner = FileSystemReader(path), _EmptyStateDictLoadPlanner()
    _load_state_dict(tensors, storage_reader=reader, planner=planner, no_dist=True)
    checkpoint = torch.load(path / META, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = tensors.pop("state_dict")
    count = sum(key.startswith("optimizer_") for key in tensors)
    checkpoint["optimizer_states"] = [_by_position(tensors[f"optimizer_{i}"]) for i in range(count)]
    return checkpoint


def _by_position(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter names (FSDP's) keyed by position instead (``torch.optim``'s)."""
    names = [name for group in state["param_groups"] for name in group["params"]]
    position = {name: i for i, name in enumerate(names)}
    groups = [{**group, "params": [position[n] for n in group["params"]]} for group in state["param_groups"]]
    return {"state": {position[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def load_error_cause(error: BaseException) -> str:
    """One line on why torch could not read a file (torch's own messages run over many lines)."""
    text = str(error)
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if code:  # a pickled object whose rebuilding would call `code`: weights_only refuses before calling it
        return f"it holds a pickled {code.group(1)}, which could run code when loaded: refused, nothing ran"
    if "Weights only load failed" in text:  # not a pickle torch can read: keep the detail, drop the advice
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        details = [line.strip() for line in text.splitlines() if line.strip()]
        details = [line for line in details if not line.startswith(boilerplate)]
        return f"not a file of torch.save: {details[0] if details else 'unreadable pickle'}"
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first = lines[0] if lines[0].endswith(":") else lines[0].split(". ")[0]
    if first.endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for X:" + what is wrong
        first = f"{first} {lines[1]}"
    return f"{type(error).__name__}: {first if len(first) <= 200 else first[:197] + '...'}"


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Re-raise torch's errors while reading ``path`` (a broken TorchScript archive, tensors that do not fit
    the network) as one line naming the file: "<path> is not <what> (<cause>)"."""
    try:
        yield
    except RuntimeError as error:
        raise ValueError(f"{path} is not {what} ({load_error_cause(error)})") from error
