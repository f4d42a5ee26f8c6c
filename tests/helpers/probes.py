"""Callbacks that record what a run saw, for tests that drive train.py through its config."""

import contextlib
import copy
import hashlib
import json
import os
import signal as signal_module
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch import Callback


class StartProbe(Callback):
    """Records the step count, EMA weights, all weights and optimizer states a run starts training from (in
    the class attribute ``seen``, and with a ``dirpath`` in ``start_step<n>_rank<r>.pt`` for a subprocess)."""

    seen: list[dict] = []

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath and Path(dirpath)

    def on_train_start(self, trainer, module) -> None:
        ema = {f"ema.{k}": v.detach().clone() for k, v in module.ema.state_dict().items()}
        weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        optimizers = [copy.deepcopy(optimizer.state_dict()) for optimizer in trainer.optimizers]
        start = {"step": trainer.global_step, "ema": ema, "weights": weights, "optim": optimizers}
        StartProbe.seen.append(start)
        if self.dirpath:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            torch.save(start, self.dirpath / f"start_step{trainer.global_step}_rank{trainer.global_rank}.pt")


class EndProbe(Callback):
    """Keeps the trained module (in the class attribute ``seen``), for a look inside it after train()."""

    seen: list = []

    def on_train_end(self, trainer, module) -> None:
        EndProbe.seen.append(module)


class RandomDrawProbe(Callback):
    """Writes ``rank<r>.json``: four draws of the global torch RNG as the first training batch starts."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            draws = torch.rand(4).tolist()  # what the step's t / noise / dropout draws start from
            (self.dirpath / f"rank{trainer.global_rank}.json").write_text(json.dumps(draws))


class GradNormProbe(Callback):
    """Records the backbone's gradient norm as the optimizer used it (after any clipping), per step."""

    seen: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # zeroed next step
        grads = [p.grad for p in module.backbone.parameters() if p.grad is not None]
        GradNormProbe.seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


class RestartProbe(Callback):
    """For a run that is signalled, killed and started again in its folder: writes ``start_step`` (the step
    training starts from) and, from step 3 on, ``running``; a run that starts past step 0 stops at once."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.dirpath.mkdir(parents=True, exist_ok=True)

    def on_train_start(self, trainer, module) -> None:
        (self.dirpath / "start_step").write_text(str(trainer.global_step))
        trainer.should_stop = trainer.global_step > 0  # the restarted run only has to show where it starts

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= 3:
            (self.dirpath / "running").touch()


class WeightsDigestProbe(Callback):
    """Writes ``rank<r>.json`` at the end of training: the step and a sha256 of every weight's bytes."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step, "node": trainer.node_rank, "sha256": digest.hexdigest()}
        (self.dirpath / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class SignalAtStep(Callback):
    """Sends ``signal`` from rank 0 to the run's process group (every rank, as a scheduler stopping a job
    does) once training reaches ``step``; a run started past ``step`` (the same command again) sends none."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step = step
        self.signum = getattr(signal_module, signal)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.killpg(os.getpgrp(), self.signum)


class ClipsProbe(Callback):
    """Appends to ``rank<r>.jsonl`` a line per training batch: the step and a sha256 of each clip in it."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        clips = [hashlib.sha256(clip.cpu().numpy().tobytes()).hexdigest() for clip in batch["video"]]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"rank{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps({"step": trainer.global_step, "clips": clips}) + "\n")


class HostReadProbe(Callback):
    """Counts, in ``steps`` training steps after ``skip``, every call from this project's code that reads a
    tensor's value on the host (``.item()``, ``.tolist()``, ``bool``, ``float``, ``int``, ``.numpy()``,
    ``.cpu()``), by its function (``path:function``, in the class attribute ``seen``). On a GPU each one
    makes the host wait for it: the CPU stand-in for bench/train_loop.py's census, which needs a GPU (and
    which also sees blocking copies and boolean masks, which this cannot)."""

    READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")
    seen: dict[str, int] = {}

    def __init__(self, skip: int = 3, steps: int = 3):
        self.skip, self.steps, self.started, self.block = skip, steps, 0, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.started == self.skip:
            self.block = HostReadProbe.counting()
            self.block.__enter__()
        elif self.started == self.skip + self.steps:
            self.stop()
        self.started += 1

    def on_train_end(self, trainer, module) -> None:
        self.stop()

    def stop(self) -> None:
        if self.block is not None:
            self.block.__exit__(None, None, None)
            self.block = None

    @staticmethod
    @contextlib.contextmanager
    def counting() -> Iterator[dict[str, int]]:
        """Count the host reads made inside the block into ``HostReadProbe.seen`` (cleared first)."""
        root, originals = Path(__file__).resolve().parents[2], {}
        HostReadProbe.seen.clear()

        def counted(read):
            def wrapper(tensor, *args, **kwargs):
                caller = sys._getframe(1).f_code  # the code that called the read
                path = Path(caller.co_filename).resolve()
                if root in path.parents and "site-packages" not in path.parts:  # ours, not a venv's in root
                    site = f"{path.relative_to(root)}:{caller.co_name}"
                    HostReadProbe.seen[site] = HostReadProbe.seen.get(site, 0) + 1
                return read(tensor, *args, **kwargs)

            return wrapper

        try:
            for name in HostReadProbe.READS:
                originals[name] = getattr(torch.Tensor, name)
                setattr(torch.Tensor, name, counted(originals[name]))
            yield HostReadProbe.seen
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
