"""Tiny fake copies of the FaceForensics, UCF101, SkyTimelapse and Taichi-HD layouts, with real videos.

Every frame says where it came from: channel 0 = 4 * frame number, channel 1 = 20 * video id + 10, and
channel 2 is dark on the left half and bright on the right (so a flip shows). Videos are H.264 in mp4 or avi
containers, near-lossless (4:4:4, crf 0: decoded values are off by at most 1), so `decode_clip` reads back
which video, which frames and whether the clip was flipped, after any resize or crop.
"""

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image

HEIGHT, WIDTH = 32, 40
DARK, BRIGHT = 40, 215
LOSSLESS = {
    "codec": "libx264",
    "pixelformat": "yuv444p",
    "ffmpeg_params": ["-crf", "0", "-preset", "ultrafast"],
}
LOSSY = {"codec": "mpeg4", "pixelformat": "yuv420p", "ffmpeg_params": ["-q:v", "3"]}  # UCF101's own codec

# The 101 class names in the order of the official classInd.txt (1-based there).
UCF101_CLASS_IND = """
ApplyEyeMakeup ApplyLipstick Archery BabyCrawling BalanceBeam BandMarching BaseballPitch Basketball
BasketballDunk BenchPress Biking Billiards BlowDryHair BlowingCandles BodyWeightSquats Bowling
BoxingPunchingBag BoxingSpeedBag BreastStroke BrushingTeeth CleanAndJerk CliffDiving CricketBowling
CricketShot CuttingInKitchen Diving Drumming Fencing FieldHockeyPenalty FloorGymnastics FrisbeeCatch
FrontCrawl GolfSwing Haircut Hammering HammerThrow HandstandPushups HandstandWalking HeadMassage
HighJump HorseRace HorseRiding HulaHoop IceDancing JavelinThrow JugglingBalls JumpingJack JumpRope
Kayaking Knitting LongJump Lunges MilitaryParade Mixing MoppingFloor Nunchucks ParallelBars PizzaTossing
PlayingCello PlayingDaf PlayingDhol PlayingFlute PlayingGuitar PlayingPiano PlayingSitar PlayingTabla
PlayingViolin PoleVault PommelHorse PullUps Punch PushUps Rafting RockClimbingIndoor RopeClimbing Rowing
SalsaSpin ShavingBeard Shotput SkateBoarding Skiing Skijet SkyDiving SoccerJuggling SoccerPenalty
StillRings SumoWrestling Surfing Swing TableTennisShot TaiChi TennisSwing ThrowDiscus TrampolineJumping
Typing UnevenBars VolleyballSpiking WalkingWithDog WallPushups WritingOnBoard YoYo
""".split()

#################################################################################
#                                Frames and Files                               #
#################################################################################


def frame_pixels(video_id: int, k: int) -> np.ndarray:
    """Frame k of video `video_id`: uint8 (HEIGHT, WIDTH, 3) encoding both numbers."""
    assert 4 * k <= 255 and 20 * video_id + 10 <= 255, "frame or video id too large to encode in a uint8"
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[..., 0] = 4 * k
    frame[..., 1] = 20 * video_id + 10
    frame[:, : WIDTH // 2, 2] = DARK
    frame[:, WIDTH // 2 :, 2] = BRIGHT
    return frame


def write_video(path: Path, video_id: int, num_frames: int, lossy: bool = False) -> Path:
    """An encoded video file (mp4 or avi, by suffix) of `num_frames` frames of `video_id`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = LOSSY if lossy else LOSSLESS
    writer = imageio.get_writer(path, fps=10, macro_block_size=1, ffmpeg_log_level="error", **options)
    for k in range(num_frames):
        writer.append_data(frame_pixels(video_id, k))
    writer.close()
    return path


def write_frames(folder: Path, video_id: int, num_frames: int, suffix: str = ".png") -> Path:
    """A frame folder `<folder>/<name>_<k><suffix>`, k unpadded (so a name sort would misorder them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(num_frames):
        Image.fromarray(frame_pixels(video_id, k)).save(folder / f"{folder.name}_{k}{suffix}", quality=100)
    return folder


def write_garbage(path: Path, size: int = 4096) -> Path:
    """A file of random bytes: a corrupt video or image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(len(str(path))).bytes(size))
    return path


def decode_clip(clip: torch.Tensor) -> tuple[list[int], int, bool]:
    """(frame numbers, video id, flipped) of a transformed clip (f, 3, h, w) in [-1, 1]."""
    assert clip.ndim == 4 and clip.shape[1] == 3, f"expected (f, 3, h, w), got {tuple(clip.shape)}"
    pixels = (clip + 1) * 127.5  # (f, 3, h, w) in [0, 255]
    frames = (pixels[:, 0].mean(dim=(1, 2)) / 4).round().long().tolist()
    ids = ((pixels[:, 1].mean(dim=(1, 2)) - 10) / 20).round().long()
    assert (ids == ids[0]).all(), f"one clip must come from one video, got ids {ids.tolist()}"
    quarter = clip.shape[-1] // 4
    left, right = pixels[:, 2, :, :quarter].mean(), pixels[:, 2, :, -quarter:].mean()
    return frames, int(ids[0]), bool(left > right)


#################################################################################
#                                 Fake Layouts                                  #
#################################################################################


def make_ffs(root: Path) -> dict[str, int]:
    """preprocess_ffs/train/videos: 3 good mp4s (ids 1-3), a corrupt one, a too-short one, a text file."""
    videos = root / "train" / "videos"
    lengths = {"a.mp4": (1, 60), "b.mp4": (2, 52), "c.mp4": (3, 48)}
    for name, (video_id, n) in lengths.items():
        write_video(videos / name, video_id, n)
    write_video(videos / "short.mp4", 4, 10)
    write_garbage(videos / "corrupt.mp4")
    (videos / "notes.txt").write_text("not a video")
    return {name: video_id for name, (video_id, _) in lengths.items()}


UCF_VIDEOS = {  # class -> [(video id, frames, lossy codec)]
    "ApplyEyeMakeup": [(1, 50, False), (2, 56, True)],
    "HammerThrow": [(3, 50, False)],
    "Hammering": [(4, 52, False)],
    "JumpRope": [(5, 50, False)],
    "JumpingJack": [(6, 54, False)],
}


def make_ucf101(root: Path) -> dict[int, str]:
    """UCF-101/<all 101 classes>/, avi videos in 5 of them, and ucfTrainTestlist/{train,test}list01.txt."""
    tree = root / "UCF-101"
    for name in UCF101_CLASS_IND:
        (tree / name).mkdir(parents=True, exist_ok=True)
    classes, train, test = {}, [], []
    for name, videos in UCF_VIDEOS.items():
        for group, (video_id, n, lossy) in enumerate(videos, start=1):
            relative = f"{name}/v_{name}_g{group:02d}_c01.avi"
            write_video(tree / relative, video_id, n, lossy=lossy)
            classes[video_id] = name
            (train if video_id % 2 else test).append(relative)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(exist_ok=True)
    class_ind = {name: i + 1 for i, name in enumerate(UCF101_CLASS_IND)}
    (lists / "trainlist01.txt").write_text("".join(f"{r} {class_ind[r.split('/')[0]]}\n" for r in train))
    (lists / "testlist01.txt").write_text("".join(f"{r}\n" for r in [*test, "Typing/v_Typing_g01_c01.avi"]))
    return classes


def make_sky(root: Path) -> dict[str, int]:
    """sky_timelapse/sky_train/<video>/<clip>/ frame folders (ids 1-3; one jpg), a 30-frame clip; sky_test."""
    train = root / "sky_train"
    write_frames(train / "v1" / "v1_1", 1, 60)
    write_frames(train / "v1" / "v1_2", 2, 49)
    write_frames(train / "v2" / "v2_1", 3, 52, suffix=".jpg")
    write_frames(train / "v3" / "v3_1", 4, 30)  # too short: Sky keeps > 48 frames
    write_frames(root / "sky_test" / "t1" / "t1_1", 5, 50)
    write_frames(root / "sky_test" / "t2" / "t2_1", 6, 55)
    return {"v1/v1_1": 1, "v1/v1_2": 2, "v2/v2_1": 3}


def make_taichi(root: Path) -> dict[str, int]:
    """taichi/{train,test}/: frame folders and mp4 files side by side (ids 1-3 train, 4-5 test)."""
    write_frames(root / "train" / "vid_a", 1, 50)
    write_video(root / "train" / "vid_b.mp4", 2, 54)
    write_frames(root / "train" / "vid_c", 3, 48)
    write_frames(root / "test" / "vid_d", 4, 50)
    write_video(root / "test" / "vid_e.mp4", 5, 50)
    return {"vid_a": 1, "vid_b.mp4": 2, "vid_c": 3}


def make_all(root: Path) -> dict[str, Path]:
    """All four fake datasets under `root`; returns each preset's data.root."""
    roots = {
        "ffs": root / "preprocess_ffs",
        "ucf101": root / "UCF101" / "UCF-101",
        "sky": root / "sky_timelapse",
        "taichi": root / "taichi",
    }
    make_ffs(roots["ffs"])
    make_ucf101(root / "UCF101")
    make_sky(roots["sky"])
    make_taichi(roots["taichi"])
    roots["video_folder"] = roots["taichi"]
    return roots


def touch_later(path: Path) -> None:
    """Bump a file's mtime by a second (a 'changed' file even on coarse-mtime file systems)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
