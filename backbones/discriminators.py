"""Discriminators on a Latte trunk: AAPT's per-frame logits from APT's cross-attention heads.

AAPT (Lin et al. 2025, §2.2) gives the discriminator the generator's block-causal architecture with "logit
output projection layers" that output one logit per frame, initialised from the diffusion-adaptation
weights. The head is APT's (arXiv 2501.08316, §3): after blocks at 16/36, 26/36 and 36/36 of the depth, a
cross-attention whose one learnable query attends to the visual tokens; the outputs are concatenated,
normalised and projected to a logit. Applied per frame (our reading: AAPT only says "one logit per
frame"): frame k's query sees only frame k's tokens, and the causal trunk makes logit k depend on frames <= k.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from backbones.latte import Latte
from backbones.layers import require

APT_DEPTHS = (16 / 36, 26 / 36, 36 / 36)  # APT's head positions (blocks 16, 26, 36 of 36), as depth fractions


#################################################################################
#                       Cross-Attention Logit Heads (APT)                       #
#################################################################################


class QueryHead(nn.Module):
    """One learnable query per frame attending to that frame's tokens: (b, t, l, d) -> (b, t, d)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The query's attention output per frame (b, t, d) from tokens x (b, t, l, d)."""
        b = x.shape[0]
        tokens = rearrange(self.norm(x), "b t l d -> (b t) l d")  # (b*t, l, d): one frame per row
        k, v = rearrange(self.kv(tokens), "n l (two h e) -> two n h l e", two=2, h=self.num_heads)
        q = rearrange(self.q(self.query), "one q (h e) -> one h q e", h=self.num_heads)  # (1, h, 1, e)
        out = F.scaled_dot_product_attention(q.expand(k.shape[0], -1, -1, -1), k, v)  # (b*t, h, 1, e)
        out = rearrange(out, "(b t) h one e -> b t (one h e)", b=b)  # (b, t, d)
        return self.proj(out)  # (b, t, d)


#################################################################################
#                          Per-Frame Discriminator (AAPT)                       #
#################################################################################


class FrameDiscriminator(nn.Module):
    """A causal Latte trunk + cross-attention heads after chosen blocks -> one logit per generated frame.

    Its input is laid out as the generator's: position k joins frame k (in the noise channels) and frame k-1
    (in the recycled-frame channels), so a clip (b, f, c, h, w) gets f - 1 logits, one per frame after the
    given first one. ``t`` conditions the trunk (AAPT: t ~ U(0, 1), unshifted); the frames are not noised.
    ``layers``: block indices (negative from the end); None: APT's depths 16/36, 26/36, 36/36 scaled to the
    trunk's depth. The trunk's final layer is not used and stays frozen.
    """

    def __init__(self, trunk: Latte, layers: Sequence[int] | None = None, num_heads: int | None = None):
        super().__init__()
        require(
            trunk.temporal_mask == "causal",
            "the discriminator trunk must be causal (backbone.temporal_mask=causal) so that logit k judges "
            "frames <= k, as the generator makes them",
        )
        require(
            trunk.in_channels == 2 * trunk.out_channels,
            f"the trunk takes a frame and its previous frame on channels: in_channels={trunk.in_channels} "
            f"must be twice out_channels={trunk.out_channels}",
        )
        self.trunk = trunk
        depth = trunk.depth
        default = [max(0, round(depth * fraction) - 1) for fraction in APT_DEPTHS]
        self.layers = trunk.block_indices(default if layers is None else layers)
        d = trunk.hidden_size
        self.heads = nn.ModuleList(QueryHead(d, num_heads or trunk.num_heads) for _ in self.layers)
        self.norm = nn.LayerNorm(len(self.layers) * d, eps=1e-6)
        self.logit = nn.Linear(len(self.layers) * d, 1)
        self.trunk.final_layer.requires_grad_(False)  # only `features` runs: the head of the trunk is unused

    def pairs(self, video: torch.Tensor) -> torch.Tensor:
        """Inputs (b, f-1, 2c, h, w): frame k on the noise channels, frame k-1 on the recycled ones."""
        assert video.ndim == 5 and video.shape[1] >= 2, (
            f"the discriminator judges videos (b, f, c, h, w) of f >= 2 frames, got {tuple(video.shape)}"
        )
        return torch.cat([video[:, 1:], video[:, :-1]], dim=2)  # (b, f-1, 2c, h, w)

    def forward(self, video: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (b, f-1) of frames 1..f-1 of video (b, f, c, h, w) at backbone timesteps t (b,)."""
        x = self.pairs(video)  # (b, f-1, 2c, h, w)
        hidden = self.trunk.features(x, t, y, layers=self.layers).hidden  # [(b, f-1, l, d)]
        tokens = torch.cat([head(h) for head, h in zip(self.heads, hidden)], dim=-1)  # (b, f-1, n*d)
        return self.logit(self.norm(tokens)).squeeze(-1)  # (b, f-1)
