"""A PNG of the training loss curve, written at the end of training (also when it stops on an error)."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn


class LossCurve(Callback):
    """Records ``key`` after every training step and plots it (raw and smoothed) into ``path``; the history
    is kept in checkpoints, so the plot of a resumed run covers the whole run.

    The values stay on the device and are read in batches of ``read_every`` steps: reading each step's would
    make the host wait for the GPU every step (bench/RESULTS.md, "Host waits").
    """

    def __init__(self, path: str, key: str = "train/loss", smoothing: int = 20, read_every: int = 100):
        self.path = Path(path)
        self.key = key
        self.smoothing = smoothing
        self.read_every = read_every
        self.steps: list[int] = []
        self._values: list[float] = []
        self._unread: list[torch.Tensor] = []  # the latest values, on the device

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is not None:
            self.steps.append(trainer.global_step)
            self._unread.append(torch.as_tensor(value).detach().float().reshape(()))
            if len(self._unread) >= self.read_every:
                self.read()

    def read(self) -> None:
        """Read the values still on the device (one wait for all of them)."""
        if self._unread:
            self._values += torch.stack(self._unread).tolist()
            self._unread = []

    @property
    def values(self) -> list[float]:
        """Every recorded value, as numbers."""
        self.read()
        return self._values

    @property
    def state_key(self) -> str:
        """One checkpoint entry per recorded key."""
        return self._generate_state_key(key=self.key)

    def state_dict(self) -> dict[str, Any]:
        """The history so far, as tensors."""
        return {
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "values": torch.tensor(self.values, dtype=torch.float64),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the history of the run resumed from."""
        self.steps, self._values = state_dict["steps"].tolist(), state_dict["values"].tolist()
        self._unread = []

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.plot(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        try:
            self.plot(trainer)
        except Exception as error:  # e.g. a full disk: the error that stopped the run stays the one raised
            rank_zero_warn(f"could not write the loss curve {self.path} after the run failed: {error!r}")

    @rank_zero_only
    def plot(self, trainer: Trainer) -> Path | None:
        """Write the PNG and log it to wandb as an image."""
        try:
            values = self.values
        except RuntimeError:  # the GPU failed (e.g. a device-side assert): plot the values read before it
            values = self._values
        steps = self.steps[: len(values)]
        if not values:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, values, alpha=0.35, label=self.key)
        values, k = np.asarray(values), min(self.smoothing, len(values))
        csum, idx = np.concatenate([[0.0], np.cumsum(values)]), np.arange(len(values))
        start = np.maximum(0, idx - k + 1)
        smooth = (csum[idx + 1] - csum[start]) / (idx + 1 - start)  # trailing mean over k steps
        ax.plot(steps, smooth, label=f"{self.key} (mean of {k})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(self.key)
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("train/loss_curve", [str(self.path)], step=trainer.global_step)
        return self.path
