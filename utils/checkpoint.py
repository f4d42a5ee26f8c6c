"""Checkpoint I/O for the Trainer: written without leaving half a file, read without running code from it."""

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from utils.files import load_file

OUR_CHECKPOINT = "a checkpoint of this framework"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file renamed into place (a crash keeps the old one), and reads
    checkpoints with ``weights_only=True`` (resuming from one runs no code from it)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "file" not in get_filesystem(path).protocol:
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: no rename semantics
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException as error:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # no half-written file stays behind
            if not isinstance(error, (OSError, RuntimeError)):  # e.g. KeyboardInterrupt: as it was
                raise
            # torch.save may report a full disk as a RuntimeError from its zip writer: an OSError either way
            errno = getattr(error, "errno", None)
            cause = getattr(error, "strerror", None) or str(error)
            message = f"could not write the checkpoint {path} ({cause}); a file already there is unchanged"
            raise (OSError(errno, message) if errno else OSError(message)) from error

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """A checkpoint to resume from, on the CPU, read with ``weights_only=True`` whatever is asked."""
        if "file" not in get_filesystem(path).protocol:
            return super().load_checkpoint(path, weights_only=True)
        checkpoint = load_file(path, OUR_CHECKPOINT)
        if "state_dict" not in checkpoint:
            raise ValueError(
                f"{path} is not {OUR_CHECKPOINT} (no 'state_dict'; it holds {sorted(checkpoint)[:8]})"
            )
        return checkpoint
