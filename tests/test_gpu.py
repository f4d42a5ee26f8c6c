"""GPU checks: bf16-mixed training through the real config, and bf16 numerics of the backbone."""

import pytest
import torch

from backbones import Latte
from tests.conftest import TINY, compose_train
from utils.run import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_mixed_training_on_gpu_writes_finite_checkpoint(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "trainer=gpu", "trainer.max_steps=20", "data.batch_size=8"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 20
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_compiled_bf16_training_on_gpu_matches_the_eager_loss_curve(tmp_path):
    overrides = [*TINY, "trainer=gpu", "trainer.max_steps=20", "data.batch_size=8", "seed=0"]
    eager = train(compose_train(tmp_path / "eager", overrides))
    compiled = train(compose_train(tmp_path / "compiled", [*overrides, "module.compile=true"]))
    assert abs(compiled["train/loss"] - eager["train/loss"]) < 0.1 * eager["train/loss"] + 1e-3


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
