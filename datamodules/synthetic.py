"""
Synthetic videos generated in memory: moving, coloured shapes on drifting textured backgrounds.

Needs no download, so it is the quickstart and test dataset. Each clip is a pure function of
(seed, split, index): a smooth sinusoidal background texture in a random two-colour scheme (its palette), and
1-3 shapes of ONE type (circle, square, triangle or ring; the type is the class label) with random colours,
sizes, rotation and linear motion that bounces off the frame borders. The CPU quickstart makes it easier:
one bigger shape per clip and 4 palettes shared by all clips (`max_shapes`, `shape_sizes`, `num_palettes`).
Shapes are drawn from signed distance fields with a one-pixel linear ramp, which anti-aliases their edges.
Clips are `f c h w` float32 in [-1, 1], like every dataset behind `VideoDataModule`.
"""

import hashlib
import math
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle", "ring")
SPLITS = ("train", "val", "test")
MAX_SHAPES = 3
SHAPE_SIZES = (0.08, 0.16)  # default range of shape radii, in image units
EXTENT = 1.4  # the farthest any shape reaches from its centre, in radii (the triangle's circumradius)
BACKGROUND_WAVES = 3


#################################################################################
#                               Clip Recipes                                    #
#################################################################################


@dataclass(frozen=True)
class ClipRecipe:
    """Every random choice of one clip; positions and sizes are in image units (the frame is [0, 1]^2)."""

    shape: int  # index into SHAPES, also the class label
    centers: torch.Tensor  # (n, 2) start positions (x, y)
    velocities: torch.Tensor  # (n, 2) displacement per frame
    sizes: torch.Tensor  # (n,) shape radius
    angles: torch.Tensor  # (n,) start rotation in radians
    spins: torch.Tensor  # (n,) rotation per frame in radians
    colors: torch.Tensor  # (n, 3) RGB in [0, 1]
    background_colors: torch.Tensor  # (2, 3) RGB in [0, 1], the two ends of the texture's colour ramp
    wave_vectors: torch.Tensor  # (k, 2) background wave vectors in cycles per image
    wave_phases: torch.Tensor  # (k,) background phases in radians
    wave_drifts: torch.Tensor  # (k,) background phase change per frame in radians


def clip_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A CPU generator seeded by a stable hash of (seed, split, index): one independent stream per clip."""
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def uniform(low: float, high: float, size: int | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Draw float32 values uniformly from [low, high)."""
    size = (size,) if isinstance(size, int) else size
    return low + (high - low) * torch.rand(size, generator=generator)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Convert (..., 3) HSV colours in [0, 1] to RGB in [0, 1]."""
    h, s, v = hsv.unbind(-1)
    offsets = torch.tensor([5.0, 3.0, 1.0])  # R, G, B sectors of the hue circle
    k = (offsets + 6 * h[..., None]) % 6  # (..., 3)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)  # (..., 3)
    return v[..., None] * (1 - s[..., None] * ramp)  # (..., 3)


def draw_palettes(seed: int, num_palettes: int) -> torch.Tensor:
    """(num_palettes, 2, 3) RGB background colour pairs for clips to share: muted, hues evenly spread."""
    generator = clip_generator(seed, "palettes", 0)
    hue = (torch.arange(num_palettes) + uniform(0, 1, 1, generator)) / num_palettes  # (k,) one hue each
    hue = hue[:, None] + uniform(-0.04, 0.04, (num_palettes, 2), generator)  # (k, 2) the ramp's two ends
    saturation = uniform(0.45, 0.8, (num_palettes, 2), generator)
    value = uniform(0.25, 0.55, (num_palettes, 2), generator)  # as dark as clips' own colours
    return hsv_to_rgb(torch.stack([hue % 1, saturation, value], dim=-1))  # (k, 2, 3)


def draw_recipe(
    generator: torch.Generator,
    num_shape_types: int,
    max_shapes: int = MAX_SHAPES,
    shape_sizes: tuple[float, float] = SHAPE_SIZES,
    palettes: torch.Tensor | None = None,
) -> ClipRecipe:
    """Draw one clip's recipe; every call consumes the same amount of randomness, so streams stay aligned.

    ``palettes`` (k, 2, 3): the background colours are one of these, picked by one draw after all others.
    """
    shape = int(torch.randint(num_shape_types, (1,), generator=generator))
    count = int(torch.randint(1, max_shapes + 1, (1,), generator=generator))
    sizes = uniform(*shape_sizes, MAX_SHAPES, generator)
    margin = EXTENT * sizes[:, None]  # keeps even the triangle's corners inside the frame
    centers = margin + (1 - 2 * margin) * torch.rand(MAX_SHAPES, 2, generator=generator)
    heading = uniform(0, 2 * math.pi, MAX_SHAPES, generator)
    speed = uniform(0.01, 0.035, MAX_SHAPES, generator)
    velocities = speed[:, None] * torch.stack([heading.cos(), heading.sin()], dim=-1)
    angles = uniform(0, 2 * math.pi, MAX_SHAPES, generator)
    spins = uniform(-0.15, 0.15, MAX_SHAPES, generator)
    hue, saturation, value = (uniform(low, 1, MAX_SHAPES, generator) for low in (0, 0.6, 0.75))
    hsv = torch.stack([hue, saturation, value], dim=-1)  # vivid colours
    background_colors = uniform(0.05, 0.55, (2, 3), generator)  # muted, so the saturated shapes stand out
    wave_direction = uniform(0, 2 * math.pi, BACKGROUND_WAVES, generator)
    wave_frequency = uniform(0.5, 2.5, BACKGROUND_WAVES, generator)
    wave_vectors = wave_frequency[:, None] * torch.stack([wave_direction.cos(), wave_direction.sin()], dim=-1)
    wave_phases = uniform(0, 2 * math.pi, BACKGROUND_WAVES, generator)
    wave_drifts = uniform(-0.3, 0.3, BACKGROUND_WAVES, generator)
    if palettes is not None:
        background_colors = palettes[int(torch.randint(len(palettes), (1,), generator=generator))]
    return ClipRecipe(
        shape=shape,
        centers=centers[:count],
        velocities=velocities[:count],
        sizes=sizes[:count],
        angles=angles[:count],
        spins=spins[:count],
        colors=hsv_to_rgb(hsv)[:count],
        background_colors=background_colors,
        wave_vectors=wave_vectors,
        wave_phases=wave_phases,
        wave_drifts=wave_drifts,
    )


#################################################################################
#                                 Rendering                                     #
#################################################################################


def bounce(position: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Fold unbounded linear motion into [low, high] as if reflecting off the walls (a triangle wave)."""
    length = high - low
    folded = torch.remainder(position - low, 2 * length)
    return low + length - (folded - length).abs()


def project(dx: torch.Tensor, dy: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Project offsets (dx, dy) on the unit vector at `angle` (n, f): the (n, f, r, r) coordinate along it."""
    return torch.add(angle.cos()[..., None, None] * dx, angle.sin()[..., None, None] * dy)  # (n, f, r, r)


def signed_distance(
    shape: int, dx: torch.Tensor, dy: torch.Tensor, angle: torch.Tensor, size: torch.Tensor
) -> torch.Tensor:
    """Signed distance (negative inside) from pixel offsets (dx, dy) to a shape of radius `size` at `angle`.

    Large tensors are updated in place: fresh (n, f, r, r) allocations cost more than the arithmetic.
    """
    name = SHAPES[shape]
    if name == "circle":
        return torch.hypot(dx, dy).sub_(size)
    if name == "square":
        u, v = project(dx, dy, angle).abs_(), project(dx, dy, angle + math.pi / 2).abs_()  # the square's axes
        return torch.maximum(u, v, out=u).sub_(0.85 * size)  # half side 0.85 r: about the circle's area
    if name == "triangle":
        normals = [angle + math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]  # outward edge normals
        distance = project(dx, dy, normals[0])
        for normal in normals[1:]:
            torch.maximum(distance, project(dx, dy, normal), out=distance)
        return distance.sub_(EXTENT / 2 * size)  # inradius 0.7 r = half the circumradius EXTENT r
    if name == "ring":
        return torch.hypot(dx, dy).sub_(0.775 * size).abs_().sub_(0.225 * size)  # radii 0.55 r to r
    raise ValueError(f"unknown shape index {shape}")


def coverage(distance: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] from a signed distance in pixels (overwritten): a 1-pixel edge ramp."""
    return distance.neg_().add_(0.5).clamp_(0, 1)


def render_clip(recipe: ClipRecipe, num_frames: int, resolution: int) -> torch.Tensor:
    """Render a recipe into a (f, 3, r, r) float32 video in [0, 1]."""
    grid = torch.arange(resolution, dtype=torch.float32) + 0.5  # (r,) pixel centres, in pixels
    y, x = grid[:, None], grid[None, :]  # (r, 1), (1, r)
    t = torch.arange(num_frames, dtype=torch.float32)  # (f,)

    k = len(recipe.wave_phases)
    kx, ky = recipe.wave_vectors[:, 0, None, None], recipe.wave_vectors[:, 1, None, None]  # (k, 1, 1) each
    spatial = 2 * math.pi / resolution * (kx * x + ky * y)  # (k, r, r)
    basis = torch.cat([spatial.sin(), spatial.cos()]).flatten(1)  # (2k, r*r) as sin(s+p) = sin s cos p + ...
    phase = recipe.wave_phases[:, None] + recipe.wave_drifts[:, None] * t  # (k, f)
    weights = torch.cat([phase.cos(), phase.sin()]).T / k  # (f, 2k)
    texture = (weights @ basis).view(num_frames, 1, resolution, resolution)  # (f, 1, r, r) mean of k waves
    low, high = recipe.background_colors[:, :, None, None]  # (3, 1, 1) each
    video = torch.addcmul(low, high - low, texture.mul_(0.5).add_(0.5))  # (f, 3, r, r)

    sizes = recipe.sizes[:, None] * resolution  # (n, 1) in pixels
    margin = EXTENT * recipe.sizes[:, None, None]  # (n, 1, 1) keeps corners inside the frame
    path = recipe.centers[:, None] + recipe.velocities[:, None] * t[None, :, None]  # (n, f, 2)
    path = bounce(path, margin, 1 - margin) * resolution  # (n, f, 2) in pixels
    dx = x - path[..., 0, None, None]  # (n, f, 1, r)
    dy = y - path[..., 1, None, None]  # (n, f, r, 1)
    angle = recipe.angles[:, None] + recipe.spins[:, None] * t  # (n, f)
    distance = signed_distance(recipe.shape, dx, dy, angle, sizes[..., None, None])  # (n, f, r, r)
    alpha = coverage(distance)[:, :, None]  # (n, f, 1, r, r)
    for a, color in zip(alpha, recipe.colors[:, :, None, None]):  # later shapes are drawn on top
        video.lerp_(color, a)  # (f, 3, r, r)
    return video


#################################################################################
#                                  Dataset                                      #
#################################################################################


class SyntheticVideos(Dataset):
    """Deterministic in-memory clips of moving shapes; the label (when num_classes > 0) is the shape type."""

    def __init__(
        self,
        split: str = "train",
        num_frames: int = 16,
        resolution: int = 64,
        num_classes: int = 0,
        num_videos: int = 1024,
        seed: int = 0,
        max_shapes: int = MAX_SHAPES,
        shape_sizes: tuple[float, float] = SHAPE_SIZES,
        num_palettes: int = 0,
    ):
        """num_classes=0: unconditional (all 4 shape types, no label); 1..4: the first num_classes types.

        max_shapes: 1..3 shapes per clip; shape_sizes: (min, max) shape radius in image units; num_palettes:
        0 gives every clip its own background colours, k > 0 draws them from k palettes shared by all splits.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}.")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an int >= 8, got {resolution!r}.")
        if not isinstance(num_classes, int) or not 0 <= num_classes <= len(SHAPES):
            raise ValueError(
                f"num_classes must be between 0 (unconditional) and {len(SHAPES)} (one per shape type: "
                f"{', '.join(SHAPES)}), got {num_classes!r}."
            )
        if not isinstance(num_videos, int) or num_videos < 0:
            raise ValueError(f"num_videos must be an int >= 0, got {num_videos!r}.")
        if not isinstance(max_shapes, int) or not 1 <= max_shapes <= MAX_SHAPES:
            raise ValueError(f"max_shapes must be an int in [1, {MAX_SHAPES}], got {max_shapes!r}.")
        low, high = (float(size) for size in shape_sizes)
        if not 0 < low <= high < 0.5 / EXTENT:  # a shape's far corner must stay inside the frame
            raise ValueError(
                f"shape_sizes must be (min, max) radii with 0 < min <= max < {0.5 / EXTENT:.3f}, "
                f"got {tuple(shape_sizes)!r}."
            )
        if not isinstance(num_palettes, int) or num_palettes < 0:
            raise ValueError(
                f"num_palettes must be an int >= 0 (0: one palette per clip), got {num_palettes!r}."
            )
        self.split = split
        self.num_frames = num_frames
        self.resolution = resolution
        self.num_classes = num_classes
        self.num_videos = num_videos
        self.seed = seed
        self.max_shapes = max_shapes
        self.shape_sizes = (low, high)
        self.palettes = draw_palettes(seed, num_palettes) if num_palettes else None

    def __len__(self) -> int:
        """Number of clips in this split."""
        return self.num_videos

    def recipe(self, index: int) -> ClipRecipe:
        """The random choices behind clip `index` (a pure function of seed, split and index)."""
        index = int(index)  # the hash must not depend on the index's type (int, numpy or tensor)
        if not 0 <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} synthetic videos.")
        generator = clip_generator(self.seed, self.split, index)
        return draw_recipe(
            generator, self.num_classes or len(SHAPES), self.max_shapes, self.shape_sizes, self.palettes
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Return {"video": (f, 3, r, r) float32 in [-1, 1]} plus {"label": int64 scalar} when conditional."""
        recipe = self.recipe(index)
        video = render_clip(recipe, self.num_frames, self.resolution)  # (f, 3, r, r) in [0, 1]
        sample = {"video": video.mul_(2).sub_(1).clamp_(-1, 1)}
        if self.num_classes > 0:
            sample["label"] = torch.tensor(recipe.shape, dtype=torch.int64)
        return sample
