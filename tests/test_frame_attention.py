"""The fused attention across frames (backbones/frame_attention.py) against SDPA, on the CPU.

Its Triton kernels run here under Triton's interpreter (TRITON_INTERPRET=1, read when a kernel is defined,
so in a fresh process), in fp16: the interpreter multiplies bf16 tiles as integers. tests/test_gpu.py runs
them compiled, in bf16, on a GPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones import frame_attention

ROOT = Path(__file__).resolve().parents[1]

KERNEL_CHECK = """
import json, torch, torch.nn.functional as F
from backbones.frame_attention import attend_across_frames

def reference(qkv):  # fp32 SDPA of (b, f, l, 3, h, e) over the frames of each location -> (b, f, l, h, e)
    q, k, v = qkv.permute(3, 0, 2, 4, 1, 5).unbind(0)  # (b, l, h, f, e) each
    return F.scaled_dot_product_attention(q, k, v).permute(0, 3, 1, 2, 4)

torch.manual_seed(0)
errors = {}
every = slice(None)
for name, (b, f, l, h, e, heads, frames, strided_grad) in {
    "xl_head_dim": (2, 16, 5, 3, 72, every, every, False),
    "odd_frames": (1, 7, 3, 2, 64, every, every, False),
    "one_frame": (2, 1, 4, 2, 8, every, every, False),
    "many_frames": (1, 33, 2, 2, 128, every, every, False),
    "heads_and_frames_slice": (2, 6, 3, 4, 16, slice(2, None), slice(0, 4), False),  # variant 4 + images
    "strided_output_gradient": (2, 5, 3, 2, 16, every, every, True),
}.items():
    fused = torch.randn(b, f, l, 3 * h * e, dtype=torch.float16).requires_grad_()
    qkv = fused.view(b, f, l, 3, h, e)[:, frames, :, :, heads]  # a strided view, as the model passes
    out = attend_across_frames(qkv)
    grad_out = torch.randn_like(out)
    if strided_grad:  # the same values, channels not contiguous: the backward makes them so
        grad_out = grad_out.transpose(-1, -2).contiguous().transpose(-1, -2)
    out.backward(grad_out)
    exact = fused.detach().float().requires_grad_()
    ref = reference(exact.view(b, f, l, 3, h, e)[:, frames, :, :, heads])
    ref.backward(grad_out.float())
    errors[name] = dict(
        out=((out.float() - ref).abs().max() / ref.abs().max()).item(),
        grad=((fused.grad.float() - exact.grad).abs().max() / exact.grad.abs().max()).item(),
        shape=list(out.shape) == list(ref.shape),
    )
print(json.dumps(errors))
"""

MODEL_CHECK = """
import json, torch
from torch.nn.attention import SDPBackend
from backbones import Latte, frame_attention
from backbones.latte import Attention

calls = []
fused_kernel = frame_attention.attend_across_frames
frame_attention.attend_across_frames = lambda qkv: calls.append(qkv.shape) or fused_kernel(qkv)
results = {}
for variant in (1, 4):
    torch.manual_seed(0)
    model = Latte(size="tiny", input_size=8, num_frames=4, num_classes=3, variant=variant)
    for p in model.parameters():  # leave the zero init, or the output is exactly 0
        p.data.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 6, 4, 8, 8)  # 4 clip frames + 2 images (joint training)
    t, y, y_image = torch.tensor([3, 999]), torch.tensor([1, 2]), torch.tensor([[0, 1], [2, 0]])
    runs = {}
    for name, dtype, backends in [
        ("fp32", torch.float32, None),  # SDPA (the kernel takes no fp32)
        ("fused", torch.float16, None),
        ("sdpa", torch.float16, (SDPBackend.MATH,)),
    ]:
        Attention.time_backends = backends
        model.zero_grad()
        out = model.to(dtype)(x.to(dtype), t, y, num_images=2, y_image=y_image).float()
        out.square().mean().backward()
        grads = [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
        runs[name] = out, torch.cat(grads)
    Attention.time_backends = None
    (ref, ref_grad) = runs["fp32"]
    results[variant] = {
        name: dict(
            out=((runs[name][0] - ref).norm() / ref.norm()).item(),
            grad=((runs[name][1] - ref_grad).norm() / ref_grad.norm()).item(),
        )
        for name in ("fused", "sdpa")
    }
results["fused_calls"] = len(calls)
for sdpa_only in [
    dict(temporal_mask="causal"), dict(temporal_pos="rope"), dict(temporal_mask="causal", window=2)
]:
    model = Latte(size="tiny", input_size=8, num_frames=4, **sdpa_only).half()
    model(torch.randn(2, 4, 4, 8, 8, dtype=torch.float16), torch.tensor([3, 999]))  # masks, RoPE: SDPA
frame = torch.randn(2, 1, 4, 8, 8, dtype=torch.float16)
model(frame, torch.tensor([3, 999]), cache=model.new_cache(2))  # streaming through a KV cache: SDPA
results["calls_after_sdpa_only_models"] = len(calls)
print(json.dumps(results))
"""


def interpreted(code: str) -> dict:
    """Run `code` in a fresh Python with Triton's CPU interpreter; the JSON it prints last."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


needs_triton = pytest.mark.skipif(frame_attention.triton is None, reason="Triton is not installed")


@needs_triton
def test_fused_attention_across_frames_matches_fp32_sdpa_forward_and_backward():
    """Output and the fused-qkv gradient within fp16 round-off of fp32 SDPA, for odd frame counts, head
    sizes up to 128, one frame, a strided view (half the heads, the clip's frames of a longer tensor) and an
    output gradient whose channels are not contiguous."""
    errors = interpreted(KERNEL_CHECK)
    for name, error in errors.items():
        assert error["shape"], name
        assert error["out"] < 4e-3, f"{name}: output off by {error['out']:.2e} of its largest value"
        assert error["grad"] < 4e-3, f"{name}: gradient off by {error['grad']:.2e} of its largest value"


@needs_triton
@pytest.mark.slow
def test_latte_through_the_fused_kernel_matches_sdpa_in_variants_1_and_4_with_joint_training():
    """A tiny fp16 Latte through the fused kernel is as close to the fp32 model (output and every parameter's
    gradient) as through SDPA; the kernel ran in each temporal attention (2 temporal blocks of variant 1,
    4 factorised-heads blocks of variant 4)."""
    results = interpreted(MODEL_CHECK)
    assert results.pop("fused_calls") == 2 + 4
    assert results.pop("calls_after_sdpa_only_models") == 2 + 4, "causal, RoPE and cached attention: SDPA"
    for variant, errors in results.items():
        for what in ("out", "grad"):
            fused, sdpa = errors["fused"][what], errors["sdpa"][what]
            assert fused < 1.5 * sdpa + 1e-3, f"variant {variant} {what}: {fused:.1e}, SDPA {sdpa:.1e}"


def test_the_fused_kernel_is_chosen_only_where_it_runs(monkeypatch):
    """sm80+ (or the interpreter, fp16), bf16/fp16, <= 64 frames of <= 128 channels, channels contiguous."""
    qkv = torch.zeros(2, 16, 4, 3, 2, 72, dtype=torch.float16)  # (b, f, l, 3, h, e)
    monkeypatch.setattr(frame_attention, "INTERPRETED", False)
    assert not frame_attention.supports(qkv), "the CPU without Triton's interpreter: SDPA"
    monkeypatch.setattr(frame_attention, "INTERPRETED", True)
    assert frame_attention.supports(qkv) == (frame_attention.triton is not None)
    assert not frame_attention.supports(qkv.float()), "fp32 keeps SDPA's numerics"
    assert not frame_attention.supports(qkv.bfloat16()), "the interpreter's bf16 products are wrong"
    assert not frame_attention.supports(torch.zeros(2, 65, 4, 3, 2, 72, dtype=torch.float16)), "> 64 frames"
    assert not frame_attention.supports(torch.zeros(2, 16, 4, 3, 2, 144, dtype=torch.float16)), "e > 128"
    assert not frame_attention.supports(qkv.transpose(-1, -2)), "channels must be contiguous"
