"""GPU checks: bf16-mixed training through the real config, and bf16 numerics of the backbone."""

import json

import pytest
import torch

from backbones import Latte
from tests.conftest import TINY, compose_train
from utils.float8 import has_float8_tensor_cores
from utils.run import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_mixed_training_on_gpu_writes_finite_checkpoint(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "trainer=gpu", "trainer.max_steps=20", "data.batch_size=8"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 20
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


@pytest.mark.parametrize("compiled", [False, True])
def test_a_training_step_never_makes_the_host_wait_for_the_gpu(tmp_path, compiled):
    """train.py's loop as a user gets it (progress bar, loss curve, NaN guard, EMA, pinned batches), 3 steps
    between the logging, validation and checkpoint steps: no synchronising CUDA call (bench/train_loop.py's
    census). Each would drain the GPU's queue while the host runs the loop's own work."""
    every = ["trainer.log_every_n_steps", "trainer.val_check_interval"]
    every += ["callbacks.model_checkpoint.every_n_train_steps", "callbacks.video_sampler.every_n_steps"]
    overrides = [*TINY, "trainer=gpu", "trainer.max_steps=10", *(f"{key}=100" for key in every)]
    overrides += ["trainer.enable_progress_bar=true", "data.pin_memory=true", f"module.compile={compiled}"]
    overrides += ["+callbacks.census._target_=bench.train_loop.SyncCensus", "+callbacks.census.skip=4"]
    train(compose_train(tmp_path, [*overrides, f"+callbacks.census.path={tmp_path}/syncs.json"]))
    census = json.loads((tmp_path / "syncs.json").read_text())
    assert census["steps"] == 3 and census["syncs_per_step"] == {}, census


def test_compiled_bf16_training_on_gpu_matches_the_eager_loss_curve(tmp_path):
    overrides = [*TINY, "trainer=gpu", "trainer.max_steps=20", "data.batch_size=8", "seed=0"]
    eager = train(compose_train(tmp_path / "eager", overrides))
    compiled = train(compose_train(tmp_path / "compiled", [*overrides, "module.compile=true"]))
    assert abs(compiled["train/loss"] - eager["train/loss"]) < 0.1 * eager["train/loss"] + 1e-3


def test_compiled_float8_training_on_gpu_follows_the_bf16_loss_curve(tmp_path):
    """module.float8=true on an H100-class GPU (float8 tensor cores), compiled: the loss after 200 steps of
    the synthetic shapes within 10% of bf16's (needs torchao: pip install -e ".[fp8]")."""
    pytest.importorskip("torchao")
    if not has_float8_tensor_cores(torch.device("cuda")):
        pytest.skip("float8 matmuls need compute capability 8.9 or later")
    overrides = [*TINY, "trainer=gpu", "trainer.max_steps=200", "data.batch_size=8", "seed=0"]
    overrides += ["backbone.size=S", "module.compile=true"]  # 384 wide: float8-GEMM-sized (multiples of 16)
    overrides += ["trainer.limit_val_batches=0", "~callbacks.video_sampler"]
    overrides += ["callbacks.model_checkpoint.every_n_train_steps=200"]  # one 0.5 GB file, not TINY's 100
    bf16 = train(compose_train(tmp_path / "bf16", overrides))
    fp8 = train(compose_train(tmp_path / "fp8", [*overrides, "module.float8=true"]))
    assert abs(fp8["train/loss"] - bf16["train/loss"]) < 0.1 * bf16["train/loss"] + 1e-3


def test_backbone_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = Latte(size="S", patch_size=2, input_size=32, num_frames=16).cuda()
    for p in model.parameters():  # leave the zero init, or both outputs are exactly 0
        p.data.add_(torch.randn_like(p) * 0.02)
    x, t = torch.randn(2, 16, 4, 32, 32, device="cuda"), torch.randint(0, 1000, (2,), device="cuda")
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, t).float()
    rel = (out - ref).norm() / ref.norm()
    assert rel < 2e-2, f"bf16 autocast deviates by {rel:.3e} (relative L2) from fp32"


def fused_against_sdpa(dtype: torch.dtype, f: int, e: int, compiled: bool, device: str = "cuda") -> dict:
    """Relative L2 errors to fp32 SDPA of the fused attention across frames and of SDPA in `dtype`, output
    and fused-qkv gradient, at (b, f, l, h, e) = (2, f, 64, 4, e)."""
    import torch.nn.functional as F

    from backbones.frame_attention import attend_across_frames

    def sdpa(qkv: torch.Tensor) -> torch.Tensor:  # (b, f, l, 3, h, e) -> (b, f, l, h, e), torch's kernel
        q, k, v = qkv.permute(3, 0, 2, 4, 1, 5).unbind(0)  # (b, l, h, f, e)
        return F.scaled_dot_product_attention(q, k, v).permute(0, 3, 1, 2, 4)

    torch.manual_seed(0)
    b, n, h = 2, 64, 4
    source = torch.randn(b, f, n, 3 * h * e, device=device)
    grad_out = torch.randn(b, f, n, h, e, device=device)

    def run(attend, dtype):
        fused = source.to(dtype, copy=True).requires_grad_()
        out = attend(fused.view(b, f, n, 3, h, e))
        out.backward(grad_out.to(dtype))
        return out.float(), fused.grad.float()

    ref = run(sdpa, torch.float32)
    error = lambda pair: [((x - y).norm() / y.norm()).item() for x, y in zip(pair, ref)]
    fused = torch.compile(attend_across_frames, fullgraph=True) if compiled else attend_across_frames
    return dict(fused=error(run(fused, dtype)), sdpa=error(run(sdpa, dtype)))


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("dtype, f, e", [(torch.bfloat16, 16, 72), (torch.float16, 32, 128)])
def test_fused_attention_across_frames_is_as_close_to_fp32_as_sdpa(dtype, f, e, compiled):
    """backbones/frame_attention.py at Latte-XL/2's head size in bf16 and at 32 frames of 128 in fp16, eager
    and compiled: output and gradient as close to fp32 as SDPA in the same dtype."""
    errors = fused_against_sdpa(dtype, f, e, compiled)
    for what, fused, sdpa in zip(("output", "gradient"), errors["fused"], errors["sdpa"]):
        assert fused < 1.5 * sdpa + 1e-4, f"{what}: {fused:.2e} from fp32, SDPA {sdpa:.2e}"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_fused_attention_runs_on_its_tensors_gpu_not_the_current_one():
    """Triton launches on the current GPU; the op puts its tensors' GPU first (sample.py device=cuda:1)."""
    with torch.cuda.device(0):
        errors = fused_against_sdpa(torch.bfloat16, 16, 72, compiled=False, device="cuda:1")
    assert errors["fused"][0] < 1.5 * errors["sdpa"][0] + 1e-4


def ddim_on_a_random_latte_s(objective=None):
    """(run(sampler) -> samples from fixed noise, the model): a perturbed Latte-S/2 on the GPU, 16 x 32²,
    sampling ``objective`` (None: Gaussian diffusion)."""
    from diffusion import GaussianDiffusion

    torch.manual_seed(0)
    learn_sigma = objective is None or objective.learn_sigma  # flow matching: the velocity alone
    model = Latte(size="S", patch_size=2, input_size=32, num_frames=16, learn_sigma=learn_sigma).cuda().eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    noise = torch.randn(2, 16, 4, 32, 32, device="cuda")
    objective = objective or GaussianDiffusion()
    return lambda sampler: sampler(model, objective, noise.shape, noise=noise), model


@pytest.mark.parametrize("method", ["ddpm", "ddim", "euler"])
def test_a_sampling_step_never_makes_the_host_wait_for_the_gpu(method):
    """The host waits of 8 sampler steps are those of 4 (copies made once per call): none per step, where
    each would drain the GPU's queue between the model's forwards. Gaussian diffusion and flow matching."""
    from bench.train_loop import SyncCensus
    from diffusion import EulerSampler, FlowMatching, Sampler

    flow = method == "euler"
    run, _ = ddim_on_a_random_latte_s(FlowMatching() if flow else None)

    def host_waits(steps: int) -> int:
        with SyncCensus.waits() as sites:
            run(EulerSampler(steps) if flow else Sampler(method, steps))
        return sum(sites.values())

    assert host_waits(8) == host_waits(4)


def test_compiled_bf16_sampling_matches_the_fp32_sampler():
    from diffusion import Sampler

    run, model = ddim_on_a_random_latte_s()
    ref = run(Sampler("ddim", 10, precision="fp32"))
    fast = Sampler("ddim", 10, precision="auto", compile=True)
    out, again = run(fast), run(fast)
    assert fast._fast[1].dtype == torch.bfloat16, "precision auto casts to bf16 on CUDA"
    rel = (out - ref).norm() / ref.norm()
    assert rel < 3e-2, f"compiled bf16 DDIM-10 deviates by {rel:.3e} (relative L2) from fp32"
    torch.testing.assert_close(again, out)  # the compiled copy is reused, deterministic


def test_compiled_float8_sampling_follows_the_fp32_sampler_about_as_closely_as_bf16():
    """sampler.precision=float8, compiled: rowwise float8 qkv/fc1/fc2 by torch._scaled_mm (H100-class)."""
    from diffusion import Sampler
    from utils.float8 import Float8InferenceLinear

    if not has_float8_tensor_cores(torch.device("cuda")):
        pytest.skip("float8 matmuls need compute capability 8.9 or later")
    run, model = ddim_on_a_random_latte_s()
    ref, bf16 = (
        run(Sampler("ddim", 10, precision="fp32")),
        run(Sampler("ddim", 10, precision="bf16", compile=True)),
    )
    fast = Sampler("ddim", 10, precision="float8", compile=True)
    out = run(fast)
    assert sum(isinstance(m, Float8InferenceLinear) for m in fast._fast[1].modules()) == 3 * len(model.blocks)
    rel, rel_bf16 = ((out - ref).norm() / ref.norm()).item(), ((bf16 - ref).norm() / ref.norm()).item()
    assert 0 < rel < max(3 * rel_bf16, 3e-2), (
        f"compiled float8 DDIM-10 deviates by {rel:.3e} (bf16: {rel_bf16:.3e})"
    )


def _csv_losses(run_dir) -> dict[int, float]:
    """step -> train/loss from the csv logger of a run folder."""
    import csv

    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_a_resumed_gpu_run_continues_the_cuda_random_stream(tmp_path):
    """The CUDA generator's state is checkpointed and restored: the resumed steps draw the same t, noise."""
    overrides = [*TINY, "trainer=gpu", "trainer.precision=32-true", "seed=0"]
    train(compose_train(tmp_path / "full", [*overrides, "trainer.max_steps=4"]))
    train(compose_train(tmp_path / "half", [*overrides, "trainer.max_steps=2"]))
    ckpt = tmp_path / "half" / "run" / "checkpoints" / "last.ckpt"
    train(compose_train(tmp_path / "resumed", [*overrides, "trainer.max_steps=4", f"ckpt_path={ckpt}"]))
    full, resumed = _csv_losses(tmp_path / "full" / "run"), _csv_losses(tmp_path / "resumed" / "run")
    for step in (2, 3):  # GPU kernels need not be bit-exact; another random draw changes the loss by far more
        assert abs(resumed[step] - full[step]) <= 1e-3 * abs(full[step]), (step, resumed, full)


def test_causal_streaming_equals_the_parallel_forward_on_gpu():
    torch.manual_seed(0)
    model = Latte(
        size="tiny",
        patch_size=4,
        input_size=16,
        num_frames=4,
        temporal_mask="causal",
        temporal_pos="rope",
        window=3,
        sink_frames=1,
    ).cuda()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    x, t = torch.randn(2, 10, 4, 16, 16, device="cuda"), torch.randint(0, 1000, (2,), device="cuda")
    with torch.no_grad():
        parallel = model(x, t)
        cache = model.new_cache(2)
        streamed = torch.cat([model(x[:, k : k + 1], t, cache=cache) for k in range(10)], dim=1)
    torch.testing.assert_close(streamed, parallel, rtol=1e-4, atol=1e-4)


def test_flow_matching_with_a_causal_rope_latte_trains_on_gpu(tmp_path):
    overrides = [*TINY, "trainer=gpu", "trainer.max_steps=6", "diffusion=flow_matching", "sampler=euler"]
    overrides += ["backbone.temporal_mask=causal", "backbone.temporal_pos=rope"]
    metrics = train(compose_train(tmp_path, overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert list((tmp_path / "run" / "samples").glob("step_*.mp4")), "Euler samples were written"
