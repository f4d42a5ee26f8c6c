"""bench/sample_speed.py, train_profile.py, attention_backends.py and scaling.py, end to end on the CPU."""

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

from tests.conftest import ROOT

TINY_MODEL = ["--size", "tiny", "--input-size", "8", "--frames", "4"]


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run bench/<script> as a user would, from the repository root."""
    command = [sys.executable, str(ROOT / "bench" / script), *TINY_MODEL, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_sample_speed_prints_its_table_and_writes_json(tmp_path):
    out = tmp_path / "sample_speed.json"
    result = run_bench("sample_speed.py", "--batches", "2", "--no-compile", "--reps", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    names = ["fp32 (before)", "bf16 autocast", "bf16 cast once", "fp16 cast once", "float8"]
    assert [r["config"] for r in rows] == names
    assert all(r["forward_ms"] > 0 for r in rows) and "ddim20_end_to_end_s_per_video" in rows[2]
    errors = [r["relative_error_vs_fp32"] for r in rows]
    assert errors[0] == 0 and 0 < errors[2] < 0.1 and 0 < errors[4] < 0.1, (
        f"each row's distance from fp32: {errors}"
    )
    assert "| bf16 cast once | 2 |" in result.stdout
    chosen = tmp_path / "chosen.json"
    args = ["--batches", "2", "--no-compile", "--reps", "1", "--configs", "float8", "--json", str(chosen)]
    result = run_bench("sample_speed.py", *args)
    assert [r["config"] for r in json.loads(chosen.read_text())["rows"]] == ["float8"], result.stderr[-3000:]


def test_train_profile_times_each_backend_and_writes_json(tmp_path):
    out = tmp_path / "train_profile.json"
    args = ["--steps", "1", "--warmup", "1", "--backends", "math", "--json", str(out)]
    result = run_bench("train_profile.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["step_ms"] > 0 and [r["backend"] for r in record["backends"]] == ["math"]
    assert "| SDPA backend first |" in result.stdout
    eager = run_bench("train_profile.py", *args[:4], "--eager", "--backends", "", "--json", str(out))
    assert eager.returncode == 0, eager.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["compiled"] is False and record["backends"] == [] and "eager step" in eager.stdout


def test_attention_backends_times_both_cores_and_the_step_per_kernel_and_writes_json(tmp_path):
    out = tmp_path / "attention_backends.json"
    args = [
        "--batch",
        "2",
        "--reps",
        "1",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--no-compile",
        "--json",
        str(out),
    ]
    result = run_bench("attention_backends.py", *args, "--backends", "model", "math")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    cores = {(r["attention"], r["backend"]) for r in record["cores"]}
    assert cores == {(a, k) for a in ("within frames", "across frames") for k in ("model", "math")}
    assert [r["time_backend"] for r in record["steps"]] == ["model", "math"]
    assert all(r["step_ms"] > 0 for r in record["steps"])
    assert "| across frames | math | False |" in result.stdout


def test_scaling_runs_the_train_loop_under_torchrun_and_writes_each_row_and_profile(tmp_path):
    """A CPU smoke run of bench/scaling.py: one torchrun of bench/train_loop.py on 1 process, profiled."""
    out = tmp_path / "scaling.json"
    overrides = ["backbone=latte_tiny", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    overrides += ["data.num_workers=0", "data.batch_size=2", "data.num_frames=4"]
    command = [sys.executable, str(ROOT / "bench" / "scaling.py"), "--part", "latte", "--gpus", "1"]
    command += [
        "--steps",
        "5",
        "--warmup",
        "1",
        "--modes",
        "eager",
        "--json",
        str(out),
        "--profile",
        str(tmp_path / "profiles"),
        "--overrides",
        *overrides,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert (row["trainer"], row["gpus"], row["mode"], row["device"]) == ("gpu", 1, "eager", "cpu")
    assert row["samples_per_s"] > 0 and row["torch"] == torch.__version__ and row["date"]
    assert "backbone=latte_tiny" in row["variant"], "a row names the --overrides it ran with"
    assert "| Latte-XL/2 | gpu | 1 | eager |" in result.stdout and "device: cpu" in result.stdout
    profile = json.loads((tmp_path / "profiles" / "gpu_1gpu.eager.json").read_text())
    assert profile["wall_ms"] > 0 and profile["gpu_busy_ms"] == 0, "no GPU kernels on the CPU"
    assert any("aten::" in op for op in profile["top_cpu_ops_ms"])


def test_train_loop_records_every_steps_loss_and_checks_the_curve_against_a_reference_run(tmp_path):
    """bench/train_loop.py's loss-curve check (issue #14 item 1) on the CPU: the recorded losses are the
    steps' finite losses; --reference compares with an earlier run's curve (here that run's, raised 10%),
    and --time-backend (the check's noise floor: another attention kernel across frames) is recorded."""
    tiny = ["backbone=latte_tiny", "trainer=cpu", "data.batch_size=2", "data.num_frames=4"]
    tiny += ["data.num_workers=0"]
    command = [sys.executable, str(ROOT / "bench" / "train_loop.py"), "--steps", "6", "--warmup", "1"]
    command += ["--modes", "eager", "--curve-window", "3", "--json", str(tmp_path / "run.json")]
    result = subprocess.run([*command, "--overrides", *tiny], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "run.json").read_text())
    assert len(row["losses"]) == 6 and all(0 < loss < 10 for loss in row["losses"])
    assert row["losses"][-1] == pytest.approx(row["final_loss"], rel=1e-6), (
        "the last step's is the logged loss"
    )
    assert row["curve_deviation"] == 0.0, "without --reference a run is its own reference"
    assert row["time_backend"] == "model", "the model's own kernels unless --time-backend forces one"
    assert (
        "loss curve vs eager: largest gap of 3-step means" in result.stdout and "| 0.00% |" in result.stdout
    )
    raised = {**row, "losses": [1.1 * loss for loss in row["losses"]]}
    (tmp_path / "raised.json").write_text(json.dumps([raised]))
    again = [*command, "--reference", str(tmp_path / "raised.json"), "--time-backend", "math"]
    result = subprocess.run([*again, "--overrides", *tiny], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "run.json").read_text())
    assert row["time_backend"] == "math"
    assert row["curve_deviation"] == pytest.approx(1 - 1 / 1.1, rel=1e-4), (
        "the same curve, 10% under the raised"
    )
    assert "| 9.09% |" in result.stdout


def test_sync_census_counts_each_wait_per_step_at_its_site_and_shows_other_warnings(tmp_path, recwarn):
    """The census of bench/train_loop.py, fed the warning that torch.cuda.set_sync_debug_mode("warn") gives:
    counted per step at the innermost frame outside torch (here this test's helper); other warnings shown."""
    from types import SimpleNamespace

    from bench.train_loop import SyncCensus

    census = SyncCensus(str(tmp_path / "syncs.json"), skip=1, steps=2)
    trainer = SimpleNamespace(global_rank=0)

    def wait_for_the_gpu() -> None:
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)

    for step in range(4):  # steps 1 and 2 are counted: 3 waits in all
        census.on_train_batch_start(trainer, None, None, step)
        for _ in range(1 + step):
            wait_for_the_gpu()
        if step == 1:
            warnings.warn("another warning", UserWarning, stacklevel=1)
    census = json.loads((tmp_path / "syncs.json").read_text())
    line = wait_for_the_gpu.__code__.co_firstlineno + 1
    site = f"tests/test_bench_scripts.py:{line} wait_for_the_gpu"
    assert census == {"steps": 2, "syncs_per_step": {site: 2.5}}, census
    assert [str(w.message) for w in recwarn].count("another warning") == 1, "shown, not counted"


def test_curve_deviation_is_the_largest_gap_between_window_means():
    """Two windows of 2 steps: means 1 vs 1 and 2 vs 2.1 -> 5%; a curve shorter than a window has none."""
    from bench.train_loop import curve_deviation

    assert curve_deviation([1, 1, 2, 2, 9], [1, 1, 2, 2.2, 0], 2) == pytest.approx(0.05)
    assert curve_deviation([1.0] * 3, [1.0] * 3, 5) is None
    assert math.isnan(curve_deviation([2.0, float("nan")], [1.0, 1.0], 1)), "a NaN window is not skipped"


def test_busy_time_is_the_union_of_the_kernels_intervals():
    """Overlapping kernels (compute beside NCCL) count once; gaps not at all (microseconds in, ms out)."""
    from bench.train_loop import busy_ms

    assert busy_ms([(20, 30), (0, 10), (5, 15), (6, 7)]) == 0.025
    assert busy_ms([]) == 0


@pytest.mark.slow
def test_sampler_quality_evaluates_each_sampler_against_ddpm250_with_random_detectors(tmp_path):
    """A CPU smoke run of bench/sampler_quality.py: a 2-step tiny checkpoint of 16-frame clips, DDPM-250 and
    DPM-Solver++-4 through evaluate(), random-weight I3D; each row's FVD, its ratio to DDPM-250's, times."""
    tiny = ["backbone=latte_tiny", "backbone.patch_size=4", "data.num_frames=16", "data.resolution=16"]
    tiny += ["data.batch_size=2", "data.num_workers=0", "data.dataset.num_videos=8", "trainer.max_steps=2"]
    tiny += ["trainer.limit_val_batches=0", "~callbacks.video_sampler", f"hydra.run.dir={tmp_path / 'run'}"]
    train = subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny], cwd=tmp_path, capture_output=True)
    assert train.returncode == 0, train.stderr[-3000:]
    out, ckpt = tmp_path / "rows.json", tmp_path / "run" / "checkpoints" / "last.ckpt"
    command = [sys.executable, str(ROOT / "bench" / "sampler_quality.py"), str(ckpt), "--random-detectors"]
    command += ["--samplers", "ddpm:250", "dpm_solver:4", "--num-videos", "4", "--batch-size", "2"]
    command += ["--json", str(out), "--workdir", str(tmp_path / "work"), "--overrides", "metrics=fvd"]
    command += ["data.resolution=16", "data.num_workers=0", "real.num_videos=8", "real.batch_size=4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ddpm, fast = json.loads(out.read_text())
    assert (ddpm["tag"], fast["tag"]) == ("ddpm250", "dpmpp2m4")
    assert ddpm["fvd_vs_ddpm250"] is None and ddpm["within_5pct"] is None, "the baseline is not compared"
    assert fast["fvd_vs_ddpm250"] == pytest.approx(fast["values"]["fvd"] / ddpm["values"]["fvd"])
    assert fast["within_5pct"] is (fast["fvd_vs_ddpm250"] <= 1.05)
    assert all(r["detectors"] == "random-weight" and r["seconds"] > 0 for r in (ddpm, fast))
    assert "| ddpm250 |" in result.stdout and "random-weight detectors" in result.stdout
    assert len(list((tmp_path / "work" / "weights" / "real_stats").glob("*.pt"))) == 1, "one cached reference"


def test_sampler_quality_random_model_evaluates_a_random_official_latte_through_a_random_sd_vae(tmp_path):
    """--random-model (issue #14 item 4's workload without its weights): a random official-layout Latte file
    and a random SD VAE of the kl-f8 architecture, written into the workdir, read through evaluate.py."""
    from backbones import load_official_latte

    out, work = tmp_path / "rows.json", tmp_path / "work"
    command = [sys.executable, str(ROOT / "bench" / "sampler_quality.py"), "--random-model", "S/4"]
    command += ["--random-detectors", "--samplers", "dpm_solver:2", "--num-videos", "2"]
    command += ["--batch-size", "2", "--json", str(out), "--workdir", str(work), "--overrides", "metrics=fvd"]
    command += ["data.resolution=32", "data.num_workers=0", "real.num_videos=4", "real.batch_size=4"]
    command += ["autoencoder.torch_dtype=bfloat16"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert (row["model"], row["tag"], row["num_generated"]) == ("random-weight Latte-S/4", "dpmpp2m2", 2)
    assert "random-weight Latte-S/4" in result.stdout, "the table says the model is random"
    assert list(row["phase_seconds"]) == ["setup", "generate", "features", "statistics"]
    assert row["phase_seconds"]["generate"] > 0, "the random VAE's decode and the sampler take time"
    vae = json.loads((work / "sd_vae_random" / "config.json").read_text())
    assert (vae["block_out_channels"], vae["scaling_factor"]) == ([128, 256, 512, 512], 0.18215), "SD's kl-f8"
    latte = load_official_latte(work / "latte_random.pt", model="Latte-S/4", input_size=4)  # 32 px / 8
    assert (latte.size, latte.patch_size, latte.input_size) == ("S", 4, 4)


def test_gpu_time_counts_kernels_once_and_leaves_out_the_ranges_drawn_on_the_gpu_row():
    """An optimizer range and an nccl:* range on the GPU row (named as their CPU events) are not kernels; a
    NCCL kernel beside a GEMM is not exposed, one after it is."""
    from types import SimpleNamespace

    from bench.train_loop import gpu_time

    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def event(name, device, start, end):
        return SimpleNamespace(
            name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end)
        )

    events = [
        event("Optimizer.step#AdamW.step", cpu, 0, 9000),
        event("Optimizer.step#AdamW.step", gpu, 0, 9000),  # the range, drawn on the GPU row
        event("nccl:all_reduce", cpu, 0, 500),
        event("nccl:all_reduce", gpu, 3000, 6000),
        event("nvjet_sm90_gemm", gpu, 0, 4000),
        event("ncclDevKernel_AllReduce_Sum_f32", gpu, 3000, 6000),  # 1 ms beside the GEMM, 2 ms exposed
    ]
    time = gpu_time(events, steps=1, wall_ms=8.0)
    assert time["gpu_busy_ms"] == 6.0 and time["compute_ms"] == 4.0 and time["nccl_ms"] == 3.0
    assert time["nccl_exposed_ms"] == 2.0 and time["gpu_idle_ms"] == 2.0
    assert time["classes_ms"] == {"matmul": 4.0, "communication (NCCL)": 3.0}
    assert "Optimizer.step#AdamW.step" not in time["top_kernels_ms"]
