"""How a run ends: the final step is saved, signals save the current step and exit non-zero, the run log holds
what the console showed, and a config or data mistake is one clear error before any logger starts."""

import csv
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY, compose_train
from tests.test_train import _load, _run, _wait_for
from utils.run import train

NEVER = "1000000"


def test_the_final_step_is_saved_whatever_the_interval(tmp_path, tiny_overrides):
    train(compose_train(tmp_path, [*tiny_overrides, "trainer.max_steps=5"]))  # checkpoints every 2 steps
    checkpoints = tmp_path / "run" / "checkpoints"
    assert _load(checkpoints / "last.ckpt")["global_step"] == 5, "last.ckpt must hold the last step"
    assert sorted(p.name for p in checkpoints.glob("step_*.ckpt")) == [
        "step_0000002.ckpt",
        "step_0000004.ckpt",
        "step_0000005.ckpt",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_current_step_flushes_the_logs_and_exits_non_zero(tmp_path, signum, exit_code):
    marks = tmp_path / "marks"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *TINY,
        f"trainer.max_steps={NEVER}",
        f"trainer.val_check_interval={NEVER}",
        f"callbacks.model_checkpoint.every_n_train_steps={NEVER}",
        f"callbacks.video_sampler.every_n_steps={NEVER}",
        "+callbacks.probe._target_=tests.helpers.probes.RestartProbe",
        f"+callbacks.probe.dirpath={marks}",
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marks / "running", process, timeout=120)  # past step 3
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == exit_code, stderr.decode()[-3000:]

    (run,) = (tmp_path / "logs" / "quickstart" / "runs").iterdir()
    step = _load(run / "checkpoints" / "last.ckpt")["global_step"]
    assert step >= 3
    assert (run / "checkpoints" / f"step_{step:07d}.ckpt").is_file(), "the step it stopped at is saved"
    assert (run / "metrics.json").is_file()
    with open(run / "csv" / "version_0" / "metrics.csv") as f:  # the logger was flushed at the stop
        logged = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert logged and max(logged) >= step - 1, (logged, step)
    log = (run / "train.log").read_text()
    assert f"Stopped by signal {signum.value} at step {step}" in log


@pytest.mark.slow
def test_the_run_log_holds_what_the_console_showed(tmp_path):
    result = _run("train.py", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "quickstart" / "runs").iterdir()
    log = (run / "train.log").read_text()
    assert "Instantiating datamodule <datamodules.VideoDataModule>" in log, "our messages"
    assert "`Trainer.fit` stopped: `max_steps=4` reached." in log, "Lightning's messages"
    assert "[py.warnings][WARNING]" in log, "Python warnings"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("data.root=/nonexistent", "Dataset folder '/nonexistent' does not exist"),
        ("data.batch_size=100", "fewer than batch_size=100"),
    ],
)
def test_a_data_mistake_is_one_clear_error_before_any_logger_starts(tmp_path, override, says):
    tiny = [o for o in TINY if not o.startswith("data.dataset.num_videos")]  # synthetic-only key
    data = ["data=video_folder"] if "root" in override else ["data.dataset.num_videos=8"]
    result = _run("train.py", *tiny, "logger=wandb", *data, override, cwd=tmp_path)
    assert result.returncode == 1
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert says in error and "(config key: data)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, "a config mistake is a message, not a traceback"
    (run,) = (tmp_path / "logs" / "quickstart" / "runs").iterdir()
    assert not (run / "wandb").exists(), "wandb must not start for a run that cannot train"
    log = (run / "train.log").read_text()
    assert "Traceback" in log and says in log, "the log keeps the whole error"
