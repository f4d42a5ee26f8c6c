"""Tests for datamodules/: the synthetic shapes dataset and the generic VideoDataModule."""

import dataclasses
import math
import time
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from datamodules.synthetic import SHAPES, SyntheticVideos, bounce, coverage, render_clip, signed_distance
from datamodules.video import VideoDataModule, WithImageFrames, collate_clips
from tests.helpers.sample_checks import (
    looks_like_the_data,
    motion_concentration,
    palette_distance,
    shape_frames,
)

#################################################################################
#                               SyntheticVideos                                 #
#################################################################################


def test_synthetic_item_layout():
    dataset = SyntheticVideos(num_frames=6, resolution=32, num_classes=4, num_videos=5)
    assert len(dataset) == 5
    item = dataset[3]
    video = item["video"]
    assert video.shape == (6, 3, 32, 32) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.1
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    assert "label" not in SyntheticVideos(num_classes=0, num_videos=1)[0]
    with pytest.raises(IndexError):
        dataset[5]


def test_synthetic_is_deterministic_per_index_and_split():
    train = SyntheticVideos("train", num_frames=4, resolution=16, num_videos=8)
    again = SyntheticVideos("train", num_frames=4, resolution=16, num_videos=8)
    assert torch.equal(train[2]["video"], again[2]["video"])
    assert torch.equal(train[2]["video"], train[torch.tensor(2)]["video"])
    assert not torch.equal(train[2]["video"], train[3]["video"])
    for split in ("val", "test"):
        other = SyntheticVideos(split, num_frames=4, resolution=16, num_videos=8)
        assert not torch.equal(train[2]["video"], other[2]["video"]), f"{split} must not repeat train clips"
    other_seed = SyntheticVideos("train", num_frames=4, resolution=16, num_videos=8, seed=1)
    assert not torch.equal(train[2]["video"], other_seed[2]["video"])


def test_synthetic_frames_move_smoothly():
    dataset = SyntheticVideos(num_frames=8, resolution=32, num_videos=16)
    for index in range(4):
        video = dataset[index]["video"].flatten(1)  # (f, 3*r*r)
        step = (video[1:] - video[:-1]).abs().mean(dim=1)  # (f-1,)
        assert (step > 1e-3).all(), "every frame must differ from the previous one"
        correlation = torch.corrcoef(video)  # (f, f)
        assert correlation.diagonal(1).min() > 0.8, "consecutive frames must be strongly correlated"
    other = dataset[5]["video"].flatten(1)
    assert torch.corrcoef(torch.stack([video[0], other[0]]))[0, 1] < 0.8, "different clips look different"


def test_synthetic_shapes_move_on_a_still_background():
    recipe = SyntheticVideos(num_videos=1).recipe(0)
    still = dataclasses.replace(recipe, wave_drifts=torch.zeros_like(recipe.wave_drifts))
    changed = lambda video: ((video[0] - video[-1]).abs().amax(dim=0) > 0).float().mean()  # pixel fraction
    assert changed(render_clip(recipe, 6, 32)) > 0.9, "the background drifts everywhere"
    assert 0.01 < changed(render_clip(still, 6, 32)) < 0.5, "without drift only the shapes' pixels change"


def test_bounce_keeps_motion_inside_and_continuous():
    position = torch.linspace(-3, 3, 601)
    folded = bounce(position, torch.tensor(0.2), torch.tensor(0.8))
    assert folded.min() >= 0.2 - 1e-6 and folded.max() <= 0.8 + 1e-6
    assert (folded.diff().abs() <= 0.01 + 1e-6).all(), "reflection must not jump"
    inside = (position > 0.2) & (position < 0.8)
    torch.testing.assert_close(folded[inside], position[inside])


@pytest.mark.parametrize(
    ("shape", "area"),  # areas in units of radius**2, from the shape definitions
    [
        ("circle", math.pi),
        ("square", 1.7**2),
        ("triangle", 3 * math.sqrt(3) * 0.7**2),
        ("ring", math.pi * 0.6975),
    ],
)
def test_shape_geometry_is_antialiased_and_has_the_right_area(shape: str, area: float):
    grid = torch.arange(64, dtype=torch.float32) + 0.5
    dx, dy = grid[None, None, None, :] - 32, grid[None, None, :, None] - 32  # (1, 1, 1, r), (1, 1, r, 1)
    angle = torch.full((1, 1), 0.3)
    alpha = coverage(signed_distance(SHAPES.index(shape), dx, dy, angle, torch.tensor(16.0)))  # (1, 1, r, r)
    assert abs(alpha.sum().item() / (area * 16**2) - 1) < 0.02
    edge = ((alpha > 0.05) & (alpha < 0.95)).sum()
    assert edge > 20, "edges must have partial coverage (anti-aliasing)"
    assert alpha.min() == 0 and alpha.max() == 1


def test_synthetic_label_is_the_shape_type_and_covers_all_classes():
    dataset = SyntheticVideos(num_frames=2, resolution=16, num_classes=4, num_videos=64)
    labels = [int(dataset[i]["label"]) for i in range(64)]
    assert labels == [dataset.recipe(i).shape for i in range(64)]
    assert set(labels) == {0, 1, 2, 3}
    two = SyntheticVideos(num_frames=2, resolution=16, num_classes=2, num_videos=64)
    assert {int(two[i]["label"]) for i in range(64)} == {0, 1}, "num_classes=2 uses circles and squares only"
    assert {SyntheticVideos(num_videos=64).recipe(i).shape for i in range(64)} == {0, 1, 2, 3}


def test_synthetic_is_fast():
    dataset = SyntheticVideos(num_frames=16, resolution=64, num_videos=20)
    dataset[0]
    start = time.perf_counter()
    for index in range(20):
        dataset[index]
    # a guard against a pathological slowdown (a clip takes a few ms), loose enough for a loaded machine
    assert (time.perf_counter() - start) / 20 < 0.5, "a 16x64x64 clip should take a few ms"


def test_synthetic_rejects_bad_arguments():
    for kwargs, name in [
        ({"num_classes": 5}, "num_classes"),
        ({"num_classes": -1}, "num_classes"),
        ({"split": "validation"}, "split"),
        ({"num_frames": 0}, "num_frames"),
        ({"resolution": 4}, "resolution"),
        ({"num_videos": -1}, "num_videos"),
        ({"max_shapes": 4}, "max_shapes"),
        ({"shape_sizes": (0.2, 0.1)}, "shape_sizes"),
        ({"shape_sizes": (0.1, 0.4)}, "shape_sizes"),  # a triangle's corner would leave the frame
        ({"num_palettes": -1}, "num_palettes"),
    ]:
        with pytest.raises(ValueError, match=name):
            SyntheticVideos(**kwargs)


def test_easy_synthetic_has_one_bigger_shape_on_shared_palettes_and_passes_the_sample_checks():
    easy = dict(num_frames=8, resolution=32, max_shapes=1, shape_sizes=(0.18, 0.3), num_palettes=4)
    train, val = SyntheticVideos("train", **easy), SyntheticVideos("val", **easy)
    recipes = [dataset.recipe(i) for dataset in (train, val) for i in range(40)]
    assert {len(recipe.sizes) for recipe in recipes} == {1}
    assert all(0.18 <= float(recipe.sizes[0]) <= 0.3 for recipe in recipes)
    palettes = {tuple(recipe.background_colors.flatten().tolist()) for recipe in recipes}
    assert palettes == {tuple(p.flatten().tolist()) for p in train.palettes}, (
        "4 palettes, shared by the splits"
    )
    # The quickstart test's checks of its samples (tests/helpers/sample_checks.py) pass on the data itself.
    clips = np.stack([train[i]["video"].permute(0, 2, 3, 1).numpy() * 0.5 + 0.5 for i in range(8)])
    noise = np.random.default_rng(0).random(clips.shape)
    assert max(palette_distance(clip, train.palettes.numpy()) for clip in clips) < 0.02
    assert min(palette_distance(video, train.palettes.numpy()) for video in noise) > 0.2
    assert min(shape_frames(clip) for clip in clips) == 1 and max(shape_frames(video) for video in noise) == 0
    assert min(motion_concentration(clip) for clip in clips) > 0.5
    assert max(motion_concentration(video) for video in noise) < 0.25
    # The quickstart's criterion on 4 videos: every 4 clips pass it, noise and flat palettes fail it.
    palettes = train.palettes.numpy()
    assert all(looks_like_the_data(clips[i : i + 4], palettes)[0] for i in (0, 4))
    assert not looks_like_the_data(noise[:4], palettes)[0]
    flat = np.broadcast_to(palettes[:, :1, None, None], (4, 8, 32, 32, 3))  # right colours, no shape
    assert not looks_like_the_data(flat, palettes)[0]


#################################################################################
#                               VideoDataModule                                 #
#################################################################################


def synthetic(num_videos: int = 10) -> partial:
    """A SyntheticVideos factory, as Hydra builds it with `_partial_: true`."""
    return partial(SyntheticVideos, num_videos=num_videos)


def datamodule(factory=None, **kwargs) -> VideoDataModule:
    """A tiny CPU DataModule: 4 frames of 16x16, batches of 4."""
    options = dict(num_frames=4, resolution=16, batch_size=4, num_workers=0, pin_memory=False) | kwargs
    return VideoDataModule(factory or synthetic(), **options)


def test_datamodule_batch_layout():
    dm = datamodule(num_classes=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 4, 3, 16, 16) and batch["video"].dtype == torch.float32
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert ((batch["label"] >= 0) & (batch["label"] < 3)).all()
    dm = datamodule()
    dm.setup("fit")
    assert "label" not in next(iter(dm.train_dataloader())), "unconditional batches carry no label"


def test_datamodule_train_drops_last_and_val_keeps_it():
    dm = datamodule(val_batch_size=3)
    dm.setup("fit")
    assert [len(b["video"]) for b in dm.train_dataloader()] == [4, 4], "10 clips, batch 4, drop_last"
    assert [len(b["video"]) for b in dm.val_dataloader()] == [3, 3, 3, 1]


def test_datamodule_val_is_deterministic_and_train_shuffles():
    dm = datamodule()
    dm.setup("fit")
    first = torch.cat([b["video"] for b in dm.val_dataloader()])
    second = torch.cat([b["video"] for b in dm.val_dataloader()])
    assert torch.equal(first, second)
    assert torch.equal(first[0], dm.splits["val"][0]["video"]), "val keeps the dataset order"
    loader = dm.train_dataloader()
    epochs = [torch.cat([b["video"] for b in loader]) for _ in range(2)]  # a finished pass: the next epoch
    assert not torch.equal(epochs[0], epochs[1]), "train order is reshuffled every epoch"


def test_datamodule_calls_the_factory_with_its_sizes():
    calls = []

    def factory(**kwargs) -> Dataset:
        calls.append(kwargs)
        return SyntheticVideos(**kwargs, num_videos=4)

    dm = datamodule(factory, num_classes=2, val_split="test")
    dm.setup("fit")
    expected = dict(num_frames=4, resolution=16, num_classes=2)
    assert calls == [dict(split="train", **expected), dict(split="test", **expected)]


def test_datamodule_empty_split_fails_at_setup_naming_it():
    with pytest.raises(ValueError, match="'train' split .* empty"):
        datamodule(synthetic(num_videos=0)).setup("fit")

    def empty_val(split: str, **kwargs) -> Dataset:
        return SyntheticVideos(split, **kwargs, num_videos=0 if split == "val" else 8)

    with pytest.raises(ValueError, match="'val' split .* empty"):
        datamodule(empty_val).setup("fit")
    with pytest.raises(ValueError, match="batch_size=4"):
        datamodule(synthetic(num_videos=3)).setup("fit")


def test_datamodule_rejects_bad_arguments():
    for kwargs, name in [
        ({"num_frames": 0}, "num_frames"),
        ({"resolution": 4}, "resolution"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_batch_size": 0}, "val_batch_size"),
        ({"num_classes": -1}, "num_classes"),
        ({"num_workers": -1}, "num_workers"),
        ({"use_image_num": -1}, "use_image_num"),
        ({"use_image_num": 1.5}, "use_image_num"),
        ({"image_seed": -1}, "image_seed"),
    ]:
        with pytest.raises(ValueError, match=name):
            datamodule(**kwargs)
    with pytest.raises(ValueError, match="dataset"):
        VideoDataModule("not a factory")


def test_datamodule_catches_channels_first_clips():
    class ChannelsFirst(Dataset):
        def __init__(self, **kwargs):
            self.inner = SyntheticVideos(**kwargs, num_videos=8)

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, index: int) -> dict:
            return {"video": self.inner[index]["video"].transpose(0, 1)}  # (c, f, h, w): the wrong layout

    dm = datamodule(ChannelsFirst, num_frames=5)
    dm.setup("fit")
    with pytest.raises(AssertionError, match="num_frames=5"):
        next(iter(dm.train_dataloader()))


def test_datamodule_with_workers():
    dm = datamodule(num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.drop_last
    assert next(iter(loader))["video"].shape == (4, 4, 3, 16, 16)


#################################################################################
#                         Image-Video Joint Training                            #
#################################################################################


def clip_index(video: torch.Tensor, clips: list[torch.Tensor]) -> int:
    """The index of the one clip whose frames open `video` (f + k, c, h, w)."""
    matches = [i for i, clip in enumerate(clips) if torch.equal(video[: len(clip)], clip)]
    assert len(matches) == 1, f"the video frames must be exactly one clip of the dataset, matched {matches}"
    return matches[0]


def test_joint_batch_layout_with_and_without_labels():
    dm = datamodule(num_classes=3, use_image_num=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 4 + 3, 3, 16, 16), "images are appended after the video frames"
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert batch["image_label"].shape == (4, 3) and batch["image_label"].dtype == torch.int64
    assert ((batch["image_label"] >= 0) & (batch["image_label"] < 3)).all()
    dm = datamodule(use_image_num=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 6, 3, 16, 16)
    assert "label" not in batch and "image_label" not in batch, "unconditional batches carry no labels"


def test_joint_images_are_frames_of_other_clips_with_their_labels():
    dm = datamodule(synthetic(num_videos=8), num_classes=4, use_image_num=5)
    dm.setup("fit")
    dataset = dm.splits["train"]
    clips = [dataset[i]["video"] for i in range(len(dataset))]
    labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    wrapper = WithImageFrames(dataset, use_image_num=5, num_frames=4, num_classes=4)
    seen = []
    for batch in dm.train_dataloader():
        for video, label, image_label in zip(batch["video"], batch["label"], batch["image_label"]):
            own = clip_index(video, clips)
            assert int(label) == labels[own], "the video keeps its own label"
            for image, image_class, (clip, frame) in zip(video[4:], image_label, wrapper.image_sources(own)):
                assert clip != own, "an image must come from another clip"
                assert torch.equal(image, clips[clip][frame]), "an image is one frame of the drawn clip"
                assert int(image_class) == labels[clip], "an image carries its own clip's label"
                seen.append((clip, frame))
    assert len(seen) == 8 * 5
    assert len({clip for clip, _ in seen}) > 3 and len({frame for _, frame in seen}) > 2, "draws must vary"


def test_joint_never_draws_the_own_clip_and_allows_more_images_than_clips():
    dataset = SyntheticVideos(num_frames=4, resolution=16, num_videos=3)
    wrapper = WithImageFrames(dataset, use_image_num=20, num_frames=4, num_classes=0)
    for index in range(3):
        sources = wrapper.image_sources(index)
        assert len(sources) == 20
        assert {clip for clip, _ in sources} == {0, 1, 2} - {index}, "draws cover every other clip, not own"
        assert all(0 <= frame < 4 for _, frame in sources)
    assert wrapper[torch.tensor(1)]["video"].shape == (24, 3, 16, 16)
    single = WithImageFrames(SyntheticVideos(num_frames=4, resolution=16, num_videos=1), 3, 4, 0)
    assert {clip for clip, _ in single.image_sources(0)} == {0}, "a lone clip can only offer its own frames"
    dm = datamodule(synthetic(num_videos=4), use_image_num=6)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["video"].shape == (4, 10, 3, 16, 16), "draws with replacement"
    with pytest.raises(IndexError):
        wrapper.image_sources(3)
    with pytest.raises(ValueError, match="use_image_num"):
        WithImageFrames(dataset, use_image_num=0, num_frames=4, num_classes=0)


def test_joint_images_are_deterministic_across_epochs_and_workers():
    def images_per_clip(num_workers: int, image_seed: int = 0) -> dict[int, torch.Tensor]:
        """{clip index: its (k, c, h, w) images} over two shuffled epochs, checking both epochs agree."""
        dm = datamodule(
            synthetic(num_videos=8), use_image_num=3, num_workers=num_workers, image_seed=image_seed
        )
        dm.setup("fit")
        clips = [dm.splits["train"][i]["video"] for i in range(8)]
        found: dict[int, torch.Tensor] = {}
        for epoch in range(2):
            torch.manual_seed(epoch)  # a different order per epoch
            for batch in dm.train_dataloader():
                for video in batch["video"]:
                    own = clip_index(video, clips)
                    assert own not in found or torch.equal(found[own], video[4:]), "same images every epoch"
                    found[own] = video[4:]
        return found

    in_process, in_worker = images_per_clip(num_workers=0), images_per_clip(num_workers=1)
    assert sorted(in_process) == list(range(8))
    assert all(torch.equal(in_process[i], in_worker[i]) for i in range(8)), "workers draw the same images"
    other_seed = images_per_clip(num_workers=0, image_seed=1)
    assert not all(torch.equal(in_process[i], other_seed[i]) for i in range(8)), "image_seed changes draws"


def test_joint_validation_and_test_batches_have_no_images():
    dm = datamodule(num_classes=2, use_image_num=3, val_batch_size=3)
    dm.setup("fit")
    dm.setup("test")
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert batch["video"].shape[1:] == (4, 3, 16, 16), "evaluation clips are video-only"
            assert "image_label" not in batch and batch["label"].shape == (len(batch["video"]),)
    assert torch.equal(next(iter(dm.val_dataloader()))["video"][0], dm.splits["val"][0]["video"])


def test_joint_collate_checks_the_exact_frame_count_and_image_labels():
    def samples(frames: int, image_label: torch.Tensor | None = None) -> list[dict]:
        """Two fake items of `frames` frames, labelled, with an optional image_label."""
        item = {"video": torch.zeros(frames, 3, 8, 8), "label": torch.tensor(1)}
        return [item | ({"image_label": image_label} if image_label is not None else {})] * 2

    sizes = dict(num_frames=4, resolution=8, num_classes=2)
    batch = collate_clips(samples(6, torch.tensor([0, 1])), **sizes, use_image_num=2)
    assert batch["video"].shape == (2, 6, 3, 8, 8) and batch["image_label"].shape == (2, 2)
    with pytest.raises(AssertionError, match="num_frames=4 on dim 1"):
        collate_clips(samples(6), **sizes)  # extra frames without joint training
    with pytest.raises(AssertionError, match="use_image_num=2"):
        collate_clips(samples(4, torch.tensor([0, 1])), **sizes, use_image_num=2)  # images missing
    with pytest.raises(AssertionError, match="use_image_num=2"):
        collate_clips(samples(7, torch.tensor([0, 1])), **sizes, use_image_num=2)  # one frame too many
    with pytest.raises(AssertionError, match="image_label"):
        collate_clips(samples(6), **sizes, use_image_num=2)
    with pytest.raises(AssertionError, match="image_label"):
        collate_clips(samples(6, torch.tensor([0, 1, 1])), **sizes, use_image_num=2)


def test_joint_reads_images_through_a_dataset_frame_method_when_offered():
    class CheapFrames(SyntheticVideos):
        """SyntheticVideos that records clip reads and offers a single-frame read."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.reads, self.frames = [], []

        def __getitem__(self, index: int) -> dict:
            self.reads.append(int(index))
            return super().__getitem__(index)

        def frame(self, index: int, frame_idx: int) -> dict:
            self.frames.append((index, frame_idx))
            item = super().__getitem__(index)
            return {"image": item["video"][frame_idx], "label": item["label"]}

    sizes = dict(num_frames=4, resolution=16, num_classes=4, num_videos=6)
    cheap = WithImageFrames(CheapFrames(**sizes), use_image_num=3, num_frames=4, num_classes=4)
    plain = WithImageFrames(SyntheticVideos(**sizes), use_image_num=3, num_frames=4, num_classes=4)
    item, expected = cheap[2], plain[2]
    assert cheap.dataset.reads == [2], "only the item's own clip is read whole"
    assert cheap.dataset.frames == cheap.image_sources(2), "every image comes through frame()"
    assert torch.equal(item["video"], expected["video"]), "frame() and the fallback give the same images"
    assert torch.equal(item["image_label"], expected["image_label"])
