"""Tests for datamodules/videos.py and datamodules/index.py: tiny fake datasets of real encoded videos."""

import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, DistributedSampler

from datamodules import index
from datamodules.video import VideoDataModule
from datamodules.videos import (
    DecodedVideos,
    SkippedVideoWarning,
    center_crop_resize,
    clip_indices,
    last_start,
    min_length,
    resize_center_crop,
    window_start,
)
from tests.conftest import compose_train
from tests.helpers.fake_videos import (
    UCF101_CLASS_IND,
    UCF_VIDEOS,
    decode_clip,
    make_all,
    touch_later,
    write_frames,
    write_garbage,
    write_video,
)

pytestmark = pytest.mark.filterwarnings("ignore::datamodules.videos.SkippedVideoWarning")

# np.linspace(0, 47, 16, dtype=int): the official Latte FaceForensics/UCF101 __getitem__ on a 48-frame window
LATTE_OFFSETS = [0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43, 47]
STRIDE_OFFSETS = list(range(0, 48, 3))
LOSSY_IDS = {video_id for videos in UCF_VIDEOS.values() for video_id, _, lossy in videos if lossy}
EXPERIMENTS = [
    f"latte_{name}{suffix}" for name in ("ffs", "sky", "ucf101", "taichi") for suffix in ("", "_img")
]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four fake datasets (written once for this file); each preset's data.root."""
    return make_all(tmp_path_factory.mktemp("datasets"))


def ffs(root: Path, split: str = "train", **kwargs) -> DecodedVideos:
    """A FaceForensics dataset as the ffs preset builds it, at 16 x 16 pixels."""
    split_dirs = {"train": "train/videos", "val": "train/videos"}
    options = dict(num_frames=16, resolution=16) | kwargs
    return DecodedVideos(partial(index.ffs_index, split_dirs=split_dirs), root, split, **options)


def sky(root: Path, split: str = "train", **kwargs) -> DecodedVideos:
    """A SkyTimelapse dataset as the sky preset builds it, at 16 x 16 pixels."""
    options = dict(num_frames=16, resolution=16, clip_sampling="stride", min_frames=49, flip=False) | kwargs
    split_dirs = {"train": "sky_train", "val": "sky_test"}
    return DecodedVideos(partial(index.sky_index, split_dirs=split_dirs), root, split, **options)


def ucf101(
    root: Path, split: str = "train", split_dir: str | None = None, fold: int = 1, **kwargs
) -> DecodedVideos:
    """A UCF101 dataset (101 classes) as the ucf101 preset builds it, at 16 x 16 pixels."""
    options = dict(num_frames=16, resolution=16, num_classes=101) | kwargs
    builder = partial(index.ucf101_index, split_dir=split_dir, fold=fold)
    return DecodedVideos(builder, root, split, **options)


#################################################################################
#                             Clip Sampling Rules                               #
#################################################################################


def test_clip_index_rules_match_latte():
    assert clip_indices(48, 0, 16, 3, "linspace") == LATTE_OFFSETS
    assert clip_indices(100, 7, 16, 3, "linspace") == [7 + o for o in LATTE_OFFSETS]
    assert clip_indices(100, 7, 16, 3, "stride") == [7 + o for o in STRIDE_OFFSETS]
    assert clip_indices(20, 0, 16, 3, "linspace") == np.linspace(0, 19, 16, dtype=int).tolist(), "short video"
    assert clip_indices(100, 7, 16, 3, "stylegan_v") == [7 + o for o in STRIDE_OFFSETS]
    assert min_length(16, 3, "linspace") == 16 and min_length(16, 3, "stride") == 46
    assert min_length(16, 3, "stylegan_v") == 46
    generator = torch.Generator().manual_seed(0)
    starts = {window_start(last_start(60, 16, 3, "stride"), generator) for _ in range(400)}
    assert starts == set(range(12)), "start is uniform over [0, length - span - 1], inclusive (Latte)"
    assert {window_start(last_start(48, 16, 3, "linspace"), generator) for _ in range(20)} == {0}
    starts = {window_start(last_start(60, 16, 3, "stylegan_v"), generator) for _ in range(400)}
    assert starts == set(range(15)), "StyleGAN-V: every start whose clip fits, [0, L - 16s + s - 1]"


def test_spatial_transforms_match_latte_geometry():
    clip = torch.arange(2 * 3 * 30 * 50, dtype=torch.float32).reshape(2, 3, 30, 50)
    out = resize_center_crop(clip, 15)  # scale 0.5: 15 x 25, then the centre 15 columns from column 5
    expected = torch.nn.functional.interpolate(clip, scale_factor=0.5, mode="bilinear")[..., 5:20]
    assert out.shape == (2, 3, 15, 15) and torch.equal(out, expected)
    square = center_crop_resize(clip, 30)  # the centre 30 x 30 square, already 30: no resize
    assert torch.equal(square, clip[..., 10:40])
    assert resize_center_crop(torch.rand(1, 3, 240, 320), 256).shape == (1, 3, 256, 256)
    assert resize_center_crop(torch.rand(1, 3, 720, 1280), 256).shape == (1, 3, 256, 256)


#################################################################################
#                            Datasets on Real Files                             #
#################################################################################


def test_ffs_items_shapes_range_and_skipped_files(roots):
    with pytest.warns(SkippedVideoWarning, match="2 of 5 videos"):
        dataset = ffs(roots["ffs"], "val")
    assert len(dataset) == 3, "3 good videos; the text file is no video"
    reasons = dict(dataset.skipped)
    assert "unreadable" in reasons[str(roots["ffs"] / "train/videos/corrupt.mp4")]
    assert "too short (10 frames" in reasons[str(roots["ffs"] / "train/videos/short.mp4")]
    assert sorted(dataset.lengths) == [48, 52, 60]
    for i in range(len(dataset)):
        item = dataset[i]
        video = item["video"]
        assert video.shape == (16, 3, 16, 16) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.1
        assert "label" not in item, "FaceForensics is unconditional"
        frames, video_id, flipped = decode_clip(video)
        indices, _ = dataset.draw(i)
        assert frames == indices, "the decoded frames are exactly the sampled indices"
        assert [f - frames[0] for f in frames] == LATTE_OFFSETS, "decoded videos use Latte's linspace rule"
        assert not flipped, "validation clips are never flipped"


def test_frame_folders_use_the_stride_rule_numeric_order_and_min_frames(roots):
    dataset = sky(roots["sky"], "val", seed=3)
    assert len(dataset) == 2
    for i in range(len(dataset)):
        frames, _, _ = decode_clip(dataset[i]["video"])
        assert [f - frames[0] for f in frames] == STRIDE_OFFSETS, "frames sorted by number: x_2 before x_10"
    with pytest.warns(SkippedVideoWarning, match="too short"):
        train = sky(roots["sky"])
    assert sorted(train.lengths) == [49, 52, 60], "the 30-frame clip is skipped, 49 frames (> 48) kept"
    assert [Path(p).name for p in train.records[0].frames[:3]] == ["v1_1_0.png", "v1_1_1.png", "v1_1_2.png"]
    assert any(r.frames[0].endswith(".jpg") for r in train.records), "jpg frames are read too"


def test_taichi_reads_frame_folders_and_videos_side_by_side(roots):
    dataset = DecodedVideos(
        partial(index.taichi_index, split_dirs={"train": "train"}),
        roots["taichi"],
        num_frames=16,
        resolution=16,
        clip_sampling="stride",
        spatial="center_crop_resize",
    )
    kinds = sorted(bool(record.frames) for record in dataset.records)
    assert kinds == [False, True, True], "one mp4 and two frame folders"
    torch.manual_seed(0)
    ids = sorted(decode_clip(dataset[i]["video"])[1] for i in range(3))
    assert ids == [1, 2, 3]


def test_ucf101_labels_are_a_case_sensitive_sort_of_class_folders(roots):
    dataset = ucf101(roots["ucf101"], "val")
    classes = dataset.classes
    assert len(classes) == 101 and classes == tuple(sorted(UCF101_CLASS_IND))
    assert (classes.index("HammerThrow"), classes.index("Hammering")) == (34, 35)
    assert (classes.index("JumpRope"), classes.index("JumpingJack")) == (46, 47)
    differ = [name for i, name in enumerate(UCF101_CLASS_IND) if classes[i] != name]
    assert sorted(differ) == ["HammerThrow", "Hammering", "JumpRope", "JumpingJack"], "only 4 differ"
    class_of = {vid: name for name, videos in UCF_VIDEOS.items() for vid, _, _ in videos}
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        frames, video_id, _ = decode_clip(item["video"])
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
        assert classes[int(item["label"])] == class_of[video_id], "each clip carries its own class"
        if video_id not in LOSSY_IDS:
            assert [f - frames[0] for f in frames] == LATTE_OFFSETS
        seen.add(video_id)
    assert seen == set(class_of), "without split lists every video is in every split (as Latte trains)"
    with pytest.raises(ValueError, match="num_classes=10 .* 101 classes"):
        ucf101(roots["ucf101"], num_classes=10)
    assert "label" not in ucf101(roots["ucf101"], num_classes=0)[0], "num_classes=0: unconditional UCF101"


def test_ucf101_official_split_lists(roots):
    train = ucf101(roots["ucf101"], "train", split_dir="../ucfTrainTestlist")
    with pytest.warns(SkippedVideoWarning, match="listed in testlist01.txt but missing"):
        test = ucf101(roots["ucf101"], "test", split_dir="../ucfTrainTestlist")
    ids = lambda ds: {decode_clip(ds[i]["video"])[1] for i in range(len(ds))}
    assert ids(train) == {1, 3, 5} and ids(test) == {2, 4, 6}, "trainlist01 vs testlist01"
    assert len(train.classes) == 101, "the list folder is not a class"
    with pytest.raises(ValueError, match="fold"):
        ucf101(roots["ucf101"], split_dir="../ucfTrainTestlist", fold=4)


def test_missing_root_or_split_folder_names_the_expected_layout(tmp_path, roots):
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*train/videos/\*\.mp4"):
        ffs(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere.*101 class folders"):
        ucf101(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"(?s)sky_train"):
        sky(tmp_path)
    with pytest.raises(FileNotFoundError, match="trainlist01.txt"):
        ucf101(roots["ucf101"], split_dir=str(tmp_path))


def test_empty_dataset_fails_at_setup_not_later(tmp_path):
    write_garbage(tmp_path / "train" / "videos" / "bad.mp4")
    write_video(tmp_path / "train" / "videos" / "short.mp4", 1, 8)
    dm = VideoDataModule(
        lambda split, root, **sizes: ffs(root, split, **sizes),
        root=str(tmp_path),
        num_frames=16,
        resolution=16,
        batch_size=1,
        num_workers=0,
        pin_memory=False,
    )
    with pytest.warns(SkippedVideoWarning), pytest.raises(ValueError, match="'train' split .* empty"):
        dm.setup("fit")


def test_frame_counts_are_kept_between_runs_and_redone_for_changed_videos(tmp_path, monkeypatch):
    from datamodules import videos

    folder = tmp_path / "train" / "videos"
    for video_id, n in ((1, 50), (2, 52), (3, 48)):
        write_video(folder / f"v{video_id}.mp4", video_id, n)
    opened = []
    reader = videos.decord.VideoReader
    monkeypatch.setattr(
        videos.decord, "VideoReader", lambda path, **kw: opened.append(path) or reader(path, **kw)
    )
    counts = tmp_path / "counts" / "ffs.json"
    monkeypatch.setattr(videos, "PROBED", {})
    first = ffs(tmp_path, frame_counts=str(counts))
    assert len(opened) == 3 and sorted(first.lengths) == [48, 50, 52]

    monkeypatch.setattr(videos, "PROBED", {})  # a new process: only the file remembers
    touch_later(folder / "v2.mp4")
    again = ffs(tmp_path, frame_counts=str(counts))
    assert opened[3:] == [str(folder / "v2.mp4")], "unchanged videos are not opened again; changed ones are"
    assert again.lengths == first.lengths
    monkeypatch.setattr(videos, "PROBED", {})
    ffs(tmp_path, frame_counts=str(counts))
    assert len(opened) == 4, "the re-counted video was written back"


def test_a_video_that_fails_while_reading_is_replaced_by_the_next(tmp_path):
    folder = tmp_path / "train" / "videos"
    for video_id in (1, 2, 3):
        write_video(folder / f"v{video_id}.mp4", video_id, 50)
    dataset = ffs(tmp_path, "val")
    write_garbage(folder / "v2.mp4")  # broken after the index was built: found only when read
    with pytest.warns(SkippedVideoWarning, match="v2.mp4.*1 skipped while reading"):
        item = dataset[1]
    assert decode_clip(item["video"])[1] == 3, "the next readable video stands in, never a blank tensor"
    assert dataset.read_failures == 1 and dataset.bad == {1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad video is skipped silently afterwards
        assert decode_clip(dataset[1]["video"])[1] == 3
    frames = write_frames(tmp_path / "frames" / "train" / "clip", 4, 50)
    (frames / "clip_7.png").write_bytes(b"not a png")  # a corrupt frame inside a folder
    write_frames(tmp_path / "frames" / "train" / "other", 5, 50)
    folders = DecodedVideos(
        partial(index.video_folder_index, split_dirs={"val": "train"}), tmp_path / "frames", "val", 16, 16
    )
    with pytest.warns(SkippedVideoWarning, match="clip"):
        ids = [decode_clip(folders[i]["video"])[1] for i in range(2)]
    assert ids == [5, 5] and folders.read_failures == 1


#################################################################################
#                       Determinism, Flips and DDP Sharding                     #
#################################################################################


def test_validation_clips_are_seeded_and_training_clips_random(roots):
    first, again = ffs(roots["ffs"], "val"), ffs(roots["ffs"], "val")
    torch.manual_seed(0)
    clips = [first[i]["video"] for i in range(3)]
    torch.manual_seed(1)
    assert all(torch.equal(clips[i], again[i]["video"]) for i in range(3)), "same clips in any process"
    assert all(torch.equal(clips[i], first[i]["video"]) for i in range(3)), "and in every epoch"
    other_seed = ffs(roots["ffs"], "val", seed=1)
    assert any(decode_clip(other_seed[i]["video"])[0] != decode_clip(clips[i])[0] for i in range(3))
    train = ffs(roots["ffs"], "train")
    torch.manual_seed(0)
    draws = [decode_clip(train[0]["video"]) for _ in range(40)]
    assert len({frames[0] for frames, _, _ in draws}) > 5, "training windows start anywhere in the video"
    assert {flipped for _, _, flipped in draws} == {True, False}, "training clips are flipped half the time"
    torch.manual_seed(0)
    assert [decode_clip(train[0]["video"]) for _ in range(40)] == draws, "torch's seed fixes training draws"
    no_flip = sky(roots["sky"], "train")
    assert not any(decode_clip(no_flip[0]["video"])[2] for _ in range(20)), "Sky clips are never flipped"


def test_two_ddp_ranks_see_disjoint_items_that_cover_the_split(roots):
    for split, shuffle in [("val", False), ("train", True)]:
        dataset = ucf101(roots["ucf101"], split)  # 6 videos: 3 per rank, no padding
        seen = []
        for rank in (0, 1):
            torch.manual_seed(rank)  # each rank's own RNG for its training clips
            sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=shuffle, seed=3407)
            loader = DataLoader(dataset, batch_size=1, sampler=sampler)
            seen.append([decode_clip(batch["video"][0])[1] for batch in loader])
        assert len(seen[0]) == len(seen[1]) == 3, f"{split}: the split is sharded in halves"
        assert not set(seen[0]) & set(seen[1]), f"{split}: the two ranks see disjoint videos"
        assert set(seen[0]) | set(seen[1]) == {1, 2, 3, 4, 5, 6}, f"{split}: together they see every video"


#################################################################################
#                           DataModule and Presets                              #
#################################################################################


def test_joint_training_appends_labelled_frames_of_other_videos(roots):
    dm = VideoDataModule(
        lambda split, root, **sizes: ucf101(root, split, **sizes),
        root=str(roots["ucf101"]),
        num_frames=16,
        resolution=16,
        num_classes=101,
        batch_size=3,
        num_workers=0,
        pin_memory=False,
        use_image_num=4,
    )
    dm.setup("fit")
    class_of = {vid: name for name, videos in UCF_VIDEOS.items() for vid, _, _ in videos}
    classes = dm.splits["train"].classes
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (3, 16 + 4, 3, 16, 16) and batch["image_label"].shape == (3, 4)
    for video, label, image_labels in zip(batch["video"], batch["label"], batch["image_label"]):
        own = decode_clip(video[:16])[1]
        assert classes[int(label)] == class_of[own]
        for image, image_label in zip(video[16:], image_labels):
            _, image_id, _ = decode_clip(image[None])
            assert image_id != own, "images come from other videos"
            assert classes[int(image_label)] == class_of[image_id], "each image carries its own video's label"


def test_skipped_videos_are_counted_once_for_logging(roots):
    dm = VideoDataModule(
        lambda split, root, **sizes: ffs(root, split, **sizes),
        root=str(roots["ffs"]),
        num_frames=16,
        resolution=16,
        batch_size=2,
        num_workers=0,
        pin_memory=False,
    )
    with pytest.warns(SkippedVideoWarning):
        dm.setup("fit")
    assert dm.skipped_videos == 2, "train and val share the folder: corrupt.mp4 and short.mp4 count once"


def test_read_failures_in_dataloader_workers_reach_the_logged_count(tmp_path):
    folder = tmp_path / "train" / "videos"
    for video_id in (1, 2, 3, 4):
        write_video(folder / f"v{video_id}.mp4", video_id, 50)
    dm = VideoDataModule(
        lambda split, root, **sizes: ffs(root, split, **sizes),
        root=str(tmp_path),
        num_frames=16,
        resolution=16,
        batch_size=2,
        num_workers=1,  # the failure happens in a worker process
        pin_memory=False,
    )
    dm.setup("validate")
    write_garbage(folder / "v2.mp4")  # broken after the index was built: found only when read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = sum(len(batch["video"]) for batch in dm.val_dataloader())
    assert items == 4 and dm.skipped_videos == 1, "a worker's read failure must be counted where it is logged"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_builds_its_datamodule_on_fake_data(tmp_path, roots, experiment):
    name = experiment.removeprefix("latte_").removesuffix("_img")
    overrides = [
        f"experiment={experiment}",
        f"data.root={roots[name]}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pin_memory=false",
    ]
    cfg = compose_train(tmp_path, overrides)
    assert cfg.backbone.size == "XL" and cfg.backbone.patch_size == 2 and cfg.trainer.accelerator == "gpu"
    assert (cfg.data.num_frames, cfg.data.resolution, cfg.data.dataset.frame_interval) == (16, 256, 3)
    assert cfg.module.optimizer.lr == 1e-4 and cfg.module.ema_decay == 0.9999
    joint = experiment.endswith("_img")
    assert cfg.data.use_image_num == (8 if joint else 0)
    assert cfg.sampler.cfg_scale == (7.0 if name == "ucf101" else 1.0)
    dm = instantiate(cfg.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedVideoWarning)
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 16 + (8 if joint else 0), 3, 256, 256)
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert ("label" in batch) == (name == "ucf101")
    val = next(iter(dm.val_dataloader()))
    assert val["video"].shape[1:] == (16, 3, 256, 256)
