"""module.float8=true: torchao's Float8Linear in the blocks' qkv/fc1/fc2 (emulated on the CPU), keeping the
weights, state-dict keys and EMA; its forward and gradients follow bf16 autocast within float8 error."""

import copy
import sys

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import TINY, compose_train
from utils.float8 import FLOAT8_LAYERS, convert_to_float8

Float8Linear = pytest.importorskip("torchao.float8.float8_linear").Float8Linear


def float8_names(module: torch.nn.Module) -> list[str]:
    """The names of the Float8Linear submodules of ``module``."""
    return [name for name, m in module.named_modules() if isinstance(m, Float8Linear)]


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
