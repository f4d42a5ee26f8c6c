"""Does a sampled video look like the synthetic shapes? Checks on ``f h w 3`` RGB videos in [0, 1].

The synthetic clips (datamodules/synthetic.py) have muted backgrounds (every channel <= 0.55) that lie on
the segment between their palette's two colours, and vivid shapes (value >= 0.75, saturation >= 0.6) that
cover a small part of the frame and move. Uniform noise fails all three checks, real clips pass them;
``looks_like_the_data`` is the criterion the quickstart test applies to its 4 final samples.
"""

import numpy as np


def vivid(video: np.ndarray) -> np.ndarray:
    """(f, h, w) mask of shape-like pixels: bright and saturated, which no palette background is."""
    high, low = video.max(-1), video.min(-1)
    return (high > 0.65) & (high - low > 0.3)


def palette_distance(video: np.ndarray, palettes: np.ndarray) -> float:
    """Median distance of the background (non-vivid) pixels to the nearest (k, 2, 3) palette's ramp."""
    background = video[~vivid(video)]  # (n, 3)
    if len(background) == 0:
        return float("inf")
    distances = []
    for start, end in palettes:
        ramp = end - start
        t = np.clip((background - start) @ ramp / (ramp @ ramp), 0, 1)  # nearest point on the segment
        distances.append(np.median(np.linalg.norm(background - (start + t[:, None] * ramp), axis=-1)))
    return float(min(distances))


def shape_frames(video: np.ndarray, smallest: float = 0.005, largest: float = 0.35) -> float:
    """Fraction of frames whose vivid pixels cover between ``smallest`` and ``largest`` of the frame."""
    area = vivid(video).mean(axis=(1, 2))  # (f,)
    return float(((area >= smallest) & (area <= largest)).mean())


def motion_concentration(video: np.ndarray, top: float = 0.1) -> float:
    """Share of the frame-to-frame change that falls on the ``top`` fraction of most-changed pixels.

    A shape moving on a slowly drifting background concentrates the change on its edges; noise spreads it.
    """
    change = np.abs(np.diff(video, axis=0)).mean(-1).reshape(len(video) - 1, -1)  # (f-1, h*w)
    change = -np.sort(-change, axis=1)  # descending
    k = max(1, int(top * change.shape[1]))
    return float((change[:, :k].sum(1) / np.maximum(change.sum(1), 1e-8)).mean())


def looks_like_the_data(videos: np.ndarray, palettes: np.ndarray) -> tuple[bool, dict[str, int | float]]:
    """Whether ``n f h w 3`` videos in [0, 1] show the data, and the counts behind it.

    At least 3/4 of them sit on one of the ``(k, 2, 3)`` palettes (median background distance < 0.06), at
    least half hold a shape-sized vivid region in >= 75% of frames, and their frame-to-frame change is
    concentrated (mean share of the top 10% pixels > 0.28; uniform noise: ~0.18).
    """
    found = {
        "on_a_palette": sum(palette_distance(v, palettes) < 0.06 for v in videos),
        "with_a_shape": sum(shape_frames(v) >= 0.75 for v in videos),
        "motion_concentration": float(np.mean([motion_concentration(v) for v in videos])),
    }
    n = len(videos)
    passed = (
        4 * found["on_a_palette"] >= 3 * n
        and 2 * found["with_a_shape"] >= n
        and found["motion_concentration"] > 0.28
    )
    return passed, found
