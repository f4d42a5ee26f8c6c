"""Checkpoint I/O that never leaves a half-written file behind."""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place, so a crash keeps the old one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "file" not in get_filesystem(path).protocol:
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: no rename semantics
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
