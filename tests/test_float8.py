"""module.float8=true: torchao's Float8Linear in the blocks' qkv/fc1/fc2 (emulated on the CPU), keeping the
weights, state-dict keys and EMA; its forward and gradients follow bf16 autocast within float8 error.
sampler.precision=float8: our rowwise Float8InferenceLinear in the same layers of the sampler's copy."""

import copy
import importlib.util
import sys

import pytest
import torch
from hydra.utils import instantiate

from backbones import Latte
from diffusion import GaussianDiffusion, Sampler
from tests.conftest import TINY, compose_train
from utils.float8 import FLOAT8, FLOAT8_LAYERS, Float8InferenceLinear, convert_to_float8

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="float8 training: torchao"
)


def float8_names(module: torch.nn.Module) -> list[str]:
    """The names of the (torchao) Float8Linear submodules of ``module``."""
    from torchao.float8.float8_linear import Float8Linear

    return [name for name, m in module.named_modules() if isinstance(m, Float8Linear)]


#################################################################################
#                    Training: module.float8 (torchao)                          #
#################################################################################


@needs_torchao
def test_module_float8_swaps_each_blocks_qkv_and_mlp_once_and_keeps_keys_and_ema(tmp_path):
    module = instantiate(compose_train(tmp_path, [*TINY, "module.float8=true"]).module)
    keys, weights = sorted(module.state_dict()), [id(p) for p in module.backbone.parameters()]
    module.configure_model()
    assert [id(p) for p in module.backbone.parameters()] == weights, "the optimizer and EMA see the same"
    names = float8_names(module.backbone)
    per_block = len([n for n in names if n.startswith("blocks.0.")])
    assert per_block == 3 and len(names) == 3 * len(module.backbone.blocks), names[:6]
    assert all(n.rsplit(".", 1)[-1] in FLOAT8_LAYERS for n in names)
    assert not float8_names(module.ema), "the EMA is only averaged, never trained"
    assert sorted(module.state_dict()) == keys, "checkpoints load into a model with or without float8"
    module.configure_model()  # a second fit: nothing left to swap
    assert float8_names(module.backbone) == names
    assert convert_to_float8(module.backbone) == 0
    with torch.no_grad():
        module.backbone.blocks[0].attn.qkv.weight.add_(1.0)
    before = module.ema.blocks[0].attn.qkv.weight.clone()
    module.update_ema()
    assert not torch.equal(module.ema.blocks[0].attn.qkv.weight, before), "the EMA follows the float8 layers"


@needs_torchao
def test_float8_blocks_follow_bf16_autocast_within_float8_error(tmp_path):
    """Same weights: the prediction within 3% of bf16's spread, every weight gradient pointing its way."""
    backbone = instantiate(compose_train(tmp_path, TINY).module.backbone)
    with torch.no_grad():  # random weights: adaLN-Zero's zero init would make every output and gradient 0
        for p in backbone.parameters():
            p.normal_(0, 0.05)
    fp8 = copy.deepcopy(backbone)
    assert convert_to_float8(fp8) == 3 * len(fp8.blocks)
    x = torch.randn(2, backbone.num_frames, backbone.in_channels, backbone.input_size, backbone.input_size)
    t = torch.tensor([999.0, 3.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, out = backbone(x, t).float(), fp8(x, t).float()
    (reference**2).mean().backward()
    (out**2).mean().backward()
    error = (out - reference).abs().mean() / reference.std()
    assert 0 < error < 0.03, f"float8 prediction off by {error:.3f} of bf16's spread (0: nothing in float8)"
    checked = 0
    for (name, p), q in zip(fp8.named_parameters(), backbone.parameters()):
        if name.split(".")[-2:-1] in [[layer] for layer in FLOAT8_LAYERS]:  # blocks.3.attn.qkv.weight
            cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
            assert cosine > 0.99, f"{name}: gradient cosine {cosine:.3f} to bf16's"
            checked += 1
    assert checked == 2 * 3 * len(fp8.blocks), "every float8 layer's weight and bias"


@needs_torchao
def test_a_float8_run_trains_and_its_checkpoint_samples_without_torchao(tmp_path, monkeypatch):
    """train.py with module.float8=true (CPU, bf16-mixed): finite losses, and the checkpoint holds the plain
    keys, so sample.py and init=checkpoint read it, torchao or not, into a model without float8 layers."""
    from utils.run import load_module, train

    cfg = compose_train(tmp_path, [*TINY, "module.float8=true", "trainer.precision=bf16-mixed"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    plain = instantiate(compose_train(tmp_path, TINY).module)
    assert sorted(torch.load(ckpt, weights_only=True)["state_dict"]) == sorted(plain.state_dict())
    monkeypatch.setitem(sys.modules, "torchao", None)  # sampling needs no torchao
    sample_cfg = compose_train(
        tmp_path / "s", [f"ckpt_path={ckpt}", "sampler.num_steps=2"], config_name="sample"
    )
    module = load_module(str(ckpt), sample_cfg, overrides=[])
    assert not float8_names(module) and module.sample(1).shape[0] == 1


#################################################################################
#                  Sampling: sampler.precision=float8 (ours)                    #
#################################################################################


def test_float8_inference_linear_is_rowwise_float8_and_requantizes_what_it_loads():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    with torch.no_grad():
        linear.weight[5] = 0  # an all-zero row (adaLN-Zero style) must not divide by zero
    fp8 = Float8InferenceLinear(linear)
    assert fp8.weight.dtype == FLOAT8 and fp8.weight_scale.shape == (1, 96)
    x = torch.randn(2, 5, 64).to(torch.bfloat16)
    x[0, 0] = 0  # an all-zero token too
    out, reference = fp8(x), linear(x.float())
    assert out.shape == (2, 5, 96) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    error = (out.float() - reference).norm() / reference.norm()
    assert 0 < error < 0.06, f"rowwise e4m3 off by {error:.4f} of the output (0: nothing quantized)"
    with torch.no_grad():
        linear.weight.mul_(2.0)
    storage = fp8.weight.data_ptr()
    fp8.load_state_dict(linear.state_dict())  # the source's full-precision weight, quantized as it loads
    assert fp8.weight.data_ptr() == storage, "loaded into the same buffers: a compiled copy keeps its graph"
    moved = linear(x.float())
    assert (fp8(x).float() - moved).norm() / moved.norm() < 0.06, "it computes with the loaded weight"
    fp8.load_state_dict(fp8.state_dict())  # its own float8 state loads as it is
    assert (fp8(x).float() - moved).norm() / moved.norm() < 0.06
    from_bf16 = Float8InferenceLinear(copy.deepcopy(linear).to(torch.bfloat16))
    fp8.load_state_dict(linear.state_dict())  # fp32
    assert torch.equal(fp8.weight.view(torch.uint8), from_bf16.weight.view(torch.uint8)), (
        "an fp32 weight quantizes as its bf16 copy does"
    )
    assigned = Float8InferenceLinear(torch.nn.Linear(64, 96))
    assigned.load_state_dict(linear.state_dict(), assign=True)  # the source's tensors become the buffers
    assert assigned.bias.dtype == torch.bfloat16 and assigned.weight_scale.is_contiguous()
    assert torch.equal(assigned(x), fp8(x)), "assign=True loads what a copying load does"
    empty = fp8(torch.zeros(0, 5, 64, dtype=torch.bfloat16))  # no tokens, e.g. an image-free slice
    assert empty.shape == (0, 5, 96) and empty.dtype == torch.bfloat16


def test_float8_sampling_quantizes_the_copy_only_and_follows_fp32_within_float8_error():
    torch.manual_seed(0)
    model = Latte(size="tiny", patch_size=2, input_size=8, num_frames=4, learn_sigma=True).eval()
    with torch.no_grad():  # random weights: adaLN-Zero's zero init would make every output 0
        for p in model.parameters():
            p.normal_(0, 0.05)
    x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([999.0, 3.0])
    fast, bf16 = Sampler("ddim", 5, precision="float8"), Sampler("ddim", 5, precision="bf16")
    errors, outputs = {}, {}
    for name, sampler in (("float8", fast), ("bf16", bf16)):
        reference = model(x, t)
        outputs[name] = sampler.inference_model(model, x.device)(x, t)
        errors[name] = ((outputs[name] - reference).norm() / reference.norm()).item()
    assert errors["bf16"] < errors["float8"] < 0.05, (
        f"one forward's relative error {errors}: float8 is coarser"
    )
    for name, sampler in (("float8", fast), ("bf16", bf16)):  # a refresh from unchanged weights
        assert torch.equal(sampler.inference_model(model, x.device)(x, t), outputs[name]), (
            f"{name}: the first call (cast, then quantized) and a refresh (loaded) must agree bit for bit"
        )
    cast = fast._fast[1].model
    swapped = [n for n, m in cast.named_modules() if isinstance(m, Float8InferenceLinear)]
    assert len(swapped) == 3 * len(model.blocks) and {n.rsplit(".", 1)[-1] for n in swapped} == set(
        FLOAT8_LAYERS
    )
    assert not any(isinstance(m, Float8InferenceLinear) for m in model.modules()), (
        "the model itself is untouched"
    )

    noise = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    run = lambda s: s(model, GaussianDiffusion(), noise.shape, noise=noise)  # noqa: E731
    relative = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    low = run(fast)
    assert low.dtype == torch.float32 and relative(low, run(Sampler("ddim", 5))) < 0.03
    with torch.no_grad():
        model.final_layer.linear.bias.add_(1.0)
        model.blocks[0].mlp.fc2.weight.mul_(3.0)  # a float8 layer's weight moves too (e.g. the EMA)
    moved = run(fast)
    assert fast._fast[1].model is cast, "the quantized copy is made once and refreshed in place"
    assert relative(moved, run(Sampler("ddim", 5))) < 0.03 < relative(moved, low), (
        "it samples the new weights"
    )
    fast.precision = "bf16"
    run(fast)
    assert fast._fast[1].model is not cast, "another precision makes another copy"
