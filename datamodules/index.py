"""
Index builders: which videos make up a split of each dataset, and their labels (the official Latte code's
datasets/*_datasets.py read the same layouts).

Every builder is called as `builder(root=Path, split=str) -> VideoIndex` (its other arguments are bound by
Hydra with `_partial_: true`) and only lists files: frame counting, clip sampling and decoding are shared by
`DecodedVideos`. A missing folder raises FileNotFoundError naming the layout the builder expected.

    ffs_index          <root>/<split dir>/**/*.mp4                  FaceForensics (preprocess_ffs/train/...)
    ucf101_index       <root>/<Class>/v_<Class>_gXX_cYY.avi        UCF101, labels = case-sensitive sort
                       (+ optional trainlist0N.txt, testlist0N.txt) of class folders (HammerThrow < Hammering)
    sky_index          <root>/<split dir>/**/<frames>.jpg|png       SkyTimelapse (sky_train/<video>/<clip>/)
    taichi_index       <root>/<split dir>/<video>/<frames> or *.mp4 Taichi-HD, frame folders or video files
    video_folder_index <root>/<split dir>/**/*.<video extension>    any folder of videos (and frame folders)
    single_video_index <root> = one video file or one folder of frames  one-shot fine-tuning (APLA)

Frames of a folder are ordered by the number after the last "_" of the file stem (Latte's key, so
`x_2.jpg` < `x_10.jpg`), falling back to the file name when a stem has no such number.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from datamodules.videos import READ_ERRORS, VideoIndex, VideoRecord, count_frames, min_length

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
UCF101_FOLDS = (1, 2, 3)

#################################################################################
#                                File Listing                                   #
#################################################################################


def require_dir(folder: Path, layout: str) -> None:
    """Raise FileNotFoundError naming the expected `layout` unless `folder` is a directory."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Dataset folder '{folder}' does not exist. Expected layout:\n{layout}\n"
            "Set data.root (or the preset's environment variable / conf/local/default.yaml) to the folder."
        )


def split_folder(root: Path, split: str, split_dirs: Mapping[str, str], layout: str) -> Path:
    """The folder of `split`: root / split_dirs[split], checked to exist."""
    require_dir(root, layout)
    if split not in split_dirs:
        raise ValueError(f"No folder for split '{split}': split_dirs has {sorted(split_dirs)}.")
    folder = root / split_dirs[split]
    require_dir(folder, layout)
    return folder


def visible(name: str) -> bool:
    """False for hidden files and folders (".DS_Store", ".ipynb_checkpoints")."""
    return not name.startswith(".")


def list_videos(folder: Path) -> list[Path]:
    """Every video file under `folder` (any depth), sorted by path."""
    found = []
    for directory, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if visible(d)]
        found += [Path(directory, f) for f in files if visible(f) and f.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


def frame_key(path: str) -> tuple[int, int, str]:
    """Sort key of a frame file: the number after the last "_" of its stem (Latte's order), then the name."""
    tail = Path(path).stem.split("_")[-1]
    return (0, int(tail), path) if tail.isdigit() else (1, 0, path)


def list_frame_folders(folder: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Every folder under `folder` (any depth, itself included) that holds images, with its ordered frames."""
    found = []
    for directory, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if visible(d)]
        images = [f for f in files if visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
        frames = [os.path.join(directory, f) for f in images]
        if frames:
            found.append((Path(directory), tuple(sorted(frames, key=frame_key))))
    return sorted(found)


def video_records(folder: Path, frame_folders: bool) -> list[VideoRecord]:
    """Unlabelled records of the video files (and, if asked, the frame folders) under `folder`."""
    records = [VideoRecord(str(path)) for path in list_videos(folder)]
    if frame_folders:
        records += [VideoRecord(str(path), frames=frames) for path, frames in list_frame_folders(folder)]
    return sorted(records, key=lambda record: record.path)


#################################################################################
#                                Index Builders                                 #
#################################################################################


FFS_LAYOUT = """\
  <root>/                      e.g. preprocess_ffs (Latte's data_path: preprocess_ffs/train/videos/)
    train/videos/*.mp4         one file per video (any video extension, any depth)
    test/videos/*.mp4          optional, for the test split"""


def ffs_index(root: Path, split: str, split_dirs: Mapping[str, str]) -> VideoIndex:
    """FaceForensics: every video file under root / split_dirs[split]; unconditional."""
    return VideoIndex(video_records(split_folder(root, split, split_dirs, FFS_LAYOUT), frame_folders=False))


SKY_LAYOUT = """\
  <root>/                      e.g. sky_timelapse
    sky_train/<video>/<clip>/<name>_<k>.jpg   frame folders at any depth, frames ordered by k
    sky_test/...                              the same, for validation and test"""


def sky_index(root: Path, split: str, split_dirs: Mapping[str, str]) -> VideoIndex:
    """SkyTimelapse: every folder of frames under root / split_dirs[split]; unconditional."""
    folder = split_folder(root, split, split_dirs, SKY_LAYOUT)
    return VideoIndex([VideoRecord(str(path), frames=frames) for path, frames in list_frame_folders(folder)])


TAICHI_LAYOUT = """\
  <root>/                      e.g. taichi-256/frames or taichi-256/videos
    train/<video>/<frame>.png  one frame folder per video, or
    train/<video>.mp4          one video file per video
    test/...                   the same, for validation and test"""


def taichi_index(root: Path, split: str, split_dirs: Mapping[str, str]) -> VideoIndex:
    """Taichi-HD: frame folders and video files under root / split_dirs[split]; unconditional."""
    folder = split_folder(root, split, split_dirs, TAICHI_LAYOUT)
    return VideoIndex(video_records(folder, frame_folders=True))


VIDEO_FOLDER_LAYOUT = """\
  <root>/<split dir>/**/<name>.mp4|.avi|.mov|.mkv|.webm   video files at any depth, and/or
  <root>/<split dir>/**/<folder>/<frames>.jpg|.png        folders of frame images"""


def video_folder_index(root: Path, split: str, split_dirs: Mapping[str, str]) -> VideoIndex:
    """Any folder of videos: video files and frame folders under root / split_dirs[split]; unconditional."""
    folder = split_folder(root, split, split_dirs, VIDEO_FOLDER_LAYOUT)
    return VideoIndex(video_records(folder, frame_folders=True))


UCF101_LAYOUT = """\
  <root>/                      the original UCF-101 tree (Latte's data_path: UCF101/videos/)
    ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi
    ...                        101 class folders; label = position in a case-sensitive sort of their names
  <split_dir>/                 optional (e.g. ucfTrainTestlist): trainlist0N.txt, testlist0N.txt"""


def ucf101_classes(root: Path, exclude: Path | None = None) -> tuple[str, ...]:
    """Class folder names in a case-sensitive sort: the label order of the official checkpoints."""
    return tuple(
        sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir() and visible(entry.name) and (exclude is None or Path(entry.path) != exclude)
        )
    )


def ucf101_index(root: Path, split: str, split_dir: str | None = None, fold: int = 1) -> VideoIndex:
    """UCF101: labelled videos of the class tree; with `split_dir`, only those of the official split list.

    split_dir: folder of the official lists (absolute, or relative to root); train reads trainlist0<fold>.txt,
        every other split testlist0<fold>.txt. None: every video in every split (as Latte trains).
    """
    require_dir(root, UCF101_LAYOUT)
    lists = (root / split_dir).resolve() if split_dir is not None else None
    classes = ucf101_classes(root, exclude=lists)
    label = {name: i for i, name in enumerate(classes)}
    if lists is None:
        records = [
            VideoRecord(str(path), label=label[name]) for name in classes for path in list_videos(root / name)
        ]
        return VideoIndex(records, classes)
    if fold not in UCF101_FOLDS:
        raise ValueError(f"fold must be one of {UCF101_FOLDS} (the official UCF101 splits), got {fold!r}.")
    list_file = lists / f"{'trainlist' if split == 'train' else 'testlist'}{fold:02d}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"UCF101 split list '{list_file}' does not exist. Expected:\n{UCF101_LAYOUT}")
    records, skipped = [], []
    for line in list_file.read_text().splitlines():
        if not line.strip():
            continue
        relative = line.split()[0]  # "Class/v_Class_gXX_cYY.avi [1-based label]": the label is not used
        name, path = relative.split("/")[0], root / relative
        if name not in label:
            skipped.append((str(path), f"class folder '{name}' of {list_file.name} not found"))
        elif not path.is_file():
            skipped.append((str(path), f"listed in {list_file.name} but missing"))
        else:
            records.append(VideoRecord(str(path), label=label[name]))
    return VideoIndex(records, classes, tuple(skipped))


def single_video_index(
    root: Path,
    split: str,
    num_frames: int,
    frame_interval: int,
    clip_sampling: str = "stride",
    num_classes: int = 0,
    label: int | None = None,
    clips_per_epoch: int = 100,
) -> VideoIndex:
    """One video (`root`: a video file or a folder of frames), listed `clips_per_epoch` times: every split
    cuts its clips of num_frames frames, frame_interval apart, from it (training: a random window each time).

    A missing, unreadable or too short video is an error naming it (never a silent skip: it is the only one).
    label: the video's class (num_classes > 0, e.g. a UCF101 class index), None when unconditional.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"the video '{path}' does not exist (data.root: one video file or frame folder)"
        )
    frames = (
        tuple(sorted(map(str, (f for f in path.iterdir() if _is_image(f))), key=frame_key))
        if path.is_dir()
        else ()
    )
    if path.is_dir() and not frames:
        raise ValueError(f"the folder '{path}' holds no frame images ({', '.join(IMAGE_EXTENSIONS)})")
    record = VideoRecord(str(path), label=label, frames=frames)
    try:
        length = count_frames(record)
    except READ_ERRORS as error:
        raise ValueError(f"the video '{path}' could not be read ({type(error).__name__}: {error})") from None
    needed = min_length(num_frames, frame_interval, clip_sampling)
    if length < needed:
        raise ValueError(
            f"the video '{path}' has {length} frames, fewer than the {needed} that a clip of num_frames="
            f"{num_frames} frames {frame_interval} apart needs: lower data.num_frames or "
            "data.dataset.frame_interval"
        )
    if (label is None) != (num_classes == 0) or (label is not None and not 0 <= label < num_classes):
        raise ValueError(
            f"label={label!r} must be null when unconditional, else in [0, num_classes={num_classes})"
        )
    classes = tuple(f"class_{i}" for i in range(num_classes))
    return VideoIndex([record] * clips_per_epoch, classes)


def _is_image(path: Path) -> bool:
    """A visible image file."""
    return path.is_file() and visible(path.name) and path.suffix.lower() in IMAGE_EXTENSIONS
