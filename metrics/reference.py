"""Real clips for the metrics' reference statistics, and the on-disk cache keyed by what produced them.

What the metrics code assumes of the dataset (any factory behind `VideoDataModule`): `dataset(split=,
num_frames=, resolution=, num_classes=0, **kwargs)` gives items {"video": (f, c, h, w) float in [-1, 1] or
uint8}. For decoded videos (a factory taking `clip_sampling`, i.e. `datamodules.DecodedVideos`) this module
asks for StyleGAN-V's real clips: `num_frames` (16) frames at `frame_stride` (3; 6 for Taichi-HD, as the
paper) from a uniformly random offset among those whose clip fits, videos shorter than num_frames x stride
dropped; flips are always off (a factory that takes `flip` gets flip=False). It decides which clips (all, or
`num_videos` of them drawn with a seeded permutation, as Latte's random 2048) and seeds every item (torch,
numpy and python RNGs seeded from (seed, index) around `dataset[index]`), so a dataset that draws its
offsets from those RNGs gives the same clips on any number of ranks and workers.
"""

import functools
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from utils.files import load_file
from utils.rng import seeded_rngs, stable_seed

CACHE_FORMAT = 1  # bump when the cached content changes meaning

#################################################################################
#                           Seeded, rank-sharded reading                        #
#################################################################################


class SeededItems(Dataset):
    """Wrap a dataset so that item i is read with all global RNGs seeded from (seed, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        """As many items as the wrapped dataset."""
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        """dataset[index] under RNGs seeded by (seed, index)."""
        with seeded_rngs(stable_seed("real", self.seed, int(index))):
            return self.dataset[index]


def batch_range(num_batches: int, rank: int, world_size: int) -> range:
    """The contiguous run of global batch indices that `rank` handles (so rank order = global order)."""
    if num_batches < world_size:
        raise ValueError(
            f"{num_batches} batches cannot give each of {world_size} ranks at least one: lower the batch "
            "size or raise the number of videos"
        )
    return range(rank * num_batches // world_size, (rank + 1) * num_batches // world_size)


#################################################################################
#                                  Real videos                                  #
#################################################################################


def describe_factory(factory: Callable[..., Dataset]) -> dict:
    """A JSON-able description of a dataset factory (Hydra `_partial_`: its target and keyword arguments)."""
    if isinstance(factory, functools.partial):
        target = f"{factory.func.__module__}.{factory.func.__qualname__}"
        kwargs = {key: _jsonable(value) for key, value in sorted(factory.keywords.items())}
        return {"target": target, "args": [_jsonable(a) for a in factory.args], **kwargs}
    return {
        "target": f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"
    }


def _jsonable(value: Any) -> Any:
    """JSON-compatible, run-independent copy of a config value (paths, callables and objects become text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):  # dict, DictConfig
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence):  # list, tuple, ListConfig
        return [_jsonable(v) for v in value]
    if isinstance(value, functools.partial):  # e.g. an index builder inside the dataset factory
        return describe_factory(value)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    text = str(value)  # paths and other values; a default repr holds an address, which is no stable key
    return f"<{type(value).__module__}.{type(value).__qualname__}>" if " at 0x" in text else text


def dataset_name(factory: Callable[..., Dataset]) -> str:
    """A cache-file prefix: the index builder's name for decoded videos (ffs, ucf101, ...), else the class."""
    index = getattr(factory, "keywords", {}).get("index")
    named = getattr(index, "func", index) if index is not None else getattr(factory, "func", factory)
    return getattr(named, "__name__", "dataset").lower().removesuffix("_index")


class RealVideos:
    """The real clips a metric reference is computed from, and where that reference is cached."""

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        root: str | None = None,
        split: str = "train",
        resolution: int = 256,
        num_videos: int = 2048,
        frame_stride: int = 3,
        seed: int = 0,
        batch_size: int = 8,
        num_workers: int = 4,
        dataset_kwargs: dict | None = None,
        cache_dir: str | None = None,
        name: str | None = None,
    ):
        """
        dataset: factory, dataset(split=, num_frames=, resolution=, num_classes=, **dataset_kwargs).
        root: the dataset folder, passed as `root=` when set (the data preset's `data.root`).
        num_videos: clips used; all of them if the split has fewer (the protocol: 2048).
        frame_stride: frames between the real clip's frames (decoded videos only; synthetic clips are drawn
            at their own rate).
        seed: which clips (a seeded permutation) and each clip's random offset (seeded RNGs per item).
        dataset_kwargs: extra factory arguments for the metrics only (applied last, overriding the above).
        cache_dir: where references are cached (None: never cached); name: file-name prefix (default: the
            dataset class name).
        """
        if not callable(dataset):
            raise ValueError(f"dataset must be a dataset factory (Hydra `_partial_: true`), got {dataset!r}")
        for key, value, low in (
            ("num_videos", num_videos, 2),
            ("batch_size", batch_size, 1),
            ("frame_stride", frame_stride, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"real.{key} must be an int >= {low}, got {value!r}")
        self.dataset = dataset
        self.root = None if root is None else str(root)
        self.frame_stride = frame_stride
        self.split = split
        self.resolution = resolution
        self.num_videos = num_videos
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.name = name or dataset_name(dataset)
        self._built: dict[int, Dataset] = {}

    def factory_kwargs(self, num_frames: int) -> dict:
        """Factory arguments besides split, num_frames, resolution: root, protocol, then dataset_kwargs."""
        parameters = inspect.signature(self.dataset).parameters
        kwargs = {} if self.root is None else {"root": self.root}
        if "flip" in parameters:
            kwargs["flip"] = False
        if "clip_sampling" in parameters:  # decoded videos: StyleGAN-V's real clips
            kwargs |= {
                "clip_sampling": "stylegan_v",
                "frame_interval": self.frame_stride,
                "min_frames": num_frames * self.frame_stride,
            }
        return {**kwargs, **self.dataset_kwargs}

    def build(self, num_frames: int) -> Dataset:
        """The dataset of `num_frames`-frame clips (built once per frame count)."""
        if num_frames not in self._built:
            self._built[num_frames] = self.dataset(
                split=self.split,
                num_frames=num_frames,
                resolution=self.resolution,
                num_classes=0,
                **self.factory_kwargs(num_frames),
            )
        return self._built[num_frames]

    def indices(self, num_frames: int) -> list[int]:
        """The clips used: all if there are at most num_videos, else a seeded random subset, sorted."""
        total = len(self.build(num_frames))
        if total < 2:
            raise ValueError(
                f"the real {self.split} split of {self.name} has {total} clips; metrics need >= 2"
            )
        if total <= self.num_videos:
            return list(range(total))
        generator = torch.Generator().manual_seed(self.seed)
        return sorted(torch.randperm(total, generator=generator)[: self.num_videos].tolist())

    def describe(self, num_frames: int) -> dict:
        """Everything that determines the real clips (part of the cache key)."""
        return {
            "dataset": describe_factory(self.dataset),
            "dataset_kwargs": _jsonable(
                self.factory_kwargs(num_frames)
            ),  # root included: a copy is another set
            "split": self.split,
            "resolution": self.resolution,
            "num_frames": num_frames,
            "clips_in_split": len(self.build(num_frames)),
            "num_videos": len(self.indices(num_frames)),
            "seed": self.seed,
        }

    def batches(self, num_frames: int, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
        """This rank's share of the real clips, as `b f c h w` batches (global batch boundaries)."""
        indices = self.indices(num_frames)
        num_batches = -(-len(indices) // self.batch_size)
        mine = batch_range(num_batches, rank, world_size)
        share = indices[mine.start * self.batch_size : mine.stop * self.batch_size]
        dataset = Subset(SeededItems(self.build(num_frames), self.seed), share)
        loader = DataLoader(  # its own generator: worker seeds fixed, the global RNG untouched
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle=False,
            generator=torch.Generator().manual_seed(self.seed),
        )
        for batch in loader:
            yield batch["video"]

    def cache_path(self, num_frames: int, metric_name: str, key: dict) -> Path | None:
        """The cache file of one metric's reference (None if caching is off)."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        stride = self.factory_kwargs(num_frames).get("frame_interval")
        stride = f"-s{stride}" if stride is not None else ""
        stem = f"{self.name}-{self.split}-{self.resolution}px-{num_frames}f{stride}-{metric_name}-{digest}"
        return self.cache_dir / f"{stem}.pt"


#################################################################################
#                                  Cache files                                  #
#################################################################################


def save_reference(path: Path, key: dict, reference: dict[str, torch.Tensor]) -> None:
    """Write {key, reference} atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"key": json.dumps(key, sort_keys=True), "reference": reference}, temporary)
    os.replace(temporary, path)


def load_reference(path: Path, key: dict) -> dict[str, torch.Tensor] | None:
    """The cached reference at `path` if it exists and was made with exactly `key`, else None."""
    if not path.is_file():
        return None
    cached = load_file(path, "a reference-statistics cache of metrics/reference.py (delete it to recompute)")
    if cached.get("key") != json.dumps(key, sort_keys=True):
        return None
    return cached["reference"]
