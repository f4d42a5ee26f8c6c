"""Every sweep preset through the real CLI (Hydra multirun), one through submitit's local launcher."""

import json
import math
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from backbones import Latte
from tests.conftest import CONF_DIR, ROOT, TINY
from tests.helpers.wandb_offline import logged_run

SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


def _jobs(sweep: str) -> int:
    """Number of runs a sweep preset asks for: the product of its value lists."""
    params = OmegaConf.load(CONF_DIR / "sweep" / f"{sweep}.yaml").hydra.sweeper.params
    return math.prod(len(str(values).split(",")) for values in params.values())


def _fake_dit(path) -> None:
    """A DiT checkpoint in facebookresearch/DiT's layout for the tiny test model (1000 ImageNet classes)."""
    dit = Latte(size="tiny", patch_size=4, input_size=16, in_channels=4, num_frames=1, num_classes=1000)
    state = {k: v for k, v in dit.state_dict().items() if k != "temp_embed"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _multirun(tmp_path, sweep: str, *extra: str) -> subprocess.CompletedProcess:
    """``python train.py -m sweep=<sweep>`` on the tiny config, all output under ``tmp_path``."""
    overrides = [o for o in TINY if not o.startswith("logger=")]
    args = [f"sweep={sweep}", *overrides, *extra]  # as a user runs it: logs/ under the working directory
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    env["LATTE_WEIGHTS_DIR"] = str(tmp_path / "weights")
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _sweep_dir(tmp_path):
    """The one multirun folder the sweep made under ``logs/<task>/multiruns/``."""
    (sweep,) = (tmp_path / "logs").glob("*/multiruns/*")
    return sweep


def _results(tmp_path, jobs: int) -> list[dict]:
    """The metrics.json every job of the sweep wrote."""
    sweep = _sweep_dir(tmp_path)
    results = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(jobs)]
    assert not (sweep / str(jobs)).exists(), "more jobs ran than the preset asks for"
    return results


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_preset_runs_every_job(tmp_path, sweep):
    _fake_dit(tmp_path / "weights" / "DiT-XL-2-256x256.pt")
    result = _multirun(tmp_path, sweep, "logger=wandb")
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = _jobs(sweep)
    assert jobs >= 2
    for i, metrics in enumerate(_results(tmp_path, jobs)):
        assert math.isfinite(metrics["train/loss"]), (i, metrics)
        run = logged_run(_sweep_dir(tmp_path) / str(i) / "wandb")
        assert run["group"] == sweep, "each sweep's runs are grouped by its name on wandb"
        swept = OmegaConf.load(CONF_DIR / "sweep" / f"{sweep}.yaml").hydra.sweeper.params
        assert sorted(tag.split("=")[0] for tag in run["tags"]) == sorted(swept), run["tags"]


@pytest.mark.slow
def test_sweep_through_submitit_local_launcher(tmp_path):
    result = _multirun(tmp_path, "noise_priors", "logger=csv", "hydra/launcher=submitit_local")
    assert result.returncode == 0, result.stderr[-4000:]
    results = _results(tmp_path, 3)
    assert all(math.isfinite(m["train/loss"]) for m in results)
    assert (_sweep_dir(tmp_path) / ".submitit").is_dir(), "jobs must have gone through submitit"
