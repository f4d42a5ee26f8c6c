"""Layers shared by the video transformers of this package: Latte, and the VGT and discriminators on it.

Written from the formulas of DiT / Latte (fixed sin-cos tables, frequency timestep embedding, label table with
a null class, adaLN-Zero modulation) and of RoPE (rotary position embedding). Video tensors are `b f c h w`;
tokens are (b, f, l, d): f frames of l tokens of width d.
"""

import math

import torch
from einops import rearrange
from torch import nn


def require(ok: bool, message: str) -> None:
    """Raise a ValueError with `message` unless `ok` (config validation)."""
    if not ok:
        raise ValueError(message)


#################################################################################
#               Fixed Sine-Cosine and Rotary Position Embeddings                #
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


class RotaryEmbedding(nn.Module):
    """RoPE over the sequence index: channel pairs (k, k + e/2) rotate by angle pos * base^(-2k/e)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        assert head_dim % 2 == 0, f"RoPE rotates channel pairs, so head_dim={head_dim} must be even"
        self.head_dim, self.base = head_dim, base

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        """Rotate queries or keys (n, h, L, e) by their positions offset..offset+L-1 along dim 2.

        `offset` is an int, or a (1,) long tensor on x's device (a static KV cache's frame counter, which a
        CUDA graph reads at replay time).
        """
        half = self.head_dim // 2
        inv_freq = self.base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)  # (e/2,)
        positions = (torch.arange(x.shape[2], device=x.device) + offset).to(torch.float32)  # (L,)
        angles = positions[:, None] * inv_freq[None]  # (L, e/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (L, e/2)
        x1, x2 = x[..., :half], x[..., half:]  # (n, h, L, e/2)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (n, h, L, e)


#################################################################################
#                                Embedding Layers                               #
#################################################################################


def tokens_in_memory_order(tokens: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of tokens (b, f, l, d) viewed from a convolution's channels-first output.

    Viewed, the width d would be the slowest axis in memory, and the residual stream, every block's sum
    into it, would keep that layout: each LayerNorm would copy it and each residual add run strided. On an
    H200 that cost a Latte-XL/2 training step 10% eagerly and 5% compiled (bench/RESULTS.md).
    """
    return tokens.contiguous()  # (b, f, l, d)


class PatchEmbed(nn.Module):
    """Uniform patch embedding: every frame cut into p x p patches by a Conv2d with kernel = stride = p."""

    frames_per_token = 1

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed frames (b, f, c, h, w) into row-major patch tokens (b, f, h*w/p^2, d)."""
        b = x.shape[0]
        x = self.proj(rearrange(x, "b f c h w -> (b f) c h w"))  # (b*f, d, h/p, w/p)
        return tokens_in_memory_order(rearrange(x, "(b f) d gh gw -> b f (gh gw) d", b=b))  # (b, f, l, d)


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
#                     Feed-Forward Network and adaLN Helpers                    #
#################################################################################


class Mlp(nn.Module):
    """Feed-forward network d -> mlp_ratio*d -> d with tanh-approximated GELU."""

    def __init__(self, hidden_size: int, mlp_ratio: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, int(hidden_size * mlp_ratio))
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(int(hidden_size * mlp_ratio), hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise: (..., d) -> (..., d)."""
        return self.fc2(self.act(self.fc1(x)))  # (..., d)


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift (broadcast over tokens); the identity without adaLN (None)."""
    return x if shift is None else x * (1 + scale) + shift


def gated(gate: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero gate of a residual branch; the identity without adaLN (None)."""
    return x if gate is None else gate * x


def adaln_chunks(modulation: nn.Module | None, c: torch.Tensor | None, chunks: int) -> tuple:
    """The `chunks` modulation tensors (b, t, 1, d) from per-frame c (b, t, d); all None without adaLN."""
    if modulation is None:
        return (None,) * chunks
    return modulation(c).unsqueeze(2).chunk(chunks, dim=-1)  # chunks x (b, t, 1, d)
