"""Attention across frames as one fused Triton kernel, forward and backward.

Latte's temporal attention is a great many tiny attentions: at Latte-XL/2's training shape, 1,280 token
locations (batch 5 x 256) x 16 heads, each over 16 frames of 72 channels. SDPA's kernels are built for long
sequences, and around them the model regroups q, k and v from the token layout (b, f, l) into sequences
(b l, f) and the output and every gradient back: measured, the regrouping costs more than the attention.

Here one program attends one head at one token location: it loads that head's q, k and v for all f frames
straight from the fused qkv projection's output (any strides, so no regrouping copy), computes the f x f
scores, their softmax and the output in registers, and writes the output in the token layout that the output
projection reads. The backward recomputes the scores from the saved log-sum-exp (as FlashAttention does) and
writes dq, dk and dv into one gradient laid out like the fused projection's output. The numerics are
FlashAttention's: bf16/fp16 operands, fp32 scores, softmax and accumulation, the probabilities rounded to
the input dtype before they multiply v.

`supports(qkv)` says where it runs: a CUDA GPU of compute capability 8.0 or later (or, fp16 only, Triton's CPU
interpreter: the tests), bf16/fp16, at most 64 frames of at most 128 channels per head; everything else is
for SDPA (backbones/latte.py).
"""

import contextlib
import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (e.g. macOS wheels): SDPA everywhere
    triton = None

MAX_FRAMES = 64  # the f x f scores of one program stay in registers
MAX_HEAD_DIM = 128
# Triton read this when it defined the kernels below: they run on the CPU, in its interpreter (the tests)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@torch.compiler.assume_constant_result  # a constant in a compiled graph, not a graph break
def _has_tensor_cores(device_index: int) -> bool:
    """Whether that GPU multiplies bf16 and fp16 tiles on tensor cores, as Triton's tl.dot needs: Ampere+."""
    return torch.cuda.get_device_properties(device_index).major >= 8


def supports(qkv: torch.Tensor) -> bool:
    """Whether the fused kernel can attend fused q, k, v (b, f, l, 3, h, e) across frames."""
    if triton is None or qkv.dtype not in (torch.bfloat16, torch.float16) or qkv.stride(-1) != 1:
        return False
    if qkv.is_cuda:
        on_device = _has_tensor_cores(qkv.device.index)
    else:  # the interpreter multiplies bf16 tiles as the integers they are stored in (Triton 3.8): fp16 only
        on_device = qkv.device.type == "cpu" and INTERPRETED and qkv.dtype == torch.float16
    return on_device and 1 <= qkv.shape[1] <= MAX_FRAMES and qkv.shape[-1] <= MAX_HEAD_DIM


def attend_across_frames(qkv: torch.Tensor) -> torch.Tensor:
    """Fused q, k, v (b, f, l, 3, h, e) -> each token's attention across frames (b, f, l, h, e).

    `qkv` may be any view with contiguous channels (e.g. some heads, or some frames, of a longer tensor).
    """
    assert supports(qkv), "fused attention across frames needs sm80+, bf16/fp16, f <= 64, e <= 128"
    return torch.ops.latte_lab.attend_across_frames(qkv)[0]  # (b, f, l, h, e)


#################################################################################
#                                 Triton Kernels                                #
#################################################################################

if triton is not None:

    @triton.jit
    def _tile(L, H, F: tl.constexpr, E: tl.constexpr, FB: tl.constexpr, EB: tl.constexpr):
        """This program's batch index, location and head (a location's heads are neighbouring programs), its
        tile's frame and channel indices, which frames are real, and the mask of real frames x channels."""
        pid = tl.program_id(0)
        frame, channel = tl.arange(0, FB), tl.arange(0, EB)
        real = frame < F
        mask = real[:, None] & (channel < E)[None, :]
        return (pid // (L * H)).to(tl.int64), (pid // H) % L, pid % H, frame, channel, real, mask

    @triton.jit
    def _at(X, b, loc, h, frame, channel, x_b, x_f, x_l, x_h):
        """Pointers (FB, EB) to a head's frames x channels at a location, by (b, f, l, [3,] h, e) strides."""
        return X + b * x_b + loc * x_l + h * x_h + frame[:, None] * x_f + channel[None, :]

    @triton.jit
    def _qkv(at, s_three, mask):
        """The head's q, k, v tiles (FB, EB) from its q pointers, zero outside the frames and channels."""
        q = tl.load(at, mask=mask, other=0.0)
        k = tl.load(at + s_three, mask=mask, other=0.0)
        v = tl.load(at + 2 * s_three, mask=mask, other=0.0)
        return q, k, v

    @triton.jit
    def _attention_across_frames_forward(
        QKV, OUT, LSE,
        s_b, s_f, s_l, s_three, s_h,  # qkv (b, f, l, 3, h, e) strides, e's is 1
        o_b, o_f, o_l, o_h,  # output (b, f, l, h, e) strides
        L, H, scale,
        F: tl.constexpr, E: tl.constexpr, FB: tl.constexpr, EB: tl.constexpr,
    ):  # fmt: skip
        """Program (b*L + loc)*H + h: softmax(q k^T * scale) v over the F frames; saves the log-sum-exp."""
        b, loc, h, frame, channel, real, mask = _tile(L, H, F, E, FB, EB)
        q, k, v = _qkv(_at(QKV, b, loc, h, frame, channel, s_b, s_f, s_l, s_h), s_three, mask)  # (FB, EB)
        s = tl.dot(q, tl.trans(k)) * scale  # (FB, FB) fp32 scores
        s = tl.where(real[None, :], s, float("-inf"))  # padded frames are no keys
        top = tl.max(s, 1)
        p = tl.exp(s - top[:, None])
        total = tl.sum(p, 1)
        o = tl.dot((p / total[:, None]).to(v.dtype), v)  # (FB, EB)
        at = _at(OUT, b, loc, h, frame, channel, o_b, o_f, o_l, o_h)
        tl.store(at, o.to(OUT.dtype.element_ty), mask=mask)
        tl.store(LSE + ((b * L + loc) * H + h) * F + frame, top + tl.log(total), mask=real)

    @triton.jit
    def _attention_across_frames_backward(
        QKV, OUT, DOUT, LSE, DQKV,
        s_b, s_f, s_l, s_three, s_h,  # qkv strides
        o_b, o_f, o_l, o_h,  # output strides
        g_b, g_f, g_l, g_h,  # output-gradient strides
        d_b, d_f, d_l, d_three, d_h,  # dqkv strides
        L, H, scale,
        F: tl.constexpr, E: tl.constexpr, FB: tl.constexpr, EB: tl.constexpr,
    ):  # fmt: skip
        """Program (b*L + loc)*H + h: dq, dk, dv of one head at one location, the scores recomputed."""
        b, loc, h, frame, channel, real, mask = _tile(L, H, F, E, FB, EB)
        q, k, v = _qkv(_at(QKV, b, loc, h, frame, channel, s_b, s_f, s_l, s_h), s_three, mask)  # (FB, EB)
        o = tl.load(_at(OUT, b, loc, h, frame, channel, o_b, o_f, o_l, o_h), mask=mask, other=0.0)
        do = tl.load(_at(DOUT, b, loc, h, frame, channel, g_b, g_f, g_l, g_h), mask=mask, other=0.0)
        lse = tl.load(LSE + ((b * L + loc) * H + h) * F + frame, mask=real, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # (FB, FB)
        p = tl.where(real[:, None] & real[None, :], tl.exp(s - lse[:, None]), 0.0)  # the softmax again
        dv = tl.dot(tl.trans(p.to(do.dtype)), do)  # (FB, EB)
        dp = tl.dot(do, tl.trans(v))  # (FB, FB)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # (FB,) = rowsum(dp * p)
        ds = (p * (dp - delta[:, None])).to(q.dtype)  # (FB, FB) gradient of the scores
        dq = tl.dot(ds, k) * scale  # (FB, EB)
        dk = tl.dot(tl.trans(ds), q) * scale  # (FB, EB)
        at = _at(DQKV, b, loc, h, frame, channel, d_b, d_f, d_l, d_h)
        out = DQKV.dtype.element_ty
        tl.store(at, dq.to(out), mask=mask)
        tl.store(at + d_three, dk.to(out), mask=mask)
        tl.store(at + 2 * d_three, dv.to(out), mask=mask)


WARPS = 1  # per program (bench: 1 beat 2, 4 and 8 at Latte-XL/2's shape on an H200)


def _blocks(f: int, e: int) -> dict:
    """Compile-time sizes: the frames and channels (so the mask of a 72-wide head is known to cover whole
    16-byte vectors), their register tiles (powers of two, at least 16: tl.dot's smallest), the warps."""
    tiles = dict(FB=max(16, triton.next_power_of_2(f)), EB=max(16, triton.next_power_of_2(e)))
    return dict(F=f, E=e, **tiles, num_warps=WARPS)


def _on(device: torch.device):
    """Launch on the tensors' GPU: Triton launches on the current one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


#################################################################################
#                   The Custom Operator (eager, compile, autograd)              #
#################################################################################


@torch.library.custom_op("latte_lab::attend_across_frames", mutates_args=())
def _attend(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv (b, f, l, 3, h, e) -> the output (b, f, l, h, e), its scores' log-sum-exp (b, l, h, f) fp32."""
    assert qkv.dim() == 6 and qkv.shape[3] == 3 and qkv.stride(-1) == 1, "(b, f, l, 3, h, e), channels dense"
    b, f, locs, _, h, e = qkv.shape
    out = qkv.new_empty(b, f, locs, h, e)
    lse = qkv.new_empty(b, locs, h, f, dtype=torch.float32)
    if out.numel():  # a grid of no programs is not launched
        with _on(qkv.device):
            _attention_across_frames_forward[(b * locs * h,)](
                qkv, out, lse, *qkv.stride()[:5], *out.stride()[:4],
                locs, h, 1 / math.sqrt(e), **_blocks(f, e),
            )  # fmt: skip
    return out, lse


@_attend.register_fake
def _(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, f, locs, _, h, e = qkv.shape
    return qkv.new_empty(b, f, locs, h, e), qkv.new_empty(b, locs, h, f, dtype=torch.float32)


@torch.library.custom_op("latte_lab::attend_across_frames_backward", mutates_args=())
def _attend_backward(
    qkv: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor, lse: torch.Tensor
) -> torch.Tensor:
    """The gradient (b, f, l, 3, h, e) of the fused q, k, v, contiguous like the qkv projection's output."""
    b, f, locs, _, h, e = qkv.shape
    grad = qkv.new_empty(qkv.shape)
    if grad.numel():
        with _on(qkv.device):
            _attention_across_frames_backward[(b * locs * h,)](
                qkv, out, grad_out, lse, grad,
                *qkv.stride()[:5], *out.stride()[:4], *grad_out.stride()[:4], *grad.stride()[:5],
                locs, h, 1 / math.sqrt(e), **_blocks(f, e),
            )  # fmt: skip
    return grad


@_attend_backward.register_fake
def _(qkv: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    return qkv.new_empty(qkv.shape)


def _save(ctx, inputs: tuple, output: tuple) -> None:
    (qkv,) = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(qkv, *output)


def _backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor | None) -> torch.Tensor:
    qkv, out, lse = ctx.saved_tensors
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    return _attend_backward(qkv, out, grad_out, lse)


_attend.register_autograd(_backward, setup_context=_save)
