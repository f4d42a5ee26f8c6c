"""No training step of any method reads a tensor's value on the host: on a GPU each read would make the host
wait for it and drain the GPU's queue (bench/RESULTS.md, "Host waits"). The CPU stand-in, for CI, of
tests/test_gpu.py's census, which needs a GPU."""

import pytest
import torch

from tests.conftest import TINY, compose_train
from tests.helpers.probes import HostReadProbe
from utils.run import train

RARELY = [  # logging, validation, checkpoints and samples outside the 3 counted steps (4-6 of 8)
    f"{key}=100"
    for key in (
        "trainer.log_every_n_steps",
        "trainer.val_check_interval",
        "callbacks.model_checkpoint.every_n_train_steps",
        "callbacks.video_sampler.every_n_steps",
    )
]
METHODS = {
    "latte": [],
    "aapt_adapt": ["experiment=aapt_synthetic_adapt", "init=scratch", "data.num_frames=3"],
    "aapt_distill": ["experiment=aapt_synthetic_distill", "init=scratch", "data.num_frames=3"],
    "aapt_gan": ["experiment=aapt_synthetic_gan", "init=scratch", "data.num_frames=3", "module.segments=2"],
    "apla": [
        "experiment=apla_synthetic",
        "data.batch_size=1",
        "data.dataset.num_videos=1",
        "vgt.patch_size=4",
    ]
    + ["callbacks.metrics.every_n_steps=100"],
}
HOST_DATA = "datamodules/"  # the data pipeline's own tensors: host tensors (in DataLoader workers on a GPU)
BY_DESIGN = {  # these read host copies, or CPU tensors only
    "lightning_modules/base.py:on_host",
    "lightning_modules/base.py:raise_if_nonfinite",
    "diffusion/objective.py:check_jump",
}


@pytest.mark.parametrize("method", list(METHODS))
def test_no_training_step_reads_a_tensor_on_the_host(tmp_path, method):
    probe = ["+callbacks.reads._target_=tests.helpers.probes.HostReadProbe"]
    overrides = [*METHODS[method][:1], *TINY, *METHODS[method][1:], "trainer.max_steps=8", *RARELY, *probe]
    train(compose_train(tmp_path, overrides))
    seen = dict(HostReadProbe.seen)
    assert "lightning_modules/base.py:raise_if_nonfinite" in seen, f"the probe counts nothing: {seen}"
    reads = {site: n for site, n in seen.items() if not site.startswith(HOST_DATA) and site not in BY_DESIGN}
    assert reads == {}, f"host reads of tensors in 3 training steps: {reads}"


@pytest.mark.parametrize("method", ["ddpm", "ddim", "euler"])
def test_no_sampling_step_reads_a_tensor_on_the_host(method):
    """Host reads from this project's code while sampling 8 steps are those of 4 (once per call): none per
    step, where on a GPU each would drain the queue between the model's forwards."""
    from backbones import Latte
    from diffusion import EulerSampler, FlowMatching, GaussianDiffusion, Sampler

    flow = method == "euler"
    model = Latte(size="S", patch_size=4, input_size=8, num_frames=4, learn_sigma=not flow).eval()
    objective, noise = FlowMatching() if flow else GaussianDiffusion(), torch.randn(1, 4, 4, 8, 8)

    def reads(steps: int) -> dict[str, int]:
        sampler = EulerSampler(steps) if flow else Sampler(method, steps)
        with HostReadProbe.counting() as seen:
            sampler(model, objective, noise.shape, noise=noise)
        return {site: n for site, n in seen.items() if site not in BY_DESIGN}

    assert reads(8) == reads(4)
