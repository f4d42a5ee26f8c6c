"""
The one generic video DataModule: every dataset (synthetic, FaceForensics, SkyTimelapse, UCF101, Taichi-HD)
is a factory behind it, built by Hydra with `_partial_: true` and called here as
`dataset(split=..., num_frames=..., resolution=..., num_classes=...)`, plus `root=...` when the DataModule
has a `root` (the datasets on disk: `data.root` is the one key a user sets).

A dataset item is {"video": (f, c, h, w) float in [-1, 1], "label": int64 scalar (only when conditional),
...}; a batch is {"video": (b, f, c, h, w), "label": (b,), ...}. Frames come before channels everywhere.

Image-video joint training (Latte's LatteIMG, `use_image_num` > 0): every TRAINING item gets `use_image_num`
single frames of other clips of the same split appended after its `num_frames` video frames, so a training
batch is {"video": (b, num_frames + use_image_num, c, h, w), "label": (b,), "image_label": (b, use_image_num)}
("label"/"image_label" only when conditional). The model treats the trailing frames as independent images.
Validation and test batches stay video-only: Latte evaluates (and samples) videos alone, and this keeps the
validation loss comparable between joint and video-only runs.

Training order and exact resume: the training loader (`ResumableLoader`) shuffles by (seed, epoch), one shard
per DDP rank (`EpochSampler`, a DistributedSampler, which Lightning keeps), and counts the clips of the epoch
all ranks used; Lightning saves that place in the checkpoint and restores it on resume, so the resumed run
gets the rest of the epoch (shared out among its ranks, however many there are now), then the same later
epochs. Every training item is read with the global RNGs (torch CPU, numpy, python) seeded by (seed, epoch,
index) (`EpochSeededItems`): a clip's random window, flip or latent noise is the same in any process,
DataLoader worker or resumed run, and new in every epoch. The loaders draw their worker seeds from their own
generator: data loading never touches the training process's global RNG.

Latent cache (`use_latent_cache=True`, see datamodules/cache_latents.py): training and validation items carry
VAE latents instead of pixels, {"latents": (f, zc, r/ds, r/ds), ...}, and batches
{"latents": (b, f, zc, h', w'), ...} with no "video" key: the module must use them as x0 and skip encoding.
Test batches stay pixels.
"""

import hashlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from utils.rng import seeded_rngs, stable_seed

#################################################################################
#                                    Checks                                     #
#################################################################################


def check_int(name: str, value: Any, low: int) -> None:
    """Raise a ValueError naming the argument unless `value` is an int >= `low`."""
    if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")


def clip_key(item: dict[str, Any]) -> str:
    """The key holding the frames of an item or batch: "latents" (from the latent cache) or "video"."""
    return "latents" if "latents" in item else "video"


def collate_clips(
    samples: list[dict[str, Any]], num_frames: int, resolution: int, num_classes: int, use_image_num: int = 0
) -> dict[str, Any]:
    """Stack clip dicts into a batch and assert the `b f c h w` layout every module downstream relies on.

    use_image_num > 0 (joint-training loader only): dim 1 must hold exactly num_frames + use_image_num frames,
    and a conditional batch must carry "image_label" (b, use_image_num). Cached clips ("latents") are checked
    the same way, except that their frames are latent-sized (resolution / the VAE's downsampling).
    """
    batch = default_collate(samples)
    key = clip_key(batch)
    video = batch[key]
    assert video.ndim == 5 and video.is_floating_point(), (
        f"batch['{key}'] must be a float (b, f, c, h, w) video; got {video.dtype} {tuple(video.shape)}."
    )
    images = f" + use_image_num={use_image_num} image frames" if use_image_num > 0 else ""
    assert video.shape[1] == num_frames + use_image_num, (
        f"Expected num_frames={num_frames}{images} on dim 1 (b f c h w); got {tuple(video.shape)}. "
        "Is the dataset returning (c, f, h, w) clips?"
    )
    size = resolution if key == "video" else video.shape[3]
    assert video.shape[3] == video.shape[4] == size and resolution % size == 0, (
        f"Expected {resolution}x{resolution} frames (resolution, or latents of a divisor of it) on dims 3-4; "
        f"got batch['{key}'] {tuple(video.shape)}."
    )
    if num_classes > 0:
        assert "label" in batch, f"num_classes={num_classes} (conditional) but the dataset gives no 'label'."
        label = batch["label"]
        assert label.shape == (video.shape[0],) and label.dtype == torch.int64, (
            f"batch['label'] must be int64 of shape (b,); got {label.dtype} {tuple(label.shape)}."
        )
    if num_classes > 0 and use_image_num > 0:
        assert "image_label" in batch, "Conditional joint training needs each image's own 'image_label'."
        image_label = batch["image_label"]
        assert image_label.shape == (video.shape[0], use_image_num) and image_label.dtype == torch.int64, (
            f"batch['image_label'] must be int64 of shape (b, use_image_num={use_image_num}); "
            f"got {image_label.dtype} {tuple(image_label.shape)}."
        )
    return batch


#################################################################################
#                        Image Frames for Joint Training                        #
#################################################################################


def item_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator seeded by a stable hash of (seed, index): the same draws in any process or epoch."""
    digest = hashlib.blake2b(f"images/{seed}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


class WithImageFrames(Dataset):
    """A clip dataset whose items get `use_image_num` frames of other clips appended: `(f + k, c, h, w)`.

    Image j of item i is frame `frame_idx` of clip `clip`, both drawn uniformly (with replacement, so k may
    exceed the number of clips) from a generator seeded by (seed, i): the same images for item i in every
    epoch and every DataLoader worker (as in the official image datasets, an index's images stay fixed), never
    from global RNG. The item's own clip is never drawn unless it is the only clip.

    Cost: by default a frame is read as `dataset[clip]["video"][frame_idx]`, which loads a whole clip per
    image. A dataset can offer a cheaper optional `frame(index, frame_idx) -> {"image": (c, h, w), "label":
    int64 scalar (when conditional)}`, with frame_idx in [0, num_frames) of the clip `dataset[index]` gives;
    it is used whenever present. The choices are deterministic; the pixels are as deterministic as the
    dataset's items (a random temporal window or flip inside the dataset stays random).
    """

    def __init__(
        self, dataset: Dataset, use_image_num: int, num_frames: int, num_classes: int, seed: int = 0
    ):
        """dataset: clips of `num_frames` frames; num_classes > 0 adds "image_label" (use_image_num,)."""
        check_int("use_image_num", use_image_num, 1)
        check_int("num_frames", num_frames, 1)
        check_int("num_classes", num_classes, 0)
        check_int("seed", seed, 0)
        if len(dataset) == 0:
            raise ValueError("Joint training needs at least one clip to draw image frames from; got 0.")
        self.dataset = dataset
        self.use_image_num = use_image_num
        self.num_frames = num_frames
        self.num_classes = num_classes
        self.seed = seed

    def __len__(self) -> int:
        """As many items as the wrapped dataset has clips."""
        return len(self.dataset)

    def image_sources(self, index: int) -> list[tuple[int, int]]:
        """The (clip, frame index) of each image of item `index`: a pure function of (seed, index)."""
        count = len(self.dataset)
        if not 0 <= index < count:
            raise IndexError(f"index {index} out of range for {count} clips.")
        generator = item_generator(self.seed, index)
        if count > 1:
            clips = torch.randint(count - 1, (self.use_image_num,), generator=generator)  # (k,) in [0, n-1)
            clips += (clips >= index).long()  # (k,) skips the own clip: uniform over the n-1 others
        else:
            clips = torch.zeros(self.use_image_num, dtype=torch.int64)  # (k,) the only clip there is
        frames = torch.randint(self.num_frames, (self.use_image_num,), generator=generator)  # (k,)
        return list(zip(clips.tolist(), frames.tolist()))

    def image(self, clip: int, frame_idx: int) -> dict[str, Any]:
        """Frame `frame_idx` of clip `clip` as {"image": (c, h, w), "label": ...}, cheaply if possible."""
        if hasattr(self.dataset, "frame"):
            return self.dataset.frame(clip, frame_idx)
        item = self.dataset[clip]
        video = item[clip_key(item)]
        assert video.ndim == 4, f"Clips must be (f, c, h, w); got {tuple(video.shape)}."
        return {"image": video[frame_idx], "label": item.get("label")}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Clip `index` with its images appended: {"video": (f + k, c, h, w), "image_label": (k,), ...}."""
        index = int(index)  # the seed must not depend on the index's type (int, numpy or tensor)
        sources = self.image_sources(index)
        item = dict(self.dataset[index])
        key = clip_key(item)  # "latents" when the clips come from the latent cache
        video = item[key]  # (f, c, h, w)
        assert video.ndim == 4 and video.shape[0] == self.num_frames, (
            f"Clips must be (f={self.num_frames}, c, h, w) before images are appended; "
            f"got {tuple(video.shape)}."
        )
        drawn = [self.image(clip, frame_idx) for clip, frame_idx in sources]
        images = torch.stack([image["image"] for image in drawn])  # (k, c, h, w)
        assert images.shape[1:] == video.shape[1:], (
            f"Image frames {tuple(images.shape[1:])} must match the clip's frames {tuple(video.shape[1:])}."
        )
        item[key] = torch.cat([video, images.to(video.dtype)])  # (f + k, c, h, w)
        if self.num_classes > 0:
            assert all(image.get("label") is not None for image in drawn), (
                "Conditional images need their labels."
            )
            labels = [torch.as_tensor(image["label"], dtype=torch.int64) for image in drawn]
            item["image_label"] = torch.stack(labels)  # (k,)
        return item


#################################################################################
#                        Training Order and Exact Resume                        #
#################################################################################


class EpochSampler(DistributedSampler):
    """DistributedSampler's (seed, epoch) shuffle as (epoch, index) pairs, from position `start` of it on.

    An item's random draws depend on its epoch (`EpochSeededItems`). The first `start` clips of the epoch's
    permutation are the ones used before (by all ranks together, on any number of ranks): this rank gets its
    interleaved shard of the rest, padded to the ranks as DistributedSampler pads. With `start` = 0 that is
    DistributedSampler's shard; after k batches of b on each of n ranks it is the rest of that shard, since
    those batches held exactly the first k * b * n positions.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # clips of this epoch's permutation used before (set by the loader)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's shuffle
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        rest = order[self.start :]
        rest += (order * self.num_replicas)[: -len(rest) % self.num_replicas]  # DistributedSampler's padding
        return iter([(self.epoch, index) for index in rest[self.rank :: self.num_replicas]])

    def batches_left(self, batch_size: int) -> int:
        """The full batches of `batch_size` in this rank's shard of the rest of the epoch."""
        rest = max(len(self.dataset) - self.start, 0)
        return -(-rest // self.num_replicas) // batch_size


class EpochSeededItems(Dataset):
    """Reads item `index` for an (epoch, index) key with the global RNGs seeded by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        """As many items as the wrapped dataset."""
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        """dataset[index] under RNGs seeded by (seed, epoch, index)."""
        epoch, index = key
        with seeded_rngs(stable_seed("train", self.seed, epoch, index)):
            return self.dataset[index]


class ResumableLoader(DataLoader):
    """The training loader as a stream of epochs whose place Lightning saves (`state_dict`) and restores.

    Each pass continues the current epoch where the last one stopped; a pass at its end starts the next
    epoch, as does Lightning's `set_epoch` on the sampler. Lightning does not prefetch from a loader with a
    length, so the batches handed out are the batches trained on.

    The place is the number of clips of the epoch's permutation used (by all ranks), so a run resumed on
    another number of ranks continues the epoch's order: each rank takes its shard of the clips not yet used.
    Lightning counts the epoch's batches of the old world size; `trainer` (when given) gets its count moved to
    the batches of this world size the used clips fill, so that the epoch ends where its data ends.
    """

    def __init__(
        self, dataset: Dataset, sampler: EpochSampler, trainer: Trainer | None = None, **kwargs: Any
    ):
        super().__init__(EpochSeededItems(dataset, sampler.seed), sampler=sampler, **kwargs)
        self.trainer = trainer
        self.epoch, self.used, self.clips = 0, 0, 0  # the epoch, its batches handed out, its clips used

    def __iter__(self) -> Iterator[Any]:
        if self.sampler.epoch != self.epoch:  # Lightning's set_epoch
            self.epoch, self.used, self.clips = self.sampler.epoch, 0, 0
        elif self.used >= len(self):  # the epoch is over: the next one
            self.epoch, self.used, self.clips = self.epoch + 1, 0, 0
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.clips
        for batch in super().__iter__():
            self.used += 1
            self.clips += self.batch_size * self.sampler.num_replicas
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: the epoch, its batches this rank used and its clips all ranks used."""
        return {"epoch": self.epoch, "batches": self.used, "clips": self.clips}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from `state_dict()`'s place (Lightning calls it before the resumed run's first pass); a
        place without "clips" (older checkpoints) counts batches of this world size."""
        self.epoch = state["epoch"]
        self.clips = state.get("clips", state["batches"] * self.batch_size * self.sampler.num_replicas)
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.clips
        self.used = len(self) - self.sampler.batches_left(self.batch_size)
        if self.trainer is not None and self.used != state["batches"]:  # another world size
            progress = self.trainer.fit_loop.epoch_loop.batch_progress.current  # restored, not yet reset
            for name in ("ready", "started", "processed", "completed"):
                setattr(progress, name, getattr(progress, name) + self.used - state["batches"])


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
        use_image_num: int = 0,
        image_seed: int = 0,
        seed: int | None = 0,
        root: str | None = None,
        use_latent_cache: bool = False,
        latent_cache: Any | None = None,
    ):
        """
        dataset: factory, dataset(split=, num_frames=, resolution=, num_classes=[, root=]) -> clip Dataset.
        num_classes: 0 = unconditional; > 0 = every clip carries an int64 "label" in [0, num_classes).
        batch_size: clips per device per step (Latte: 5 per GPU); val_batch_size defaults to batch_size.
        val_split: the split the validation loader reads (e.g. "test" for datasets without a "val" split).
        use_image_num: 0 = video only; k > 0 = image-video joint training: every training clip gets k
            frames of other training clips appended (see `WithImageFrames`); val and test stay video-only.
        image_seed: seeds which clip and frame each appended image is (fixed per item across epochs).
        seed: seeds the training order (by epoch) and each training item's random draws (by epoch and index).
        root: the dataset folder, passed to the factory as `root=` (datasets on disk); None passes nothing.
        use_latent_cache: train and validate on the VAE latents of `latent_cache` (built beforehand by
            `python -m datamodules.cache_latents`) instead of decoding videos; test batches stay pixels.
        latent_cache: a `datamodules.cache_latents.LatentCache` (where the cache is, which VAE made it).
        """
        super().__init__()
        if not callable(dataset):
            raise ValueError(f"dataset must be a dataset factory (Hydra `_partial_: true`), got {dataset!r}.")
        check_int("num_frames", num_frames, 1)
        check_int("resolution", resolution, 8)
        check_int("num_classes", num_classes, 0)
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        check_int("use_image_num", use_image_num, 0)
        check_int("image_seed", image_seed, 0)
        seed = 0 if seed is None else seed  # an unseeded run (seed=null) still shuffles reproducibly
        check_int("seed", seed, 0)
        if val_batch_size is not None:
            check_int("val_batch_size", val_batch_size, 1)
        if use_latent_cache and latent_cache is None:
            raise ValueError("use_latent_cache=true needs a latent_cache (the data preset's latent_cache).")
        self.dataset = dataset
        self.num_frames = num_frames
        self.resolution = resolution
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_split = val_split
        self.use_image_num = use_image_num
        self.image_seed = image_seed
        self.seed = seed
        self.root = root
        self.use_latent_cache = use_latent_cache
        self.latent_cache = latent_cache
        sizes = dict(num_frames=num_frames, resolution=resolution, num_classes=num_classes)
        self.train_collate = partial(collate_clips, **sizes, use_image_num=use_image_num)
        self.eval_collate = partial(collate_clips, **sizes, use_image_num=0)
        self.splits: dict[str, Dataset] = {}

    def build(self, split: str) -> Dataset:
        """Build (once) the dataset of `split`, failing clearly when it is empty."""
        if split not in self.splits:
            sizes = dict(num_frames=self.num_frames, resolution=self.resolution, num_classes=self.num_classes)
            where = {} if self.root is None else {"root": self.root}
            dataset = self.dataset(split=split, **sizes, **where)
            if len(dataset) == 0:
                raise ValueError(
                    f"The '{split}' split of {type(dataset).__name__} is empty (0 clips): check the dataset "
                    "root and its expected layout, or the clip filters (num_frames, resolution)."
                )
            if self.use_latent_cache and split != "test":  # evaluation (test) reads pixels
                dataset = self.latent_cache.dataset(dataset)
            self.splits[split] = dataset
        return self.splits[split]

    @property
    def skipped_videos(self) -> int:
        """Videos left out so far (unreadable, corrupt, too short) over the built splits: log it as
        `data/skipped_videos`. Counts index-time skips and read failures (DataLoader workers included)."""
        skipped, failures = set(), 0  # splits may share videos: count each skipped path once
        for dataset in self.splits.values():
            source = getattr(dataset, "source", dataset)  # a latent-cache dataset wraps the decoded videos
            skipped |= {path for path, _ in getattr(source, "skipped", ())}
            failures += getattr(source, "read_failures", 0)
        return len(skipped) + failures

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
        """A DataLoader over `split`: resumable shuffle, drop_last and image frames for training; fixed
        otherwise. Worker seeds come from the loader's own generator, never from the global RNG."""
        dataset = self.build(split)
        if train and self.use_image_num > 0:
            dataset = WithImageFrames(
                dataset, self.use_image_num, self.num_frames, self.num_classes, seed=self.image_seed
            )
        settings = dict(
            batch_size=batch_size,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.train_collate if train else self.eval_collate,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if not train:
            return DataLoader(dataset, shuffle=False, **settings)
        if self.trainer is not None and self.trainer.overfit_batches > 0:  # Lightning swaps the sampler
            return DataLoader(dataset, shuffle=True, **settings)
        shard = (self.trainer and self.trainer.distributed_sampler_kwargs) or {}  # DDP: num_replicas, rank
        sampler = EpochSampler(dataset, **shard, seed=self.seed)
        return ResumableLoader(dataset, sampler, trainer=self.trainer, **settings)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training clips (+ their image frames), resumable; incomplete last batches dropped."""
        return self.loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation clips of `val_split` in a fixed order, the last batch kept; never image frames."""
        return self.loader(self.val_split, self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test clips in a fixed order, the last batch kept."""
        return self.loader("test", self.val_batch_size, train=False)
