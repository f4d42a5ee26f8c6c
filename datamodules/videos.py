"""
Decoded videos: the one dataset class behind FaceForensics, SkyTimelapse, UCF101, Taichi-HD and any folder of
videos. A dataset contributes only an index builder (`datamodules/index.py`: which videos, which labels);
everything else is shared here: frame counting, clip sampling, decoding, transforms and bad-input handling.

A video is a file decoded with decord (only the frames a clip needs) or a folder of frame images read with
PIL. An item is {"video": (f, c, h, w) float in [-1, 1], "label": int64 scalar (only when conditional)},
frames before channels like every dataset behind `VideoDataModule`.

Clip sampling (official Latte code: datasets/video_transforms.py, TemporalRandomCrop, and the
datasets/*_datasets.py __getitem__), on `length` frames with span = num_frames * frame_interval:
    start   = randint(0, max(0, length - span - 1))          inclusive, as Latte's TemporalRandomCrop
    window  = [start, min(start + span, length))
    linspace: np.linspace(start, end - 1, num_frames) cast to int -> offsets 0,3,6,...,43,47 for a 48-frame
              window (Latte's rule for decoded videos: FaceForensics, UCF101)
    stride:   start + frame_interval * [0, 1, ..., num_frames - 1] -> offsets 0,3,...,45 (Latte's frame-folder
              rule: SkyTimelapse, Taichi-HD)
    stylegan_v: the stride offsets from start = randint(0, length - (num_frames - 1) * frame_interval - 1),
              every start whose clip fits (StyleGAN-V's real clips for FVD; metrics.RealVideos uses it)
Training clips draw `start` (and the flip) from torch's global RNG, which the training loader seeds per item
by (seed, epoch, index) (`datamodules.video.EpochSeededItems`: the same draws in any worker and after a
resume); every other split draws them from a generator seeded by (seed, split, index), so validation and
evaluation see the same clips in every epoch, process and rank. DDP sharding is the sampler's job (the
training loader's `EpochSampler`, Lightning's DistributedSampler otherwise): an item's clip does not depend on
which rank reads it.

Transforms on the uint8 clip: to [0, 1], a deterministic spatial transform to resolution x resolution
("resize_center_crop": bilinear resize by resolution / short side, then a center crop, as Latte's
UCFCenterCropVideo; "center_crop_resize": the largest centered square, then a bilinear resize, as Latte's
CenterCropResizeVideo), then a horizontal flip of the whole clip with p = 0.5 (training only; off for Sky),
then to [-1, 1]. Latte flips before cropping; flipping after it differs by at most a one-pixel shift of the
crop and lets the latent cache store every frame plain and flipped.

Bad input: videos that cannot be opened or are shorter than the rule needs are dropped when the index is
built (counted in `skipped`, one warning); a video that fails while being read is replaced by the next
readable one (counted in `read_failures`, shared with the DataLoader workers; a warning each), never by a
blank tensor.
"""

import json
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import decord
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import Dataset

from datamodules.synthetic import clip_generator

CLIP_SAMPLING = ("linspace", "stride", "stylegan_v")
SPATIAL_TRANSFORMS = ("resize_center_crop", "center_crop_resize")
READ_ERRORS = (RuntimeError, OSError, ValueError, IndexError)  # decord's DECORDError is a RuntimeError


class SkippedVideoWarning(UserWarning):
    """A video was left out: unreadable, corrupt or too short."""


#################################################################################
#                                 Video Index                                   #
#################################################################################


@dataclass(frozen=True)
class VideoRecord:
    """One video of an index: a file decoded with decord, or a folder of frame images (`frames` in order)."""

    path: str  # the video file, or the frame folder
    label: int | None = None  # class index (UCF101); None for unconditional datasets
    frames: tuple[str, ...] = ()  # a frame folder's image files in temporal order; () for a video file


@dataclass(frozen=True)
class VideoIndex:
    """What an index builder returns: the videos of one split, the class names, and what it left out."""

    records: list[VideoRecord]
    classes: tuple[str, ...] = ()  # label i is classes[i]; () for unconditional datasets
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (path, reason) dropped by the builder


#################################################################################
#                                Clip Sampling                                  #
#################################################################################


def min_length(num_frames: int, frame_interval: int, sampling: str) -> int:
    """The fewest frames a video needs to give a full clip under `sampling`."""
    if sampling == "linspace":
        return num_frames  # Latte asserts >= num_frames; shorter windows are spread over what exists
    return (num_frames - 1) * frame_interval + 1


def last_start(length: int, num_frames: int, frame_interval: int, sampling: str) -> int:
    """The last window start `sampling` may draw (inclusive): Latte's TemporalRandomCrop, or any that fits."""
    if sampling == "stylegan_v":
        return max(0, length - (num_frames - 1) * frame_interval - 1)
    return max(0, length - num_frames * frame_interval - 1)


def window_start(high: int, generator: torch.Generator | None) -> int:
    """First frame of the window: uniform in [0, high] (inclusive)."""
    return int(torch.randint(0, high + 1, (), generator=generator))


def clip_indices(length: int, start: int, num_frames: int, frame_interval: int, sampling: str) -> list[int]:
    """Frame indices of the clip whose window starts at `start`, under the `sampling` rule."""
    span = num_frames * frame_interval
    if sampling == "linspace":
        end = min(start + span, length)
        return np.linspace(start, end - 1, num_frames, dtype=int).tolist()
    indices = [start + frame_interval * i for i in range(num_frames)]
    assert indices[-1] < length, f"stride clip {indices} runs past the video's {length} frames"
    return indices


#################################################################################
#                                  Transforms                                   #
#################################################################################


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (t, h, w, c) -> float32 (t, c, h, w) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)


def center_crop(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centered height x width crop of (t, c, h, w), offsets rounded as Latte's center_crop."""
    h, w = clip.shape[-2:]
    assert h >= height and w >= width, f"cannot crop {height}x{width} out of {h}x{w} frames"
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return clip[..., top : top + height, left : left + width]


def resize_center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (t, c, h, w) by size / short side (Latte's scale factor), then center crop size^2."""
    h, w = clip.shape[-2:]
    scale = size / min(h, w)
    if min(int(h * scale), int(w * scale)) == size:  # interpolate floors h * scale: Latte's exact call
        clip = F.interpolate(clip, scale_factor=scale, mode="bilinear", align_corners=False)
    else:  # float rounding would leave the short side at size - 1: name the output size instead
        out = (max(size, round(h * scale)), max(size, round(w * scale)))
        clip = F.interpolate(clip, size=out, mode="bilinear", align_corners=False)
    return center_crop(clip, size, size)  # (t, c, size, size)


def center_crop_resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Center crop the largest square of (t, c, h, w), then bilinear resize it to size^2."""
    side = min(clip.shape[-2:])
    square = center_crop(clip, side, side)  # (t, c, side, side)
    if side == size:
        return square
    return F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)


def spatial_transform(clip: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """The deterministic spatial transform `mode` of a (t, c, h, w) clip in [0, 1] to size x size."""
    if mode == "resize_center_crop":
        return resize_center_crop(clip, size)
    if mode == "center_crop_resize":
        return center_crop_resize(clip, size)
    raise ValueError(f"spatial must be one of {SPATIAL_TRANSFORMS}, got {mode!r}.")


#################################################################################
#                                   Readers                                     #
#################################################################################


def read_video_file(path: str, indices: list[int], threads: int = 1) -> np.ndarray:
    """Decode only frames `indices` of a video file: uint8 (t, h, w, c)."""
    reader = decord.VideoReader(path, num_threads=threads)
    if max(indices) >= len(reader):
        raise IndexError(f"frame {max(indices)} requested from a video of {len(reader)} frames")
    return reader.get_batch(indices).asnumpy()


def read_frame_folder(frames: tuple[str, ...], indices: list[int]) -> np.ndarray:
    """Read frames `indices` of a frame folder as RGB: uint8 (t, h, w, c)."""
    images = []
    for i in indices:
        with Image.open(frames[i]) as image:
            images.append(np.asarray(image.convert("RGB")))
    if len({image.shape for image in images}) > 1:
        raise ValueError(f"frames of different sizes in {Path(frames[0]).parent}")
    return np.stack(images)


PROBED: dict[tuple[str, int, int], int] = {}  # (path, size, mtime_ns) -> frame count, shared by all splits


def count_frames(record: VideoRecord, threads: int = 1) -> int:
    """Number of frames of a video (decord reads only the container index) or of a frame folder."""
    if record.frames:
        return len(record.frames)
    stat = os.stat(record.path)
    key = (record.path, stat.st_size, stat.st_mtime_ns)
    if key not in PROBED:
        PROBED[key] = len(decord.VideoReader(record.path, num_threads=threads))
    return PROBED[key]


def load_frame_counts(path: Path) -> None:
    """Add the counts a frame-count file holds to PROBED (nothing if it is missing or unreadable)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    PROBED.update({(file, size, mtime): count for file, size, mtime, count in entries})


def save_frame_counts(path: Path, root: Path) -> None:
    """Write PROBED's counts of the video files under `root` to `path` (atomically; any rank may)."""
    prefix = str(root).rstrip(os.sep) + os.sep
    entries = sorted([*key, count] for key, count in PROBED.items() if key[0].startswith(prefix))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(entries))
    os.replace(temporary, path)


#################################################################################
#                                   Dataset                                     #
#################################################################################


class DecodedVideos(Dataset):
    """Clips of decoded videos (files or frame folders) listed by an index builder: `f c h w` in [-1, 1]."""

    def __init__(
        self,
        index: Callable[..., VideoIndex],
        root: str,
        split: str = "train",
        num_frames: int = 16,
        resolution: int = 256,
        num_classes: int = 0,
        frame_interval: int = 3,
        clip_sampling: str = "linspace",
        min_frames: int | None = None,
        spatial: str = "resize_center_crop",
        flip: bool = True,
        seed: int = 0,
        decode_threads: int = 1,
        probe_workers: int = 8,
        frame_counts: str | None = None,
    ):
        """
        index: builder, index(root=Path, split=str) -> VideoIndex (see datamodules/index.py).
        root: the dataset folder the builder reads (e.g. the UCF-101 class tree).
        num_classes: 0 = unconditional (labels dropped); > 0 must equal the number of classes the index finds.
        frame_interval: frames between sampled frames; the window spans num_frames * frame_interval frames.
        clip_sampling: "linspace" (decoded-video rule) or "stride" (frame-folder rule); see the module doc.
        min_frames: videos with fewer frames are skipped; None = the fewest the rule can use.
        spatial: "resize_center_crop" (short side, then crop) or "center_crop_resize" (square, then resize).
        flip: horizontally flip whole training clips with p = 0.5 (never outside the "train" split).
        seed: seeds the clips of non-training splits.
        decode_threads: decord threads per reader (1 suits many DataLoader workers).
        probe_workers: threads that count frames while the index is built.
        frame_counts: a JSON file that keeps the video files' frame counts (keyed by path, size and mtime)
            between runs, so a restart, another split or another rank does not open every video again.
        """
        for name, value, low in [
            ("num_frames", num_frames, 1),
            ("resolution", resolution, 1),
            ("num_classes", num_classes, 0),
            ("frame_interval", frame_interval, 1),
            ("seed", seed, 0),
            ("decode_threads", decode_threads, 0),
            ("probe_workers", probe_workers, 1),
        ]:
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
        if clip_sampling not in CLIP_SAMPLING:
            raise ValueError(f"clip_sampling must be one of {CLIP_SAMPLING}, got {clip_sampling!r}.")
        if spatial not in SPATIAL_TRANSFORMS:
            raise ValueError(f"spatial must be one of {SPATIAL_TRANSFORMS}, got {spatial!r}.")
        needed = min_length(num_frames, frame_interval, clip_sampling)
        if min_frames is not None and (not isinstance(min_frames, int) or min_frames < needed):
            raise ValueError(
                f"min_frames must be null or an int >= {needed} (what clip_sampling={clip_sampling!r} needs "
                f"for num_frames={num_frames}, frame_interval={frame_interval}), got {min_frames!r}."
            )
        self.root = Path(root).expanduser()
        self.split = split
        self.num_frames = num_frames
        self.resolution = resolution
        self.num_classes = num_classes
        self.frame_interval = frame_interval
        self.clip_sampling = clip_sampling
        self.min_frames = min_frames or needed
        self.spatial = spatial
        self.flip = flip
        self.seed = seed
        self.decode_threads = decode_threads
        self.random_clips = split == "train"  # important! every other split sees fixed, seeded clips

        built = index(root=self.root, split=split)
        self.classes = built.classes
        self.check_labels(built)
        if frame_counts is not None:
            load_frame_counts(Path(frame_counts))
        known = len(PROBED)
        self.records, self.lengths, self.skipped = self.probe(built, probe_workers)
        if frame_counts is not None and len(PROBED) > known:  # new videos were counted: keep them
            save_frame_counts(Path(frame_counts), self.root)
        self.bad: set[int] = set()  # items that failed while being read, in this process
        self._read_failures = torch.zeros((), dtype=torch.int64).share_memory_()  # workers count here too

    @property
    def read_failures(self) -> int:
        """Reads that failed so far, in this process and its DataLoader workers (a shared-memory count)."""
        return int(self._read_failures)

    def check_labels(self, built: VideoIndex) -> None:
        """Fail unless a conditional dataset's index has exactly num_classes classes and labels them all."""
        if self.num_classes == 0:
            return
        if len(built.classes) != self.num_classes:
            found = f"{len(built.classes)} classes" if built.classes else "no class labels"
            raise ValueError(
                f"num_classes={self.num_classes} but the index of '{self.root}' ({self.split}) has {found}: "
                "set data.num_classes to match, or 0 for unconditional training."
            )
        unlabelled = [r.path for r in built.records if r.label is None or not 0 <= r.label < self.num_classes]
        assert not unlabelled, f"Records without a valid label in [0, {self.num_classes}): {unlabelled[:3]}"

    def probe(
        self, built: VideoIndex, workers: int
    ) -> tuple[list[VideoRecord], list[int], list[tuple[str, str]]]:
        """Count every video's frames; drop (and count) the unreadable and the too short, with one warning."""

        def length(record: VideoRecord) -> int | str:
            try:
                return count_frames(record, self.decode_threads)
            except READ_ERRORS as error:
                return f"unreadable ({type(error).__name__}: {str(error).strip()[:200]})"

        with ThreadPoolExecutor(workers) as pool:
            lengths = list(pool.map(length, built.records))
        records, kept, skipped = [], [], list(built.skipped)
        for record, n in zip(built.records, lengths):
            if isinstance(n, str):
                skipped.append((record.path, n))
            elif n < self.min_frames:
                skipped.append((record.path, f"too short ({n} frames < min_frames={self.min_frames})"))
            else:
                records.append(record)
                kept.append(n)
        if skipped:
            examples = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
            rank_zero_warn(
                f"{len(skipped)} of {len(built.records) + len(built.skipped)} videos of '{self.root}' "
                f"({self.split}) skipped, e.g. {examples}",
                category=SkippedVideoWarning,
            )
        return records, kept, skipped

    def __len__(self) -> int:
        """Number of readable videos in this split (one clip per video per epoch)."""
        return len(self.records)

    def relative_path(self, index: int) -> str:
        """Path of video `index` relative to the root (how the latent cache names it)."""
        return os.path.relpath(self.records[index].path, self.root)

    def draw(self, index: int) -> tuple[list[int], bool]:
        """The frame indices and the flip of item `index`: random for training, seeded otherwise."""
        generator = None if self.random_clips else clip_generator(self.seed, f"clips/{self.split}", index)
        length = self.lengths[index]
        start = window_start(
            last_start(length, self.num_frames, self.frame_interval, self.clip_sampling), generator
        )
        indices = clip_indices(length, start, self.num_frames, self.frame_interval, self.clip_sampling)
        flip = self.flip and self.random_clips and bool(torch.rand((), generator=generator) < 0.5)
        return indices, flip

    def read(self, index: int, indices: list[int]) -> np.ndarray:
        """Frames `indices` of video `index`, uint8 (t, h, w, c), from the file or the frame folder."""
        record = self.records[index]
        if record.frames:
            return read_frame_folder(record.frames, indices)
        return read_video_file(record.path, indices, self.decode_threads)

    def transform(self, frames: np.ndarray, flip: bool) -> torch.Tensor:
        """uint8 (t, h, w, c) -> the clip (t, c, r, r) in [-1, 1]: spatial transform, flip, rescale."""
        clip = spatial_transform(to_unit(frames), self.resolution, self.spatial)  # (t, c, r, r) in [0, 1]
        if flip:
            clip = clip.flip(-1)  # (t, c, r, r) one decision for the whole clip
        return clip.mul_(2).sub_(1)  # (t, c, r, r) in [-1, 1]

    def load(self, index: int, indices: list[int], flip: bool) -> torch.Tensor:
        """Decode and transform frames `indices` of video `index`: (t, c, r, r) in [-1, 1]."""
        return self.transform(self.read(index, indices), flip)

    def candidates(self, index: int) -> Iterator[int]:
        """Item `index`, then the items after it (wrapping): where a failed read falls back to."""
        index = int(index)  # numpy or tensor indices must behave as ints
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos.")
        return ((index + k) % len(self) for k in range(len(self)))

    def fetch(
        self,
        index: int,
        frame: int | None = None,
        load: Callable[[int, list[int], bool], torch.Tensor] | None = None,
    ) -> tuple[int, torch.Tensor]:
        """(item used, its clip) for item `index`, or only its `frame`-th frame; skips unreadable videos.

        `load(item, indices, flip)` turns a draw into a tensor (default: decode; the latent cache reads
        latents). Every candidate consumes its draw before it is tried, so the RNG stream, and with it every
        later clip, is the same whatever `load` is.
        """
        load = load or self.load
        for candidate in self.candidates(index):
            indices, flip = self.draw(candidate)
            if frame is not None:
                indices = indices[frame : frame + 1]
            if candidate in self.bad:
                continue
            try:
                return candidate, load(candidate, indices, flip)
            except READ_ERRORS as error:
                self.mark_bad(candidate, error)
        raise RuntimeError(f"None of the {len(self)} videos of '{self.root}' ({self.split}) could be read.")

    def mark_bad(self, index: int, error: Exception) -> None:
        """Remember that video `index` failed to read (in this process), count it (in all) and warn."""
        self.bad.add(index)
        self._read_failures += 1
        warnings.warn(
            f"Skipping unreadable video {self.records[index].path} ({type(error).__name__}: "
            f"{str(error).strip()[:200]}); {self.read_failures} skipped while reading.",
            SkippedVideoWarning,
            stacklevel=3,
        )

    def label(self, index: int) -> dict[str, torch.Tensor]:
        """{"label": int64 scalar} of video `index` when conditional, else {}."""
        if self.num_classes == 0:
            return {}
        return {"label": torch.tensor(self.records[index].label, dtype=torch.int64)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"video": (f, c, r, r) float32 in [-1, 1]} plus {"label": int64 scalar} when conditional."""
        used, clip = self.fetch(index)
        return {"video": clip, **self.label(used)}

    def frame(self, index: int, frame_idx: int) -> dict[str, Any]:
        """Frame `frame_idx` of the clip item `index` gives, decoding only that frame (joint training)."""
        used, image = self.fetch(index, frame=frame_idx)
        return {"image": image[0], **self.label(used)}
