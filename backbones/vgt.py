"""APLA's Video Generation Transformer (VGT) and its 1x1 noise discriminator.

APLA (Yao et al., arXiv 2308.12605) adds a compact "decoder-only" transformer, in a pure and a hybrid
transformer + convolution ("hyper") variant, whose output perturbs the noise a pretrained video diffusion
model predicts, and trains it with an adversarial term from a "1x1 discriminator". Those are the facts the
abstract and summaries give; the layer counts, widths, inputs and the placement of the convolutions are ours:

* input: per frame, the noisy latent x_t and the base model's prediction eps_theta, concatenated on channels
  and cut into p x p patch tokens, plus learned frame and patch-position embeddings and the timestep;
* masked (causal) self-attention over the tokens ordered frame by frame: a token of frame k sees the tokens
  of frames <= k ("decoder-only");
* hyper: a residual 3x3x3 convolution block after each transformer block, padded only towards the past in
  time, so the whole network stays causal over frames;
* output: a zero-initialised linear head, so a fresh VGT returns delta = 0 and changes nothing.

Videos are `b f c h w` at the inputs and at the output.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from backbones.layers import Mlp, PatchEmbed, TimestepEmbedder, require

VGT_VARIANTS = ("pure", "hyper")


def check_video(x: torch.Tensor, name: str) -> None:
    """Assert that ``x`` is a ``b f c h w`` video."""
    assert x.ndim == 5, f"{name} must be a video (b, f, c, h, w), got {tuple(x.shape)}"


#################################################################################
#                             Causal Transformer Block                          #
#################################################################################


def frame_causal_mask(frames: int, tokens_per_frame: int, device: torch.device) -> torch.Tensor:
    """(f*l, f*l) bool mask, True where query token (frame i) may attend to key token (frame j <= i)."""
    frame = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)  # (f*l,)
    return frame[:, None] >= frame[None, :]  # (f*l, f*l)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention under a boolean mask (the frame-causal one)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tokens (b, n, d) attend to the tokens ``mask`` (n, n) allows: (b, n, d)."""
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (b, h, n, e)
        return self.proj(rearrange(x, "b h n e -> b n (h e)"))  # (b, n, d)


class VGTBlock(nn.Module):
    """Pre-norm transformer block: frame-causal self-attention, then an MLP, both residual."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = CausalSelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Update tokens (b, n, d)."""
        x = x + self.attn(self.norm1(x), mask)  # (b, n, d)
        return x + self.mlp(self.norm2(x))  # (b, n, d)


#################################################################################
#                        Causal 3-D Convolution Block (hyper)                   #
#################################################################################


class CausalConvBlock(nn.Module):
    """Residual LayerNorm-SiLU-Conv3d (3x3x3) on the token grid, padded only towards earlier frames.

    The norm is per token (a GroupNorm would pool statistics over all frames and leak the future)."""

    def __init__(self, hidden_size: int, kernel: int = 3):
        super().__init__()
        self.kernel = kernel
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.conv = nn.Conv3d(
            hidden_size, hidden_size, kernel_size=kernel, padding=(0, kernel // 2, kernel // 2)
        )

    def forward(self, x: torch.Tensor, frames: int, grid: int) -> torch.Tensor:
        """Update tokens (b, f*l, d) laid out as an f x grid x grid volume."""
        h = F.silu(self.norm(x))  # (b, f*l, d)
        h = rearrange(h, "b (f gh gw) d -> b d f gh gw", f=frames, gh=grid)  # (b, d, f, g, g)
        h = F.pad(h, (0, 0, 0, 0, self.kernel - 1, 0))  # (b, d, f + k - 1, g, g): past frames only
        h = self.conv(h)  # (b, d, f, g, g)
        return x + rearrange(h, "b d f gh gw -> b (f gh gw) d")  # (b, f*l, d)


#################################################################################
#                                      VGT                                      #
#################################################################################


class VGT(nn.Module):
    """Video Generation Transformer: a frame-causal perturbation delta (b f c h w) of the predicted noise."""

    def __init__(
        self,
        in_channels: int = 4,
        input_size: int = 32,
        num_frames: int = 24,
        patch_size: int = 2,
        hidden_size: int = 320,
        depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        variant: str = "pure",
    ):
        super().__init__()
        require(variant in VGT_VARIANTS, f"vgt variant={variant!r} must be one of {VGT_VARIANTS}")
        require(input_size % patch_size == 0, f"vgt input_size={input_size} not divisible by {patch_size}")
        require(hidden_size % num_heads == 0, f"vgt hidden_size={hidden_size} not divisible by {num_heads}")
        self.in_channels, self.input_size, self.num_frames = in_channels, input_size, num_frames
        self.patch_size, self.variant = patch_size, variant
        self.grid = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, 2 * in_channels, hidden_size)  # [x_t; eps_theta] per frame
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.frame_embed = nn.Parameter(torch.zeros(1, num_frames, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.grid**2, hidden_size))
        self.blocks = nn.ModuleList(VGTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        convs = [CausalConvBlock(hidden_size) for _ in range(depth)] if variant == "hyper" else []
        self.convs = nn.ModuleList(convs)
        self.norm_out = nn.LayerNorm(hidden_size, eps=1e-6)
        self.out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, small position embeddings, and a zero output head: a fresh VGT returns 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.frame_embed, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.out.weight)  # important! delta starts at exactly 0
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """delta (b, f, c, h, w) from noisy latents x_t and predicted noise eps (b, f, c, h, w), t (b,)."""
        check_video(x_t, "VGT x_t")
        check_video(eps, "VGT eps")
        b, f, c = x_t.shape[:3]
        require(f <= self.num_frames, f"VGT got {f} frames, but it embeds num_frames={self.num_frames}")
        x = self.x_embedder(torch.cat([x_t, eps.to(x_t.dtype)], dim=2))  # (b, f, l, d)
        x = x + self.frame_embed[:, :f] + self.pos_embed  # (b, f, l, d)
        x = x + self.t_embedder(t)[:, None, None]  # (b, f, l, d)
        tokens = x.shape[2]
        x = rearrange(x, "b f l d -> b (f l) d")  # (b, n, d): tokens frame by frame
        mask = frame_causal_mask(f, tokens, x.device)  # (n, n)
        for i, block in enumerate(self.blocks):
            x = block(x, mask)  # (b, n, d)
            if self.convs:
                x = self.convs[i](x, f, self.grid)  # (b, n, d)
        x = self.out(self.norm_out(x))  # (b, n, p*p*c)
        p = self.patch_size
        return rearrange(
            x, "b (f gh gw) (p q c) -> b f c (gh p) (gw q)", f=f, gh=self.grid, p=p, q=p, c=c
        )  # (b, f, c, h, w)


#################################################################################
#                            1x1 Noise Discriminator                            #
#################################################################################


class NoiseDiscriminator(nn.Module):
    """APLA's "1x1 discriminator": 1x1x1 Conv3d layers, one real/fake logit per latent location."""

    def __init__(self, in_channels: int = 4, hidden: int = 64, depth: int = 2, negative_slope: float = 0.2):
        super().__init__()
        require(depth >= 1, f"discriminator depth={depth} must be >= 1 hidden layer")
        layers, width = [], in_channels
        for _ in range(depth):
            layers += [nn.Conv3d(width, hidden, kernel_size=1), nn.LeakyReLU(negative_slope)]
            width = hidden
        layers.append(nn.Conv3d(width, 1, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Logits (b, f, h, w) of noise tensors (b, f, c, h, w)."""
        check_video(noise, "discriminator input")
        x = self.net(rearrange(noise, "b f c h w -> b c f h w"))  # (b, 1, f, h, w)
        return x[:, 0]  # (b, f, h, w)
