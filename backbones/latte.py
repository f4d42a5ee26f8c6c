"""Latte: latent video diffusion transformer with interleaved spatial and temporal blocks.

Written from the facts in references/latte.md §1 (Vchitect/Latte `models/latte.py`, paper "Variant 1").
Parameter names equal the official ones, so the released checkpoints load strictly. Videos are
`b f c h w` (frames before channels) at the input and at the output.
"""

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

LATTE_SIZES: dict[str, dict] = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "tiny": dict(depth=4, hidden_size=128, num_heads=4),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of a token sequence (n, l, d) by per-sequence shift and scale (n, d)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                     Fixed Sine-Cosine Position Embeddings                     #
#################################################################################


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos table (len(positions), dim): [sin(pos * w), cos(pos * w)], w_k = 10000^(-2k/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """2-D sin-cos table (grid_size**2, dim) in row-major token order; first half = column, second = row."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


#################################################################################
#                                Embedding Layers                               #
#################################################################################


class PatchEmbed(nn.Module):
    """Uniform per-frame patch embedding: a Conv2d with kernel = stride = patch size."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed frames (n, c, h, w) into row-major patch tokens (n, h*w/p^2, d)."""
        x = self.proj(x)  # (n, d, h/p, w/p)
        return rearrange(x, "n d gh gw -> n (gh gw) d")  # (n, l, d)


class TimestepEmbedder(nn.Module):
    """Timesteps to vectors: 256-dim frequency embedding (cos first), then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_size, self.max_period = frequency_size, max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed integer or float timesteps (b,) into (b, d)."""
        half = self.frequency_size // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)  # (half,)
        freqs = torch.exp(-math.log(self.max_period) * k / half)  # (half,)
        angles = t[:, None].float() * freqs[None]  # (b, half)
        t_freq = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)  # (b, 256)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (b, d)


class LabelEmbedder(nn.Module):
    """Class labels to vectors; row `num_classes` is the null class used by label dropout and CFG."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        # The null row is always there (the official omits it at dropout_prob 0, which no release uses).
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embed labels (b,) into (b, d); in training mode each label becomes null with p = dropout_prob."""
        if force_drop_ids is not None:
            drop = force_drop_ids == 1  # (b,)
            labels = torch.where(drop, self.num_classes, labels)  # (b,)
        elif self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob  # (b,)
            labels = torch.where(drop, self.num_classes, labels)  # (b,)
        return self.embedding_table(labels)  # (b, d)


#################################################################################
#                               Transformer Blocks                              #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (rows [q; k; v], head index slowest)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the l tokens of each of the n sequences: (n, l, d) -> (n, l, d)."""
        qkv = self.qkv(x)  # (n, l, 3d)
        q, k, v = rearrange(
            qkv, "n l (three h e) -> three n h l e", three=3, h=self.num_heads
        )  # (n, h, l, e)
        x = F.scaled_dot_product_attention(q, k, v)  # (n, h, l, e)
        return self.proj(rearrange(x, "n h l e -> n l (h e)"))  # (n, l, d)


class Mlp(nn.Module):
    """Feed-forward network d -> mlp_ratio*d -> d with tanh-approximated GELU."""

    def __init__(self, hidden_size: int, mlp_ratio: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, int(hidden_size * mlp_ratio))
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(int(hidden_size * mlp_ratio), hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise: (n, l, d) -> (n, l, d)."""
        return self.fc2(self.act(self.fc1(x)))  # (n, l, d)


class LatteBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning; spatial or temporal only by how tokens are grouped."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Update sequences x (n, l, d) under their conditioning vectors c (n, d)."""
        modulation = self.adaLN_modulation(c)  # (n, 6d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)  # (n, d)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (n, l, d)
        return x + gate_mlp.unsqueeze(1) * self.mlp(
            modulate(self.norm2(x), shift_mlp, scale_mlp)
        )  # (n, l, d)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm (shift, scale) and a linear map from tokens to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Map tokens (n, l, d) to patches (n, l, p*p*c_out), ordered (p_row, p_col, channel)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # (n, d) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (n, l, p*p*c_out)


#################################################################################
#                                  Latte Model                                  #
#################################################################################


def _require(ok: bool, message: str) -> None:
    """Raise a ValueError with `message` unless `ok` (config validation)."""
    if not ok:
        raise ValueError(message)


class Latte(nn.Module):
    """Latte Variant 1: blocks[2k] attend within each frame, blocks[2k+1] across frames at each location."""

    def __init__(
        self,
        size: str = "XL",
        patch_size: int = 2,
        input_size: int = 32,
        in_channels: int = 4,
        num_frames: int = 16,
        num_classes: int = 0,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = True,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        _require(size in LATTE_SIZES, f"size={size!r} is unknown; valid sizes: {', '.join(LATTE_SIZES)}")
        depth, hidden_size, num_heads = (LATTE_SIZES[size][k] for k in ("depth", "hidden_size", "num_heads"))
        _require(patch_size >= 1, f"patch_size={patch_size} must be a positive integer")
        _require(input_size >= 1, f"input_size={input_size} must be a positive integer (latent side length)")
        _require(
            input_size % patch_size == 0,
            f"input_size={input_size} is not divisible by patch_size={patch_size}: "
            "the latent grid must split into whole patches",
        )
        _require(in_channels >= 1, f"in_channels={in_channels} must be >= 1")
        _require(num_frames >= 1, f"num_frames={num_frames} must be >= 1")
        _require(num_classes >= 0, f"num_classes={num_classes} must be >= 0 (0 = unconditional)")
        _require(0 <= class_dropout_prob <= 1, f"class_dropout_prob={class_dropout_prob} must be in [0, 1]")
        _require(mlp_ratio > 0, f"mlp_ratio={mlp_ratio} must be > 0")
        _require(
            depth % 2 == 0,
            f"size={size!r} has depth={depth}, but depth must be even: spatial and temporal blocks alternate",
        )
        _require(
            hidden_size % num_heads == 0 and hidden_size % 4 == 0,
            f"size={size!r} has hidden_size={hidden_size}, which must be divisible by num_heads={num_heads} "
            "and by 4 (2-D sin-cos position embedding)",
        )
        self.size, self.depth, self.hidden_size, self.num_heads = size, depth, hidden_size, num_heads
        self.patch_size, self.input_size, self.num_frames = patch_size, input_size, num_frames
        self.in_channels, self.learn_sigma, self.num_classes = in_channels, learn_sigma, num_classes
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_patches = (input_size // patch_size) ** 2

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes else None
        # Frozen Parameters, not buffers, so that they are in the state_dict as in the official checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, hidden_size), requires_grad=False)
        self.temp_embed = nn.Parameter(torch.zeros(1, num_frames, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(LatteBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official initialisation; the adaLN-Zero and output layers start at zero, so the output is 0."""
        # Every Linear: xavier-uniform weight, zero bias.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Fixed sin-cos tables for the spatial grid and the frames.
        grid_size = self.input_size // self.patch_size
        self.pos_embed.data.copy_(sincos_2d(self.hidden_size, grid_size).unsqueeze(0))
        self.temp_embed.data.copy_(sincos_1d(self.hidden_size, torch.arange(self.num_frames)).unsqueeze(0))
        # Patch embedding like a Linear: xavier-uniform on the (d, c*p*p) view, zero bias.
        weight = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        # Label table and timestep MLP weights: N(0, 0.02).
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every modulation and the output projection start at zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Patches (n, l, p*p*c_out), channel fastest, back to images (n, c_out, h, w)."""
        grid, p = self.input_size // self.patch_size, self.patch_size
        return rearrange(x, "n (gh gw) (p q c) -> n c (gh p) (gw q)", gh=grid, p=p, q=p)  # (n, c_out, h, w)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict (b, f, c_out, h, w) from latents x (b, f, c, h, w), timesteps t (b,) and labels y (b,)."""
        assert x.ndim == 5, f"Latte expects latents shaped (b, f, c, h, w), got {tuple(x.shape)}"
        b, f, c, h, w = x.shape  # latents: frames before channels
        assert f == self.num_frames, (
            f"got {f} frames, but temp_embed was built for num_frames={self.num_frames}"
        )
        assert c == self.in_channels, f"got {c} channels on dim 2, expected in_channels={self.in_channels}"
        assert h == w == self.input_size, (
            f"got {h}x{w} latents, but pos_embed is built for {self.input_size}^2"
        )
        assert t.shape == (b,), f"t must hold one timestep per video, shape ({b},), got {tuple(t.shape)}"
        assert (y is not None) == (self.y_embedder is not None), (
            f"y must be given iff the model is class-conditional (num_classes={self.num_classes})"
        )
        x = self.x_embedder(rearrange(x, "b f c h w -> (b f) c h w")) + self.pos_embed  # (b*f, l, d)
        cond = self.t_embedder(t)  # (b, d)
        if self.y_embedder is not None:
            assert y.shape == (b,), f"y must hold one label per video, shape ({b},), got {tuple(y.shape)}"
            cond = cond + self.y_embedder(y)  # (b, d)
        cond_spatial = repeat(cond, "b d -> (b f) d", f=f)  # (b*f, d)
        cond_temporal = repeat(cond, "b d -> (b l) d", l=self.num_patches)  # (b*l, d)
        for i in range(0, self.depth, 2):
            spatial_block, temporal_block = self.blocks[i : i + 2]
            x = spatial_block(x, cond_spatial)  # (b*f, l, d): attention over the tokens of one frame
            x = rearrange(x, "(b f) l d -> (b l) f d", b=b)  # (b*l, f, d)
            if i == 0:
                x = x + self.temp_embed  # (b*l, f, d): added once, after the first spatial block
            x = temporal_block(x, cond_temporal)  # (b*l, f, d): attention over the frames of one location
            x = rearrange(x, "(b l) f d -> (b f) l d", b=b)  # (b*f, l, d)
        x = self.final_layer(x, cond_spatial)  # (b*f, l, p*p*c_out)
        x = self.unpatchify(x)  # (b*f, c_out, h, w)
        return rearrange(x, "(b f) c h w -> b f c h w", b=b)  # (b, f, c_out, h, w)


#################################################################################
#                              Official Checkpoints                             #
#################################################################################


def _parse_model_name(model: str) -> tuple[str, int]:
    """Official model name like 'Latte-XL/2' or 'LatteIMG-XL/2' to (size, patch_size)."""
    names = {
        f"{prefix}-{size}/{patch}": (size, patch)
        for prefix in ("Latte", "LatteIMG")
        for size in LATTE_SIZES
        for patch in (2, 4, 8)
    }
    _require(model in names, f"model={model!r} is not a Latte model name; valid names: {', '.join(names)}")
    return names[model]


def load_official_latte(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    model: str = "Latte-XL/2",
    input_size: int = 32,
    num_frames: int = 16,
    in_channels: int = 4,
    learn_sigma: bool = True,
    num_classes: int | None = None,
) -> Latte:
    """Build a Latte from an official release file (a dict with "ema" or "model") and load it strictly.

    `num_classes=None` infers it from `y_embedder.embedding_table.weight` (rows - 1), else 0.
    Returns the model in eval mode.
    """
    size, patch_size = _parse_model_name(model)
    checkpoint = path_or_state_dict
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    _require(
        isinstance(checkpoint, Mapping), f"a Latte checkpoint is a dict, got {type(checkpoint).__name__}"
    )
    found = list(checkpoint)
    _require(
        "ema" in checkpoint or "model" in checkpoint,
        f"checkpoint has neither an 'ema' nor a 'model' entry; found {len(found)} keys: {found[:8]}",
    )
    state_dict = checkpoint["ema"] if "ema" in checkpoint else checkpoint["model"]
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if num_classes is None:
        table = state_dict.get("y_embedder.embedding_table.weight")
        num_classes = 0 if table is None else table.shape[0] - 1

    with torch.device("meta"):  # no random init: the strict load below sets every tensor
        latte = Latte(
            size=size,
            patch_size=patch_size,
            input_size=input_size,
            in_channels=in_channels,
            num_frames=num_frames,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
        )
    expected = {key: tuple(value.shape) for key, value in latte.state_dict().items()}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    _require(
        not missing and not unexpected,
        f"checkpoint does not match {model} (num_classes={num_classes}): "
        f"missing keys {missing}, unexpected keys {unexpected}",
    )
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {shape}"
        for key, shape in expected.items()
        if tuple(state_dict[key].shape) != shape
    ]
    _require(
        not mismatched,
        f"checkpoint shapes do not match {model} with input_size={input_size}, num_frames={num_frames}, "
        f"in_channels={in_channels}, learn_sigma={learn_sigma}, num_classes={num_classes}: {mismatched}",
    )
    latte.to_empty(device="cpu")  # every tensor is a Parameter in the state_dict, so none stays empty
    latte.load_state_dict(state_dict, strict=True)
    return latte.eval()
