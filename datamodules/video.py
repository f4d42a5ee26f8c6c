"""
The one generic video DataModule: every dataset (synthetic, FaceForensics, SkyTimelapse, UCF101, Taichi-HD)
is a factory behind it, built by Hydra with `_partial_: true` and called here as
`dataset(split=..., num_frames=..., resolution=..., num_classes=...)`.

A dataset item is {"video": (f, c, h, w) float in [-1, 1], "label": int64 scalar (only when conditional),
...}; a batch is {"video": (b, f, c, h, w), "label": (b,), ...}. Frames come before channels everywhere.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate

#################################################################################
#                                    Checks                                     #
#################################################################################


def check_int(name: str, value: Any, low: int) -> None:
    """Raise a ValueError naming the argument unless `value` is an int >= `low`."""
    if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")


def collate_clips(
    samples: list[dict[str, Any]], num_frames: int, resolution: int, num_classes: int
) -> dict[str, Any]:
    """Stack clip dicts into a batch and assert the `b f c h w` layout every module downstream relies on."""
    batch = default_collate(samples)
    video = batch["video"]
    assert video.ndim == 5 and video.is_floating_point(), (
        f"batch['video'] must be a float (b, f, c, h, w) video; got {video.dtype} {tuple(video.shape)}."
    )
    assert video.shape[1] == num_frames, (
        f"Expected num_frames={num_frames} on dim 1 (b f c h w); got {tuple(video.shape)}. "
        "Is the dataset returning (c, f, h, w) clips?"
    )
    assert video.shape[3] == video.shape[4] == resolution, (
        f"Expected {resolution}x{resolution} frames (resolution) on dims 3-4; got {tuple(video.shape)}."
    )
    if num_classes > 0:
        assert "label" in batch, f"num_classes={num_classes} (conditional) but the dataset gives no 'label'."
        label = batch["label"]
        assert label.shape == (video.shape[0],) and label.dtype == torch.int64, (
            f"batch['label'] must be int64 of shape (b,); got {label.dtype} {tuple(label.shape)}."
        )
    return batch


#################################################################################
#                                 DataModule                                    #
#################################################################################


class VideoDataModule(LightningDataModule):
    """Train/val/test loaders over any clip dataset factory; batches hold `b f c h w` videos (+ labels)."""

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        num_frames: int = 16,
        resolution: int = 256,
        num_classes: int = 0,
        batch_size: int = 5,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        val_split: str = "val",
    ):
        """
        dataset: factory, dataset(split=, num_frames=, resolution=, num_classes=) -> Dataset of clips.
        num_classes: 0 = unconditional; > 0 = every clip carries an int64 "label" in [0, num_classes).
        batch_size: clips per device per step (Latte: 5 per GPU); val_batch_size defaults to batch_size.
        val_split: the split the validation loader reads (e.g. "test" for datasets without a "val" split).
        """
        super().__init__()
        if not callable(dataset):
            raise ValueError(f"dataset must be a dataset factory (Hydra `_partial_: true`), got {dataset!r}.")
        check_int("num_frames", num_frames, 1)
        check_int("resolution", resolution, 8)
        check_int("num_classes", num_classes, 0)
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        if val_batch_size is not None:
            check_int("val_batch_size", val_batch_size, 1)
        self.dataset = dataset
        self.num_frames = num_frames
        self.resolution = resolution
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_split = val_split
        self.collate = partial(
            collate_clips, num_frames=num_frames, resolution=resolution, num_classes=num_classes
        )
        self.splits: dict[str, Dataset] = {}

    def build(self, split: str) -> Dataset:
        """Build (once) the dataset of `split`, failing clearly when it is empty."""
        if split not in self.splits:
            sizes = dict(num_frames=self.num_frames, resolution=self.resolution, num_classes=self.num_classes)
            dataset = self.dataset(split=split, **sizes)
            if len(dataset) == 0:
                raise ValueError(
                    f"The '{split}' split of {type(dataset).__name__} is empty (0 clips): check the dataset "
                    "root and its expected layout, or the clip filters (num_frames, resolution)."
                )
            self.splits[split] = dataset
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs: train + val for fit, val for validate, test for test."""
        if stage in (None, "fit"):
            train = self.build("train")
            if len(train) < self.batch_size:
                raise ValueError(
                    f"The 'train' split has {len(train)} clips, fewer than batch_size={self.batch_size}: "
                    "with drop_last=True no training batch would ever be formed."
                )
        if stage in (None, "fit", "validate"):
            self.build(self.val_split)
        if stage == "test":
            self.build("test")

    def loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        """A DataLoader over `split`: shuffled with drop_last for training, fixed order otherwise."""
        return DataLoader(
            self.build(split),
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training clips; incomplete last batches are dropped (as in Latte's training)."""
        return self.loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation clips of `val_split` in a fixed order, the last batch kept."""
        return self.loader(self.val_split, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test clips in a fixed order, the last batch kept."""
        return self.loader("test", self.val_batch_size, train=False)
