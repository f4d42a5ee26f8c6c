"""Latte: latent video diffusion transformer, with every ablation axis of the Latte paper as a choice.

Written from the facts of the official Latte code (github.com/Vchitect/Latte: `models/latte.py`,
`models/latte_img.py`) and the ablations of the Latte paper (its Fig. 6): 4 model variants, 2 patch
embeddings, 2 ways to inject the timestep/class, 2 temporal position embeddings and image-video joint
training. The defaults (variant 1, uniform, s_adaln, absolute, bidirectional) are the official model: its
parameter names equal the official ones, so the released checkpoints load strictly (backbones/pretrained.py,
which also holds the ImageNet-DiT init). The layers it shares with other networks are in backbones/layers.py.

Besides the paper: a causal mode (AAPT's block-causal attention over frames, with a sliding window that keeps
sink frames) that streams frame by frame through a KV cache, per-frame timesteps, and `features` (the
hidden tokens of chosen blocks: a discriminator's trunk).

Videos are `b f c h w` (frames before channels) at the input and at the output. Inside, tokens are kept as
(b, t, l, d): t frames (the clip's latent frames first, then any independent images) of l tokens (the
patch tokens, led by the 1-2 conditioning tokens with conditioning="all_tokens").
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from backbones import frame_attention
from backbones.layers import (
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    RotaryEmbedding,
    TimestepEmbedder,
    adaln_chunks,
    gated,
    modulate,
    require,
    sincos_1d,
    sincos_2d,
    tokens_in_memory_order,
)

LATTE_SIZES: dict[str, dict] = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "tiny": dict(depth=4, hidden_size=128, num_heads=4),
}


def add_to_video(x: torch.Tensor, video: int, update: torch.Tensor) -> torch.Tensor:
    """x (b, t, l, d) plus `update` on its first `video` frames (the clip); images after them stay."""
    if video == x.shape[1]:
        return x + update  # (b, t, l, d)
    return torch.cat([x[:, :video] + update, x[:, video:]], dim=1)  # (b, t, l, d)


#################################################################################
#                   Patch Embeddings: Per Frame or Tubelets (axis 2)            #
#################################################################################


class TubeletEmbed(nn.Module):
    """Compression patch embedding: s x p x p tubelets by a Conv3d with kernel = stride = (s, p, p)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, temporal_stride: int):
        super().__init__()
        self.frames_per_token = temporal_stride
        kernel = (temporal_stride, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a clip (b, f, c, h, w) into tubelet tokens (b, f/s, h*w/p^2, d)."""
        x = self.proj(rearrange(x, "b f c h w -> b c f h w"))  # (b, d, f/s, h/p, w/p)
        return tokens_in_memory_order(rearrange(x, "b d f gh gw -> b f (gh gw) d"))  # (b, f/s, l, d)


class FrameUpsample(nn.Module):
    """Restores the clip's frames after the linear decoder: ConvTranspose3d, kernel = stride = (s, 1, 1)."""

    def __init__(self, channels: int, temporal_stride: int):
        super().__init__()
        kernel = (temporal_stride, 1, 1)
        self.proj = nn.ConvTranspose3d(channels, channels, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample latent frames (b, f/s, c, h, w) to (b, f, c, h, w)."""
        x = self.proj(rearrange(x, "b f c h w -> b c f h w"))  # (b, c, f, h, w)
        return rearrange(x, "b c f h w -> b f c h w")  # (b, f, c, h, w)


def uniform_patches(
    patch_size: int, in_channels: int, hidden_size: int, out_channels: int, temporal_stride: int
) -> tuple[nn.Module, nn.Module]:
    """uniform: per-frame 2-D patches; every frame keeps its tokens, so nothing restores frames."""
    return PatchEmbed(patch_size, in_channels, hidden_size), nn.Identity()


def compression_patches(
    patch_size: int, in_channels: int, hidden_size: int, out_channels: int, temporal_stride: int
) -> tuple[nn.Module, nn.Module]:
    """compression: 3-D tubelets of temporal_stride frames, restored by a transposed convolution."""
    return (
        TubeletEmbed(patch_size, in_channels, hidden_size, temporal_stride),
        FrameUpsample(out_channels, temporal_stride),
    )


# patch_embed -> (embedder of b f c h w clips into (b, t, l, d) tokens, frame restorer after the decoder)
PATCH_EMBEDDINGS: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {
    "uniform": uniform_patches,
    "compression": compression_patches,
}


def random_extra_channels(weight: torch.Tensor) -> None:
    """random: the extra input channels keep the patch embedding's xavier init (AAPT: adapts faster)."""


def zero_extra_channels(weight: torch.Tensor) -> None:
    """zero: the extra input channels start at zero, so a fresh model ignores them."""
    nn.init.zeros_(weight)


# extra_channels_init -> init of the patch-embedding weights (d, c_extra, [s,] p, p) of the input channels
# beyond the prediction's (e.g. AAPT's previous latent frame, joined on channels to the noisy frame)
EXTRA_CHANNEL_INITS: dict[str, Callable[[torch.Tensor], None]] = {
    "random": random_extra_channels,
    "zero": zero_extra_channels,
}


#################################################################################
#                      Timestep and Class Injection (axis 3)                    #
#################################################################################


@dataclass
class Frames:
    """What every block needs to know about the frames of one forward call besides their tokens."""

    video: int  # frames [0, video) are the clip's (latent) frames; the rest are independent images
    c: torch.Tensor | None  # (b, t, d) conditioning vector per frame (s_adaln), else None
    offset: int | torch.Tensor = 0  # absolute position of the clip's first frame (frames already streamed)
    mask: torch.Tensor | None = None  # (video, n + video) bool: may clip frame i see key frame j; None: all

    def video_only(self) -> "Frames":
        """The same description restricted to the clip's frames."""
        return dataclasses.replace(self, c=None if self.c is None else self.c[:, : self.video])


class AdaLNConditioning:
    """s_adaln (official): c = t_emb + y_emb scales, shifts and gates every block and the final layer."""

    affine_norms = False  # adaLN supplies scale and shift

    @staticmethod
    def modulation(hidden_size: int, chunks: int) -> nn.Module | None:
        """adaLN: SiLU then a Linear to `chunks` vectors (zero-initialised: adaLN-Zero)."""
        return nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, chunks * hidden_size))

    @staticmethod
    def condition(t_emb: torch.Tensor, labels: torch.Tensor | None) -> tuple:
        """(c, None): per-frame vectors c = t_emb (+ the frame's label embedding), shape (b, t, d)."""
        return (t_emb if labels is None else t_emb + labels), None


class TokenConditioning:
    """all_tokens: t_emb (and the label embedding) are extra tokens of every frame, through every block."""

    affine_norms = True  # plain pre-norm blocks

    @staticmethod
    def modulation(hidden_size: int, chunks: int) -> nn.Module | None:
        """No modulation: blocks and the final layer are unconditioned except through attention."""
        return None

    @staticmethod
    def condition(t_emb: torch.Tensor, labels: torch.Tensor | None) -> tuple:
        """(None, tokens): per-frame tokens [t_emb] or [t_emb, the frame's label embedding] (b, t, m, d).

        Latte.features puts them before each frame's patch tokens, so they take part in every attention
        (within the frame, across frames at their own location) and every MLP like the patch tokens, and
        drops them before the final layer (U-ViT's "all as tokens", inside Latte's factorised sequences).
        """
        tokens = t_emb.unsqueeze(2)  # (b, t, 1, d)
        if labels is not None:
            tokens = torch.cat([tokens, labels.unsqueeze(2)], dim=2)  # (b, t, 2, d)
        return None, tokens


Conditioner = type[AdaLNConditioning] | type[TokenConditioning]
CONDITIONINGS: dict[str, Conditioner] = {
    "s_adaln": AdaLNConditioning,
    "all_tokens": TokenConditioning,
}


#################################################################################
#                 Which Frames a Frame Sees, and the KV Cache                   #
#################################################################################


def all_frames(queries: torch.Tensor, keys: torch.Tensor, window: int | None, sink_frames: int) -> None:
    """bidirectional (official): every clip frame sees every clip frame (no mask)."""
    return None


def causal_frames(
    queries: torch.Tensor, keys: torch.Tensor, window: int | None, sink_frames: int
) -> torch.Tensor:
    """causal: (q, k) bool, whether the frame at position queries[i] sees the frame at position keys[j].

    A frame sees the frames at or before it; with a window only the first `sink_frames` frames and the
    `window` latest ones (query - window < key <= query), AAPT's sliding window that keeps the first frame.
    """
    seen = keys[None, :] <= queries[:, None]  # (q, k)
    if window is None:
        return seen
    recent = keys[None, :] > queries[:, None] - window  # (q, k)
    sink = keys[None, :] < sink_frames  # (1, k)
    return seen & (recent | sink)  # (q, k)


# temporal_mask -> the rule (query positions, key positions, window, sink_frames) -> mask or None (all)
TEMPORAL_MASKS: dict[str, Callable[..., torch.Tensor | None]] = {
    "bidirectional": all_frames,
    "causal": causal_frames,
}


class TemporalKV:
    """The cache of one temporal attention: keys (rotated at their absolute positions) and values.

    A plain class, not a dataclass: FSDP2 rebuilds the dataclasses among a block's arguments that hold
    tensors requiring grad (student forcing), so `append` would fill a copy the stream never sees.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None  # (b*l, h, n, e): n cached frames, RoPE already applied
        self.v: torch.Tensor | None = None  # (b*l, h, n, e)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new frames' k, v (b*l, h, f, e); return all frames', cached first (b*l, h, n + f, e)."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # (b*l, h, n + f, e)
        self.k, self.v = k, v
        return k, v


@dataclass
class LatteCache:
    """A stream of frames through a causal Latte: per time-mixing block its K/V, the frames' positions.

    Between calls it holds the frames that a later frame can still see: all of them without a window, else
    at most sink_frames + window - 1. Plain growing tensors; `StaticLatteCache` is the fixed-size ring
    buffer (for torch.compile and CUDA graphs). Stream under torch.no_grad() unless gradients should flow
    into cached frames.
    """

    batch_size: int
    layers: dict[int, TemporalKV]  # block index -> the K/V of its temporal attention
    positions: torch.Tensor  # (n,) absolute positions of the cached frames
    frames: int = 0  # frames streamed so far: the position of the next frame

    def start(self, video: int, visible: Callable, window: int | None, sink_frames: int) -> tuple:
        """(offset, mask (f, n + f)) of `video` new frames: their position, whom each one sees."""
        queries = torch.arange(self.frames, self.frames + video, device=self.positions.device)  # (f,)
        keys = torch.cat([self.positions, queries])  # (n + f,): the cached frames come first
        return self.frames, visible(queries, keys, window, sink_frames)

    def advance(self, new_frames: int, window: int | None, sink_frames: int) -> None:
        """Count the `new_frames` frames every layer appended; drop the frames that no later frame sees.

        The cache holds the sink frames, then consecutive positions up to the newest frame, so the frames the
        next one sees (`causal_frames`) are a prefix and a suffix of it, whose lengths the host knows: slices,
        where a boolean mask of the device positions would make the host wait for the GPU at every layer.
        """
        start = self.frames
        new = torch.arange(start, start + new_frames, device=self.positions.device)  # (f,)
        self.positions, self.frames = torch.cat([self.positions, new]), start + new_frames  # (n + f,)
        if window is None:
            return
        n, sinks = self.positions.shape[0], min(sink_frames, self.frames)  # the first `sinks` are sink frames
        recent = min(window - 1, self.frames - sinks)  # the last ones: positions > the next frame's - window
        if sinks + recent >= n:
            return

        def kept(x: torch.Tensor, dim: int) -> torch.Tensor:
            return torch.cat([x.narrow(dim, 0, sinks), x.narrow(dim, n - recent, recent)], dim=dim)

        self.positions = kept(self.positions, 0)  # (n',)
        for kv in self.layers.values():
            kv.k, kv.v = kept(kv.k, 2), kept(kv.v, 2)  # (b*l, h, n', e)


@dataclass
class StaticKV:
    """One temporal attention's K/V in fixed-size buffers (b*l, h, slots, e), written in place at `slot`."""

    slot: torch.Tensor  # (1,) long: the slot of the frame being streamed (shared with its cache)
    slots: int  # sink_frames + window
    k: torch.Tensor | None = None  # (b*l, h, slots, e), allocated by the first call; RoPE already applied
    v: torch.Tensor | None = None  # (b*l, h, slots, e)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new frame's k, v (b*l, h, 1, e) into its slot; return every slot's (b*l, h, slots, e)."""
        if self.k is None:
            shape = (k.shape[0], k.shape[1], self.slots, k.shape[3])
            self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)  # (b*l, h, slots, e)
        self.k.index_copy_(2, self.slot, k)  # (b*l, h, slots, e)
        self.v.index_copy_(2, self.slot, v)  # (b*l, h, slots, e)
        return self.k, self.v


@dataclass
class StaticLatteCache:
    """`LatteCache` as a ring buffer of fixed size: static shapes and no host sync, so a step can be graphed.

    Slots [0, sink_frames) hold the sink frames, the `window` slots after them the latest frames in ring
    order (frame p >= sink_frames at sink_frames + (p - sink_frames) % window). A new frame is written into
    its slot before it attends (it overwrites the frame `window` before it, which it no longer sees), and the
    mask hides empty slots. Keys are rotated at absolute positions, as in LatteCache, so both give the same
    outputs (to float round-off: the keys are summed in another order). One frame per call.
    """

    batch_size: int
    layers: dict[int, StaticKV]  # block index -> the K/V buffers of its temporal attention
    positions: torch.Tensor  # (sink_frames + window,) long: each slot's frame position, -1 while empty
    frame: torch.Tensor  # (1,) long: the position of the next frame
    slot: torch.Tensor  # (1,) long: the slot of the frame being streamed
    window: int
    sink_frames: int

    def start(self, video: int, visible: Callable, window: int | None, sink_frames: int) -> tuple:
        """(offset (1,), mask (1, slots)) of the next frame, after claiming its slot."""
        require(video == 1, f"a StaticLatteCache streams one frame per call, got {video}")
        ring = self.sink_frames + (self.frame - self.sink_frames) % self.window  # (1,)
        self.slot.copy_(torch.where(self.frame < self.sink_frames, self.frame, ring))  # (1,)
        self.positions.index_copy_(0, self.slot, self.frame)  # (slots,)
        filled = (self.positions >= 0)[None]  # (1, slots)
        return self.frame, visible(self.frame, self.positions, window, sink_frames) & filled  # (1, slots)

    def advance(self, new_frames: int, window: int | None, sink_frames: int) -> None:
        """Count the new frame (in place, so a captured graph advances the stream at each replay)."""
        self.frame.add_(new_frames)

    def reset(self) -> None:
        """Empty the stream in place, keeping every buffer (and so a captured graph's addresses)."""
        self.positions.fill_(-1)
        self.frame.zero_()
        self.slot.zero_()

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor the stream mutates (for torch._dynamo.mark_static_address)."""
        kv = [t for layer in self.layers.values() for t in (layer.k, layer.v) if t is not None]
        return [self.positions, self.frame, self.slot, *kv]


#################################################################################
#               Attention within Frames, across Frames, or Both                 #
#################################################################################


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    backends: Sequence[SDPBackend] | None = None,
) -> torch.Tensor:
    """scaled_dot_product_attention of (n, h, s, e) by only `backends`, in order (None: torch's choice)."""
    if backends is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (n, h, s, e)
    with sdpa_kernel(list(backends), set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (n, h, s, e)


def across_frames_kernels(q: torch.Tensor, k: torch.Tensor) -> tuple[SDPBackend, ...] | None:
    """SDPA kernels across frames: the math kernel where it was measured faster, else torch's choice.

    Only for what the fused kernel (backbones/frame_attention.py) does not take, e.g. RoPE in compiled bf16.

    Measured (bench/attention_backends.py, one H100): compiled bf16 training at Latte-XL/2's 1,280 sequences
    of 16 frames, where the math kernel's two batched matmuls and softmax took 1.68 ms fwd + bwd per block
    against 1.98 for forced cuDNN and 2.08 for torch's choice, and the step 2.4% less. Eager it is slower;
    sampling, KV-cached streaming, fp32 runs and longer clips were not measured, so they keep torch's choice.
    """
    measured = torch.compiler.is_compiling() and torch.is_grad_enabled() and q.dtype == torch.bfloat16
    whole_short_clip = q.shape[-2] == k.shape[-2] <= 32  # no KV cache; the scores stay small in fp32
    return (SDPBackend.MATH,) if measured and whole_short_clip else None


def attend_within_frames(qkv: torch.Tensor, backends: Sequence[SDPBackend] | None = None) -> torch.Tensor:
    """The l tokens of each frame attend to each other: qkv (3, b, h, t, l, e) -> (b, h, t, l, e)."""
    b = qkv.shape[1]
    q, k, v = rearrange(qkv, "three b h t l e -> three (b t) h l e")  # (b*t, h, l, e)
    x = sdpa(q, k, v, None, backends)  # (b*t, h, l, e)
    return rearrange(x, "(b t) h l e -> b h t l e", b=b)  # (b, h, t, l, e)


class Attention(nn.Module):
    """Multi-head self-attention, fused qkv (rows [q; k; v], head index slowest); subclasses group tokens.

    Every subclass maps modulated tokens (b, t, l, d) to their attention update (b, t, l, d).
    """

    over_time = False  # attends across frames: RoPE (temporal_pos="rope") and the KV cache apply to it
    time_backends: Sequence[SDPBackend] | None = None  # forces SDPA kernels across frames (a bench's knob)

    def __init__(self, hidden_size: int, num_heads: int, rope: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.rope = RotaryEmbedding(hidden_size // num_heads) if rope and self.over_time else None

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """Fused q, k, v of tokens (b, t, l, d) split into heads: (3, b, h, t, l, e)."""
        return rearrange(self.qkv(x), "b t l (three h e) -> three b h t l e", three=3, h=self.num_heads)

    def rotate(self, x: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
        """RoPE of the frame positions offset.. along dim 2 of queries or keys (n, h, f, e); else identity."""
        return x if self.rope is None else self.rope(x, offset)  # (n, h, f, e)

    def attend_across_frames(
        self, qkv: torch.Tensor, frames: Frames, kv: TemporalKV | StaticKV | None
    ) -> torch.Tensor:
        """The clip's frames attend to the frames they see: qkv (3, b, h, f, l, e) -> (b, h, f, l, e).

        With a cache `kv`, the cached frames' keys and values come first, and the new frames' join them.
        Whole bidirectional clips without RoPE go through one fused kernel where it runs (bf16/fp16 on sm80+:
        backbones/frame_attention.py), which reads q, k, v in place; the rest through SDPA.
        """
        tokens = qkv.permute(1, 3, 4, 0, 2, 5)  # (b, f, l, 3, h, e): the qkv projection's layout, a view
        plain = kv is None and frames.mask is None and self.rope is None and self.time_backends is None
        if plain and frame_attention.supports(tokens):  # no regrouping: one fused kernel fwd and bwd
            return frame_attention.attend_across_frames(tokens).permute(0, 3, 1, 2, 4)  # (b, h, f, l, e)
        b = qkv.shape[1]
        q, k, v = rearrange(qkv, "three b h f l e -> three (b l) h f e")  # (b*l, h, f, e)
        q, k = self.rotate(q, frames.offset), self.rotate(k, frames.offset)  # (b*l, h, f, e)
        if kv is not None:
            k, v = kv.append(k, v)  # (b*l, h, n + f, e)
        x = sdpa(q, k, v, frames.mask, self.time_backends or across_frames_kernels(q, k))  # (b*l, h, f, e)
        return rearrange(x, "(b l) h f e -> b h f l e", b=b)  # (b, h, f, l, e)


class SpatialAttention(Attention):
    """Attention among the l tokens of each frame, clip frames and images alike."""

    def forward(
        self, x: torch.Tensor, frames: Frames, kv: TemporalKV | StaticKV | None = None
    ) -> torch.Tensor:
        """Update (b, t, l, d) of tokens x (b, t, l, d)."""
        x = attend_within_frames(self.heads(x))  # (b, h, t, l, e)
        return self.proj(rearrange(x, "b h t l e -> b t l (h e)"))  # (b, t, l, d)


class TemporalAttention(Attention):
    """Attention among the clip's frames at each token location; image frames get no update."""

    over_time = True

    def forward(
        self, x: torch.Tensor, frames: Frames, kv: TemporalKV | StaticKV | None = None
    ) -> torch.Tensor:
        """Update (b, t, l, d) of tokens x (b, t, l, d): across the first `video` frames, zero for images."""
        images = x[:, frames.video :]  # (b, n, l, d)
        x = self.attend_across_frames(self.heads(x[:, : frames.video]), frames, kv)  # (b, h, f, l, e)
        x = self.proj(rearrange(x, "b h f l e -> b f l (h e)"))  # (b, f, l, d)
        if images.shape[1]:  # joint training: the images are not attended across
            x = torch.cat([x, torch.zeros_like(images)], dim=1)  # (b, t, l, d)
        return x


class FactorisedHeadsAttention(Attention):
    """Variant 4: the first half of the heads attend within each frame, the second half across frames.

    Both groups share qkv and proj; concatenating their outputs before `proj` equals summing the two
    groups' projected outputs (the paper's "outputs summed"). An image frame's temporal heads attend only
    to itself: a one-key attention, which returns each token's own value.
    """

    over_time = True

    def forward(
        self, x: torch.Tensor, frames: Frames, kv: TemporalKV | StaticKV | None = None
    ) -> torch.Tensor:
        """Update (b, t, l, d) of tokens x (b, t, l, d)."""
        half, video = self.num_heads // 2, frames.video
        qkv = self.heads(x)  # (3, b, h, t, l, e)
        space = attend_within_frames(qkv[:, :, :half])  # (b, h/2, t, l, e)
        time = self.attend_across_frames(qkv[:, :, half:, :video], frames, kv)  # (b, h/2, f, l, e)
        if video < x.shape[1]:  # joint training: an image's temporal heads see that image alone
            time = torch.cat([time, qkv[2, :, half:, video:]], dim=2)  # (b, h/2, t, l, e): their own values
        x = torch.cat([space, time], dim=1)  # (b, h, t, l, e)
        return self.proj(rearrange(x, "b h t l e -> b t l (h e)"))  # (b, t, l, d)


#################################################################################
#                         Transformer Blocks and Variants                       #
#################################################################################


class LatteBlock(nn.Module):
    """Pre-norm transformer block: its attention branch(es), then an MLP branch; subclasses pick attentions.

    With s_adaln every branch is scaled/shifted before and gated after by adaLN-Zero (one modulation per
    block, shared by all its attention branches); with all_tokens the norms are affine and nothing is
    modulated (the conditioning tokens are among the tokens). A block has at most one attention across
    frames, so one TemporalKV per block caches it.
    """

    attentions: dict[str, type[Attention]] = {}  # attribute name -> attention class, applied in this order
    dit_parts: tuple[str, ...] = ()  # submodules that an image DiT block of the same index initialises

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float, conditioner: Conditioner, rope: bool
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=conditioner.affine_norms, eps=1e-6)
        for name, attention in self.attentions.items():
            setattr(self, name, attention(hidden_size, num_heads, rope))
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=conditioner.affine_norms, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_ratio)
        self.adaLN_modulation = conditioner.modulation(hidden_size, 6)

    @classmethod
    def mixes_time(cls) -> bool:
        """Whether the block attends across frames."""
        return any(attention.over_time for attention in cls.attentions.values())

    def forward(
        self, x: torch.Tensor, frames: Frames, kv: TemporalKV | StaticKV | None = None
    ) -> torch.Tensor:
        """Update tokens x (b, t, l, d) of the frames that `frames` describes (cache `kv`, if streaming)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaln_chunks(
            self.adaLN_modulation, frames.c, 6
        )  # (b, t, 1, d) each, or None
        for name in self.attentions:
            h = modulate(self.norm1(x), shift_msa, scale_msa)  # (b, t, l, d)
            x = x + gated(gate_msa, getattr(self, name)(h, frames, kv))  # (b, t, l, d)
        return x + gated(gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))  # (b, t, l, d)


class SpatialBlock(LatteBlock):
    """Variants 1 and 2: attention within each frame (clip frames and images alike)."""

    attentions = {"attn": SpatialAttention}
    dit_parts = ("attn", "mlp", "adaLN_modulation")


class TemporalBlock(LatteBlock):
    """Variants 1 and 2: attention across the clip's frames; image frames skip the whole block (LatteIMG)."""

    attentions = {"attn": TemporalAttention}

    def forward(
        self, x: torch.Tensor, frames: Frames, kv: TemporalKV | StaticKV | None = None
    ) -> torch.Tensor:
        """Update the clip's tokens x[:, :video] (b, t, l, d); the images' tokens pass unchanged."""
        clip = super().forward(x[:, : frames.video], frames.video_only(), kv)  # (b, f, l, d)
        if frames.video == x.shape[1]:
            return clip  # (b, t, l, d)
        return torch.cat([clip, x[:, frames.video :]], dim=1)  # (b, t, l, d)


class FactorisedAttentionBlock(LatteBlock):
    """Variant 3: attention within each frame, then across the clip's frames (attn_temp), then the MLP."""

    attentions = {"attn": SpatialAttention, "attn_temp": TemporalAttention}
    dit_parts = ("attn", "mlp", "adaLN_modulation")


class FactorisedHeadsBlock(LatteBlock):
    """Variant 4: one attention whose heads split between space and time, then the MLP."""

    attentions = {"attn": FactorisedHeadsAttention}
    dit_parts = ("attn", "mlp", "adaLN_modulation")


def matched_depth(depth: int, block: type[LatteBlock], mlp_ratio: float) -> int:
    """The depth at which `block`s hold the weights of `depth` one-attention blocks (the paper's budget).

    Weights per block in units of D²: adaLN 6, qkv + proj 4 per attention, MLP 2 * mlp_ratio (biases aside).
    """
    weights_one, weights = (6 + 4 * n + 2 * mlp_ratio for n in (1, len(block.attentions)))
    return max(1, round(depth * weights_one / weights))


def interleaved(depth: int, mlp_ratio: float) -> list[type[LatteBlock]]:
    """Variant 1 (official): blocks[2k] spatial, blocks[2k+1] temporal."""
    require(
        depth % 2 == 0, f"variant 1 pairs spatial and temporal blocks: depth={depth}, but depth must be even"
    )
    return [SpatialBlock, TemporalBlock] * (depth // 2)


def late_fusion(depth: int, mlp_ratio: float) -> list[type[LatteBlock]]:
    """Variant 2: the first half of the blocks spatial, the second half temporal."""
    require(depth % 2 == 0, f"variant 2 splits the blocks in half: depth={depth}, but depth must be even")
    return [SpatialBlock] * (depth // 2) + [TemporalBlock] * (depth // 2)


def factorised_attention(depth: int, mlp_ratio: float) -> list[type[LatteBlock]]:
    """Variant 3: every block attends in space then time; fewer blocks for the same weights (XL: 23)."""
    return [FactorisedAttentionBlock] * matched_depth(depth, FactorisedAttentionBlock, mlp_ratio)


def factorised_heads(depth: int, mlp_ratio: float) -> list[type[LatteBlock]]:
    """Variant 4: every block splits its heads between space and time; same weights per block as variant 1."""
    return [FactorisedHeadsBlock] * matched_depth(depth, FactorisedHeadsBlock, mlp_ratio)


# variant -> the block classes, in order, for a size's depth and mlp_ratio
VARIANTS: dict[int, Callable[[int, float], list[type[LatteBlock]]]] = {
    1: interleaved,
    2: late_fusion,
    3: factorised_attention,
    4: factorised_heads,
}


class FinalLayer(nn.Module):
    """LayerNorm (adaLN-modulated by shift, scale with s_adaln), then a linear map from tokens to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, conditioner: Conditioner):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=conditioner.affine_norms, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = conditioner.modulation(hidden_size, 2)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Map tokens (b, t, l, d) to patches (b, t, l, p*p*c_out), ordered (p_row, p_col, channel)."""
        shift, scale = adaln_chunks(self.adaLN_modulation, c, 2)  # (b, t, 1, d) each, or None
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (b, t, l, p*p*c_out)


#################################################################################
#                                  Latte Model                                  #
#################################################################################


TEMPORAL_POSITIONS = ("absolute", "rope")


class Features(NamedTuple):
    """What `Latte.features` returns: hidden patch tokens of chosen blocks, and what the head needs."""

    hidden: list[torch.Tensor]  # (b, t, l, d) patch tokens after each chosen block, in the order asked
    c: torch.Tensor | None  # (b, t, d) per-frame conditioning vector (s_adaln), None with all_tokens


class Latte(nn.Module):
    """Latte with every ablation axis of its paper as a constructor choice; defaults = the official model.

    Axes, each a small piece picked from a registry:
    * `variant` (VARIANTS): 1 interleaved spatial/temporal blocks (official: blocks[2k] spatial,
      blocks[2k+1] temporal); 2 late fusion (first half of the blocks spatial, second half temporal);
      3 factorised attention (each block attends within each frame, then across frames with `attn_temp`,
      each with its own residual under the block's one adaLN, then one MLP); 4 factorised heads (half of
      the heads attend within each frame and half across frames, in one attention).
    * `patch_embed` (PATCH_EMBEDDINGS): "uniform" per-frame p x p patches, or "compression": s x p x p
      tubelets (s = `temporal_stride`, unused by uniform), so the transformer runs on num_frames / s
      latent frames, and a ConvTranspose3d (kernel = stride = (s, 1, 1)) after the linear decoder restores
      num_frames frames (it starts at zero, so a fresh model still outputs 0).
    * `conditioning` (CONDITIONINGS): "s_adaln" (official adaLN-Zero on c = t_emb + y_emb) or
      "all_tokens" (t_emb and y_emb are m = 1-2 extra tokens leading every frame's l patch tokens: they
      pass through every attention and MLP like patch tokens and are dropped before the final layer; no
      adaLN anywhere, so Latte-XL/2 has 448.0M parameters instead of 673.7M).
    * `temporal_pos`: "absolute" (frozen sin-cos `temp_embed`, added once before the first block that
      attends across frames: after block 0 for variant 1, before block depth/2 for 2, at the input for 3
      and 4; a clip has exactly num_frames frames) or "rope" (rotary embedding of the absolute frame index
      on q and k in every temporal attention, at every token location; no `temp_embed`, any clip length).
    * `temporal_mask` (TEMPORAL_MASKS): "bidirectional" (official) or "causal": frame k's temporal
      attention sees frames <= k only, so the whole network is block-causal over frames. With `window`,
      frame k sees the first `sink_frames` frames and frames k-window+1..k (AAPT's sliding window).
      Causal works with every variant and both conditionings, with patch_embed="uniform" only.
    * `out_channels`: channels of the prediction (default in_channels; learn_sigma doubles them, and
      `self.out_channels` counts both halves). With in_channels > out_channels (AAPT: the noisy frame and
      the previous latent frame joined on channels), `extra_channels_init` (EXTRA_CHANNEL_INITS) initialises
      the patch-embedding weights of the extra input channels: "random" (AAPT) or "zero".
    * ImageNet-DiT initialisation is a step applied to a built model: `backbones.init_from_dit(model, path)`
      (`init=imagenet_dit`).

    Streaming (temporal_mask="causal"): `cache = model.new_cache(b)`, then `model(x, t, y, cache=cache)`
    with x (b, f_new, c, h, w), f_new >= 1, runs the new frames at the positions after those streamed
    already, appends their temporal keys/values (keys rotated at their absolute frame index), drops the
    frames the window no longer shows (keeping the sink frames) and returns the new frames' outputs. The
    parallel forward over f frames gives the same outputs (to float round-off). Past num_frames frames, a
    stream needs temporal_pos="rope". `new_cache(b, static=True)` is the same stream in a fixed-size ring
    buffer (one frame per call, no host sync), whose step can be compiled and CUDA-graphed
    (`diffusion.streaming`).

    Timesteps `t` are (b,), one per clip, or (b, f), one per frame of x (uniform patches only).
    `features(..., layers=[i, j])` returns the patch tokens after blocks i, j; forward = features + `head`.

    Depth per variant (the paper equalised parameters): a block of variants 1, 2 and 4 holds qkv + proj
    (4 D²), the MLP (8 D²) and adaLN (6 D²), so they keep the size's depth; a variant-3 block has a second
    attention (22 D²), so its depth is round(depth * 18 / 22) (`matched_depth`): Latte-XL/2 28 -> 23.
    Trainable parameters of Latte-XL/2: 673.68M (variants 1, 2, 4) and 676.36M (3), against the paper's
    673.68 / 673.68 / 676.33 / 676.44M; variant 4 stays 0.41% below the paper (one block more would be
    3.1% above), as its factorised heads add no weights to a block.

    Image-video joint training (LatteIMG): with `num_images=n`, the last n frames of x are independent
    images after the clip. They go through the spatial attention, the MLPs and the final layer, and
    never through temporal attention or temp_embed (variants 1/2: they skip the temporal blocks; 3: they
    skip attn_temp; 4: their temporal heads see only themselves). With labels, `y_image` (b, n) gives
    each image its own label (own label dropout): the clip's frames are conditioned on t + y, image k on
    t + y_image[:, k]. Not with compression, whose tubelets span several frames, nor with a cache.
    """

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
        variant: int = 1,
        patch_embed: str = "uniform",
        temporal_stride: int = 2,
        conditioning: str = "s_adaln",
        temporal_pos: str = "absolute",
        temporal_mask: str = "bidirectional",
        window: int | None = None,
        sink_frames: int = 1,
        out_channels: int | None = None,
        extra_channels_init: str = "random",
    ):
        super().__init__()
        require(size in LATTE_SIZES, f"size={size!r} is unknown; valid sizes: {', '.join(LATTE_SIZES)}")
        depth, hidden_size, num_heads = (LATTE_SIZES[size][k] for k in ("depth", "hidden_size", "num_heads"))
        require(patch_size >= 1, f"patch_size={patch_size} must be a positive integer")
        require(input_size >= 1, f"input_size={input_size} must be a positive integer (latent side length)")
        require(
            input_size % patch_size == 0,
            f"input_size={input_size} is not divisible by patch_size={patch_size}: "
            "the latent grid must split into whole patches",
        )
        require(in_channels >= 1, f"in_channels={in_channels} must be >= 1")
        require(
            out_channels is None or out_channels >= 1,
            f"out_channels={out_channels} must be >= 1 or null (= in_channels)",
        )
        require(num_frames >= 1, f"num_frames={num_frames} must be >= 1")
        require(num_classes >= 0, f"num_classes={num_classes} must be >= 0 (0 = unconditional)")
        require(0 <= class_dropout_prob <= 1, f"class_dropout_prob={class_dropout_prob} must be in [0, 1]")
        require(mlp_ratio > 0, f"mlp_ratio={mlp_ratio} must be > 0")
        require(
            hidden_size % num_heads == 0 and hidden_size % 4 == 0,
            f"size={size!r} has hidden_size={hidden_size}, which must be divisible by num_heads={num_heads} "
            "and by 4 (2-D sin-cos position embedding)",
        )
        require(
            variant in VARIANTS,
            f"variant={variant!r} is unknown; valid variants: 1 (interleaved), 2 (late fusion), "
            "3 (factorised attention), 4 (factorised heads)",
        )
        for key, value, registry in (
            ("patch_embed", patch_embed, PATCH_EMBEDDINGS),
            ("conditioning", conditioning, CONDITIONINGS),
            ("temporal_pos", temporal_pos, TEMPORAL_POSITIONS),
            ("temporal_mask", temporal_mask, TEMPORAL_MASKS),
            ("extra_channels_init", extra_channels_init, EXTRA_CHANNEL_INITS),
        ):
            require(value in registry, f"{key}={value!r} is unknown; valid: {', '.join(registry)}")
        require(temporal_stride >= 1, f"temporal_stride={temporal_stride} must be a positive integer")
        require(
            patch_embed != "compression" or num_frames % temporal_stride == 0,
            f"num_frames={num_frames} is not divisible by temporal_stride={temporal_stride}: "
            "compression patch embedding cuts the clip into tubelets of temporal_stride frames",
        )
        require(
            variant != 4 or num_heads % 2 == 0,
            f"variant 4 splits the heads between space and time, but size={size!r} has num_heads={num_heads}",
        )
        require(
            temporal_pos != "rope" or (hidden_size // num_heads) % 2 == 0,
            f"RoPE rotates channel pairs, but size={size!r} has an odd head dim {hidden_size // num_heads}",
        )
        require(
            temporal_mask == "bidirectional" or patch_embed == "uniform",
            f"temporal_mask={temporal_mask!r} needs patch_embed='uniform': a compression tubelet (and the "
            "frame upsampling after the decoder) mixes the frames it spans",
        )
        require(
            window is None or (temporal_mask == "causal" and isinstance(window, int) and window >= 1),
            f"window={window!r} must be null or a positive integer with temporal_mask='causal' "
            f"(got temporal_mask={temporal_mask!r})",
        )
        require(
            isinstance(sink_frames, int) and sink_frames >= 0,
            f"sink_frames={sink_frames!r} must be an int >= 0",
        )
        self.size, self.hidden_size, self.num_heads = size, hidden_size, num_heads
        self.patch_size, self.input_size, self.num_frames = patch_size, input_size, num_frames
        self.in_channels, self.learn_sigma, self.num_classes = in_channels, learn_sigma, num_classes
        self.variant, self.patch_embed, self.temporal_stride = variant, patch_embed, temporal_stride
        self.conditioning, self.temporal_pos = conditioning, temporal_pos
        self.temporal_mask, self.window, self.sink_frames = temporal_mask, window, sink_frames
        self.visible = TEMPORAL_MASKS[temporal_mask]
        prediction_channels = in_channels if out_channels is None else out_channels
        self.out_channels = 2 * prediction_channels if learn_sigma else prediction_channels
        self.extra_in_channels = max(0, in_channels - prediction_channels)  # e.g. AAPT's previous frame
        self.extra_channels_init = extra_channels_init
        self.num_patches = (input_size // patch_size) ** 2
        self.conditioner = CONDITIONINGS[conditioning]
        layout = VARIANTS[variant](depth, mlp_ratio)
        self.depth = len(layout)

        self.x_embedder, self.frame_upsample = PATCH_EMBEDDINGS[patch_embed](
            patch_size, in_channels, hidden_size, self.out_channels, temporal_stride
        )
        self.latent_frames = num_frames // self.x_embedder.frames_per_token
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes else None
        # Frozen Parameters, not buffers, so that they are in the state_dict as in the official checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, hidden_size), requires_grad=False)
        self.temp_embed, self.temp_embed_at = None, None
        if temporal_pos == "absolute":
            self.temp_embed = nn.Parameter(
                torch.zeros(1, self.latent_frames, hidden_size), requires_grad=False
            )
            self.temp_embed_at = [block.mixes_time() for block in layout].index(True)
        rope = temporal_pos == "rope"
        self.blocks = nn.ModuleList(
            block(hidden_size, num_heads, mlp_ratio, self.conditioner, rope) for block in layout
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, self.conditioner)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official initialisation; adaLN-Zero and the last output layer start at zero, so the output is 0."""
        # Every Linear: xavier-uniform weight, zero bias.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Fixed sin-cos tables for the spatial grid and the (latent) frames.
        grid_size = self.input_size // self.patch_size
        self.pos_embed.data.copy_(sincos_2d(self.hidden_size, grid_size).unsqueeze(0))
        if self.temp_embed is not None:
            frames = torch.arange(self.latent_frames)
            self.temp_embed.data.copy_(sincos_1d(self.hidden_size, frames).unsqueeze(0))
        # Patch embedding like a Linear: xavier-uniform on the (d, c*[s*]p*p) view, zero bias; then the
        # input channels beyond the prediction's as extra_channels_init says.
        weight = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.extra_in_channels:
            EXTRA_CHANNEL_INITS[self.extra_channels_init](weight[:, -self.extra_in_channels :])
        # Label table and timestep MLP weights: N(0, 0.02).
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every modulation (s_adaln) starts at zero.
        for module in [*self.blocks, self.final_layer]:
            if module.adaLN_modulation is not None:
                nn.init.zeros_(module.adaLN_modulation[-1].weight)
                nn.init.zeros_(module.adaLN_modulation[-1].bias)
        # The last layer that makes the output starts at zero: the frame upsampling with compression (the
        # linear before it keeps its xavier init, or both would stay zero), else the linear decoder.
        upsample = isinstance(self.frame_upsample, FrameUpsample)
        output_layer = self.frame_upsample.proj if upsample else self.final_layer.linear
        nn.init.zeros_(output_layer.weight)
        nn.init.zeros_(output_layer.bias)

    def new_cache(self, batch_size: int, static: bool = False) -> LatteCache | StaticLatteCache:
        """An empty stream of `batch_size` videos: `model(x, t, y, cache=cache)` appends frames to it.

        static=True: the fixed-size ring buffer (`StaticLatteCache`: one frame per call, needs a window and
        temporal_pos='rope'), whose step can be torch.compile'd and CUDA-graphed.
        """
        require(
            self.temporal_mask == "causal",
            f"new_cache needs temporal_mask='causal', got {self.temporal_mask!r}: a bidirectional model's "
            "frames see the frames after them, so they cannot be computed one call at a time",
        )
        device = self.pos_embed.device
        mixing = [i for i, block in enumerate(self.blocks) if block.mixes_time()]
        if not static:
            positions = torch.zeros(0, dtype=torch.long, device=device)  # (0,)
            return LatteCache(batch_size, {i: TemporalKV() for i in mixing}, positions)
        require(
            self.window is not None and self.temporal_pos == "rope",
            f"a static cache has sink_frames + window slots, so it needs a window and temporal_pos='rope' "
            f"(got window={self.window}, temporal_pos={self.temporal_pos!r})",
        )
        slots, slot = self.sink_frames + self.window, torch.zeros(1, dtype=torch.long, device=device)
        positions = torch.full((slots,), -1, dtype=torch.long, device=device)  # (slots,) all empty
        frame = torch.zeros(1, dtype=torch.long, device=device)  # (1,)
        layers = {i: StaticKV(slot, slots) for i in mixing}
        return StaticLatteCache(batch_size, layers, positions, frame, slot, self.window, self.sink_frames)

    #############################################################################
    #                            Inputs and Embeddings                          #
    #############################################################################

    def check_inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None,
        num_images: int,
        cache: LatteCache | StaticLatteCache | None,
    ) -> None:
        """Assert the layout of a forward call's inputs; raise a ValueError for an unsupported combination."""
        assert x.ndim == 5, f"Latte expects latents shaped (b, f, c, h, w), got {tuple(x.shape)}"
        b, f, c, h, w = x.shape  # latents: frames before channels
        assert c == self.in_channels, f"got {c} channels on dim 2, expected in_channels={self.in_channels}"
        assert h == w == self.input_size, (
            f"got {h}x{w} latents, but pos_embed is built for {self.input_size}^2"
        )
        assert t.shape in ((b,), (b, f)), (
            f"t must hold one timestep per video ({b},) or one per frame ({b}, {f}), got {tuple(t.shape)}"
        )
        assert (y is not None) == (self.y_embedder is not None), (
            f"y must be given iff the model is class-conditional (num_classes={self.num_classes})"
        )
        require(
            isinstance(num_images, int) and 0 <= num_images < f,
            f"num_images={num_images!r} must be an int in [0, {f}): the last num_images of the {f} frames "
            "are images, the frames before them the clip",
        )
        clip, tubelets = f - num_images, self.x_embedder.frames_per_token > 1
        require(
            num_images == 0 or not tubelets,
            f"x carries {num_images} image frames after the clip, but patch_embed='compression' merges "
            "frames into tubelets: image-video joint training needs patch_embed='uniform'",
        )
        require(
            t.ndim == 1 or not tubelets,
            "t of shape (b, f) gives every frame its own timestep, but patch_embed='compression' merges "
            "frames into tubelets: use t of shape (b,)",
        )
        require(
            clip % self.x_embedder.frames_per_token == 0,
            f"got a clip of {clip} frames, not divisible by temporal_stride={self.temporal_stride} "
            "(patch_embed='compression' cuts the clip into tubelets)",
        )
        if self.temporal_pos == "absolute" and cache is None:
            assert clip == self.num_frames, (
                f"got {f} frames, {'fewer' if clip < self.num_frames else 'more'} than num_frames="
                f"{self.num_frames} + num_images={num_images}: temporal_pos='absolute' has a temp_embed row "
                "for each of num_frames clip frames (temporal_pos='rope' takes clips of any length)"
            )
        if cache is not None:
            require(cache.batch_size == b, f"the cache streams {cache.batch_size} videos, but x holds {b}")
            require(num_images == 0, f"num_images={num_images}: a streamed call carries clip frames only")
            if self.temporal_pos == "absolute":  # a static cache needs rope
                require(
                    cache.frames + clip <= self.num_frames,
                    f"the stream reaches frame {cache.frames + clip}, but temporal_pos='absolute' embeds "
                    f"num_frames={self.num_frames} frames: stream with temporal_pos='rope'",
                )

    def embed_timesteps(self, t: torch.Tensor, frames: int) -> torch.Tensor:
        """Timestep embedding per latent frame (b, t, d) of t (b,), one per clip, or (b, t), one per frame."""
        if t.ndim == 1:
            return repeat(self.t_embedder(t), "b d -> b t d", t=frames)  # (b, t, d)
        return rearrange(self.t_embedder(t.flatten()), "(b t) d -> b t d", b=t.shape[0])  # (b, t, d)

    def embed_labels(
        self, y: torch.Tensor | None, y_image: torch.Tensor | None, video: int, images: int
    ) -> torch.Tensor | None:
        """Label embedding per latent frame (b, t, d): the clip's label on its frames, then each image's."""
        if self.y_embedder is None:
            assert y_image is None, "y_image is given, but the model is unconditional (num_classes=0)"
            return None
        b = y.shape[0]
        assert y.shape == (b,), f"y must hold one label per video, shape ({b},), got {tuple(y.shape)}"
        assert y_image is not None or images == 0, (
            f"x carries {images} image frames after the clip: a class-conditional model needs "
            f"y_image ({b}, n)"
        )
        y_image = y.new_zeros(b, 0) if y_image is None else y_image
        assert y_image.shape == (b, images), (
            f"y_image must hold one label per image, shape ({b}, {images}), got {tuple(y_image.shape)}"
        )
        clip = repeat(self.y_embedder(y), "b d -> b f d", f=video)  # (b, f, d)
        own = rearrange(self.y_embedder(y_image.flatten()), "(b n) d -> b n d", b=b)  # (b, n, d)
        return torch.cat([clip, own], dim=1)  # (b, t, d)

    def describe_frames(
        self, video: int, c: torch.Tensor | None, cache: LatteCache | StaticLatteCache | None, device
    ) -> Frames:
        """The Frames of a call: the clip's positions after those cached, and whom each frame sees."""
        if cache is not None:
            return Frames(video, c, *cache.start(video, self.visible, self.window, self.sink_frames))
        queries = torch.arange(video, device=device)  # (f,) absolute positions
        return Frames(video, c, 0, self.visible(queries, queries, self.window, self.sink_frames))

    #############################################################################
    #                         Trunk (features) and Head                         #
    #############################################################################

    def block_indices(self, layers: Sequence[int] | None) -> list[int]:
        """`layers` as block indices in [0, depth): None is the last block; negative count from the end."""
        layers = [self.depth - 1] if layers is None else list(layers)
        require(
            all(-self.depth <= i < self.depth for i in layers),
            f"layers={layers} must be block indices in [-{self.depth}, {self.depth})",
        )
        return [i % self.depth for i in layers]

    def features(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        y_image: torch.Tensor | None = None,
        *,
        num_images: int = 0,
        cache: LatteCache | StaticLatteCache | None = None,
        layers: Sequence[int] | None = None,
    ) -> Features:
        """Patch tokens (b, t, l, d) after each block in `layers` (default: the last; negative from the end).

        Inputs as in `forward`. Without a cache, blocks after the last chosen one do not run.
        """
        self.check_inputs(x, t, y, num_images, cache)
        chosen = self.block_indices(layers)  # in [0, depth)
        last = self.depth - 1 if cache is not None else max(chosen)  # a cache needs every block's K/V
        video = (x.shape[1] - num_images) // self.x_embedder.frames_per_token  # latent clip frames
        x = self.x_embedder(x) + self.pos_embed  # (b, t, l, d): t = latent clip frames + images
        t_emb = self.embed_timesteps(t, video + num_images)  # (b, t, d)
        labels = self.embed_labels(y, y_image, video, num_images)  # (b, t, d) or None
        c, tokens = self.conditioner.condition(t_emb, labels)  # (b, t, d), (b, t, m, d): one is None
        m = 0 if tokens is None else tokens.shape[2]  # all_tokens: m conditioning tokens lead every frame
        if m:
            x = torch.cat([tokens, x], dim=2)  # (b, t, m + l, d)
        frames = self.describe_frames(video, c, cache, x.device)  # the clip's positions and temporal mask
        hidden = {}  # chosen block index -> (b, t, l, d)
        for i, block in enumerate(self.blocks[: last + 1]):
            if i == self.temp_embed_at:  # absolute: before the first block that attends across frames
                temp_embed = self.temp_embed[:, frames.offset : frames.offset + video]  # (1, f, d)
                x = add_to_video(x, video, temp_embed.unsqueeze(2))  # (b, t, m + l, d)
            x = block(x, frames, None if cache is None else cache.layers.get(i))  # (b, t, m + l, d)
            if i in chosen:
                hidden[i] = x[:, :, m:]  # (b, t, l, d): the conditioning tokens are dropped
        if cache is not None:
            cache.advance(video, self.window, self.sink_frames)  # the new frames join; the window rolls
        return Features([hidden[i] for i in chosen], c)  # [(b, t, l, d)], (b, t, d) or None

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Patches (b, t, l, p*p*c_out), channel fastest, back to frames (b, t, c_out, h, w)."""
        grid, p = self.input_size // self.patch_size, self.patch_size
        return rearrange(
            x, "b t (gh gw) (p q c) -> b t c (gh p) (gw q)", gh=grid, p=p, q=p
        )  # (b, t, c, h, w)

    def head(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Frames (b, f, c_out, h, w) from the last block's patch tokens (b, t, l, d) and c (b, t, d)."""
        x = self.final_layer(x, c)  # (b, t, l, p*p*c_out)
        x = self.unpatchify(x)  # (b, t, c_out, h, w)
        return self.frame_upsample(x)  # (b, f, c_out, h, w)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        y_image: torch.Tensor | None = None,
        *,
        num_images: int = 0,
        cache: LatteCache | StaticLatteCache | None = None,
    ) -> torch.Tensor:
        """Predict (b, f, c_out, h, w) from latents x (b, f, c, h, w), timesteps t (b,) or (b, f), y (b,).

        The last `num_images` frames of x are independent images with labels y_image (b, num_images).
        With `cache` (from `new_cache`), x holds the next frames of the stream, and only they come out.
        """
        features = self.features(x, t, y, y_image, num_images=num_images, cache=cache)  # last block
        return self.head(features.hidden[0], features.c)  # (b, f, c_out, h, w)
