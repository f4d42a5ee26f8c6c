"""Checkpoints: read without running code from them, unreadable files fail in one line naming the file,
written atomically, and sample.py applies the sampling-time overrides to a train.py checkpoint."""

import errno
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion.noise_priors import MixedNoise, ProgressiveNoise
from tests.conftest import ROOT, TINY, compose_train
from utils.checkpoint import AtomicCheckpointIO
from utils.run import load_module, train

OURS_OR_OFFICIAL = "is not a checkpoint of this framework or an official Latte file ("


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The last checkpoint of a tiny 4-step run trained with the progressive noise prior."""
    root = tmp_path_factory.mktemp("trained")
    train(compose_train(root, [*TINY, "noise_prior=progressive"]))
    return root / "run" / "checkpoints" / "last.ckpt"


def sample_cfg(tmp_path: Path, ckpt: Path, *overrides: str):
    """sample.yaml for ``ckpt``, composed as ``python sample.py ckpt_path=<ckpt> <overrides>`` would."""
    return compose_train(tmp_path, [f"ckpt_path={ckpt}", *overrides], config_name="sample")


def run_sample_py(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python sample.py <args>`` as a user runs it, writing under ``tmp_path``."""
    command = [sys.executable, str(ROOT / "sample.py"), f"paths.root_dir={tmp_path}", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


class RunsCode:
    """An object whose unpickling runs code: it writes ``marker`` (as a hostile checkpoint would do worse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


#################################################################################
#                       Loading runs no code from the file                      #
#################################################################################


def test_every_checkpoint_of_a_run_loads_with_weights_only(trained):
    written = sorted(trained.parent.glob("*.ckpt"))
    assert [p.name for p in written] == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]
    for path in written:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # raises on any pickled object
        assert type(checkpoint["hyper_parameters"]) is dict  # not Lightning's AttributeDict
        assert checkpoint["hyper_parameters"]["config"]["noise_prior"]["_target_"].endswith(
            "ProgressiveNoise"
        )
        assert checkpoint["optimizer_states"] and checkpoint["callbacks"], "resume state is in the file"


def test_a_checkpoint_whose_loading_would_run_code_is_refused_by_sampling_and_resuming(tmp_path, trained):
    marker = tmp_path / "code-ran"
    hostile = torch.load(trained, map_location="cpu", weights_only=True)
    hostile["hyper_parameters"]["note"] = RunsCode(marker)
    path = tmp_path / "hostile.ckpt"
    torch.save(hostile, path)
    torch.load(path, weights_only=False)  # the danger is real: an unrestricted load runs the code ...
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError) as sampling:
        load_module(str(path), sample_cfg(tmp_path / "s", path))
    with pytest.raises(ValueError) as resuming:
        train(compose_train(tmp_path / "t", [*TINY, f"ckpt_path={path}"]))
    for error, what in ((sampling, OURS_OR_OFFICIAL), (resuming, "is not a checkpoint of this framework (")):
        message = str(error.value)
        assert message.startswith(f"{path} {what}"), message
        assert "pickled exec" in message and "could run code" in message and "\n" not in message, message
    assert not marker.exists(), "... and neither sampling nor resuming ran it"


#################################################################################
#                  Unreadable files fail in one line naming them                #
#################################################################################


def _unreadable(tmp_path: Path, kind: str) -> Path:
    """A file that is not what it should be: random bytes, a cut zip, empty, a list, a dict of other keys."""
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        saved = {
            "truncated": {"weights": torch.ones(3)},
            "list": [torch.ones(3)],
            "other": {"w": torch.ones(3)},
        }
        torch.save(saved[kind], path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    return path


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("random", "not a file of torch.save"),
        ("truncated", "zip archive"),
        ("empty", "empty or cut short"),
        ("list", "it holds a list, not a dict"),
        ("other", "neither a 'state_dict'"),
    ],
)
def test_a_file_that_is_no_checkpoint_fails_in_one_line_naming_it(tmp_path, kind, cause):
    path = _unreadable(tmp_path, kind)
    with pytest.raises(ValueError) as error:
        load_module(str(path), sample_cfg(tmp_path, path))
    message = str(error.value)
    assert message.startswith(f"{path} {OURS_OR_OFFICIAL}") and cause in message, message
    assert "\n" not in message and "weights_only=False" not in message, message


def test_resuming_from_an_unreadable_file_fails_in_one_line_naming_it(tmp_path):
    path = _unreadable(tmp_path, "random")
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))} is not a checkpoint of this framework \(not"
    ):
        AtomicCheckpointIO().load_checkpoint(path)  # what trainer.fit(ckpt_path=...) calls
    other = _unreadable(tmp_path, "other")
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(other))} is not a checkpoint of this framework \(no"
    ):
        AtomicCheckpointIO().load_checkpoint(other)


def test_unreadable_weight_files_fail_in_one_line_naming_them(tmp_path):
    from backbones.pretrained import read_dit_state_dict
    from metrics.detectors import C3DTorchScript, I3DTorchScript, I3DVideoGPT, InceptionV3

    broken = _unreadable(tmp_path, "truncated")
    cases = {
        "VideoGPT's PyTorch I3D": lambda: I3DVideoGPT(path=str(broken)),
        "StyleGAN-V's I3D TorchScript": lambda: I3DTorchScript(path=str(broken)),
        "StyleGAN-V's C3D TorchScript": lambda: C3DTorchScript(path=str(broken)),
        "torch-fidelity's InceptionV3": lambda: InceptionV3(path=str(broken)),
        "a DiT state dict": lambda: read_dit_state_dict(broken),
    }
    for what, load in cases.items():
        with pytest.raises(ValueError) as error:
            load()
        message = str(error.value)
        assert message.startswith(f"{broken} is not {what}") and "zip archive" in message, message
        assert "\n" not in message, message
    wrong = _unreadable(tmp_path, "other")  # readable, but not the network's tensors
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(wrong))} is not VideoGPT's PyTorch I3D.*Missing key"
    ):
        I3DVideoGPT(path=str(wrong))


#################################################################################
#                                 Atomic writes                                 #
#################################################################################


def _fail_after_writing(error: BaseException):
    """A torch.save that writes part of the file and then fails with ``error``."""

    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise error

    return save


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "(No space left on device)"),
        (
            RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
            "file write failed",
        ),
    ],
)
def test_a_failed_checkpoint_write_removes_its_temporary_file_and_names_the_path(
    tmp_path, monkeypatch, error, cause
):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(torch, "save", _fail_after_writing(error))
    with pytest.raises(OSError) as raised:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert f"could not write the checkpoint {path} " in str(raised.value) and cause in str(raised.value)
    assert raised.value.__cause__ is error
    assert raised.value.errno == getattr(error, "errno", None)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary file stays"
    assert torch.load(path, weights_only=True) == {"step": 1}, "the previous checkpoint is intact"


def test_a_checkpoint_folder_without_write_permission_fails_naming_the_path(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"

    def denied(src, dst):  # root ignores chmod, so the refusal is simulated where it would come
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", denied)
    message = rf"could not write the checkpoint {re.escape(str(path))} \(Permission denied\)"
    with pytest.raises(OSError, match=message) as raised:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert raised.value.errno == errno.EACCES
    assert list(tmp_path.iterdir()) == [], "the temporary file written before the rename is removed"


def test_a_failing_loss_curve_does_not_replace_the_error_that_stopped_training(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    nan_at_step_3 = ["backbone._target_=tests.helpers.nan_backbone.NaNAfter", "+backbone.nan_after=3"]
    cfg = compose_train(tmp_path, [*TINY, "trainer.max_steps=10", *nan_at_step_3])
    with pytest.warns(UserWarning, match="could not write the loss curve .*No space left on device"):
        with pytest.raises(FloatingPointError, match="train/loss is nan at step 3"):
            train(cfg)


#################################################################################
#                        sample.py / evaluate.py overrides                      #
#################################################################################


def test_sampling_uses_the_trained_noise_prior_unless_one_is_given(tmp_path, trained):
    kept = load_module(str(trained), sample_cfg(tmp_path, trained), overrides=[])
    assert isinstance(kept.noise_prior, ProgressiveNoise), "sample.yaml's default (iid) is not a choice"
    given = load_module(
        str(trained), sample_cfg(tmp_path, trained, "noise_prior=mixed"), ["noise_prior=mixed"]
    )
    assert isinstance(given.noise_prior, MixedNoise)


@pytest.mark.slow  # a subprocess that samples: ~20 s on a 2-core CPU
def test_sample_py_samples_with_the_noise_prior_given_on_the_command_line(tmp_path, trained):
    args = [
        f"ckpt_path={trained}",
        "noise_prior=mixed",
        "sampler.num_steps=2",
        "num_videos=1",
        "batch_size=1",
    ]
    result = run_sample_py(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "noise prior MixedNoise(alpha=1.0) (given on the command line)" in result.stdout + result.stderr
    (run,) = (tmp_path / "logs" / "sample" / "runs").iterdir()
    assert (run / "grid.mp4").is_file()


def test_sample_py_refuses_to_change_the_trained_backbone(tmp_path, trained):
    result = run_sample_py(tmp_path, f"ckpt_path={trained}", "backbone.variant=3")
    assert result.returncode != 0
    assert "Error: backbone.variant cannot be overridden when sampling a train.py checkpoint" in (
        result.stderr
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, "a refused override is one message, not a traceback"


@pytest.mark.parametrize(
    "override",
    [
        "backbone=latte_B_2",
        "diffusion.learn_sigma=false",
        "++diffusion.num_timesteps=500",
        "module.ema_decay=0.5",
    ],
)
def test_overrides_of_the_trained_model_are_refused_naming_the_key(tmp_path, trained, override):
    key = override.split("=")[0].lstrip("+")
    with pytest.raises(
        ValueError, match=rf"^{key} cannot be overridden when sampling a train\.py checkpoint"
    ):
        load_module(str(trained), sample_cfg(tmp_path, trained), overrides=[override])


def test_a_backbone_override_on_an_official_file_points_to_official(tmp_path):
    from backbones import Latte

    path = tmp_path / "ffs.pt"
    latte = Latte(size="tiny", patch_size=4, input_size=16, in_channels=3, num_frames=4)
    torch.save({"ema": latte.state_dict()}, path)
    cfg = sample_cfg(tmp_path, path, "autoencoder=identity")
    with pytest.raises(
        ValueError, match=r"^backbone\.variant does not apply to an official Latte file.*official\."
    ):
        load_module(str(path), cfg, overrides=["backbone.variant=3"])
