"""Steps/s of the whole training loop as ``python train.py`` runs it, eager and with ``module.compile=true``.

``bench/train_throughput.py`` times the bare backbone; this times what a researcher gets: the real Hydra
config through ``utils.run.train`` (Lightning loop, DataLoader workers, the EMA update, logging) with the
paper's model (Latte-XL/2) at the paper's token count. No SD VAE file is needed: ``autoencoder=identity``
on 16 x 32² pixel clips gives the 16 x 256 tokens per video that 16 x 256² video has in SD-VAE latents (3
channels instead of 4). Validation, sampling and checkpoints are off so that only training steps are timed.
A step's time is the mean over the steps after ``--warmup``, run back to back as in training: the timer waits
for the GPU only where the timed steps start and end. ``--syncs`` adds a census of where the host waits for
the GPU within a step (each wait drains the GPU's queue; bench/RESULTS.md, "Host waits").
Mode ``compiled`` is ``module.compile=true`` (each block compiled); ``compiled-whole`` compiles the whole
backbone in one ``torch.compile`` instead, for comparison.

    python bench/train_loop.py                                   # on a GPU: eager, then compiled
    python bench/train_loop.py --steps 3 --warmup 1 --modes eager --overrides backbone=latte_tiny \
        trainer=cpu data.batch_size=2 data.num_frames=4 data.num_workers=0   # CPU smoke run
    torchrun --nproc-per-node=4 bench/train_loop.py --overrides trainer=ddp trainer.devices=4  # 4 GPUs

Every row also says how far its loss curve strays from a reference run's (issue #14 item 1's check that a
faster step keeps the loss curve): the largest relative gap between the two runs' mean losses over
consecutive ``--curve-window``-step windows. The reference is this invocation's first row, or the first row
of ``--reference ROWS.json`` from an earlier one (one GPU command may not fit both runs):

    python bench/train_loop.py --steps 2000 --modes eager --json eager.json                # today's numerics
    python bench/train_loop.py --steps 2000 --modes compiled --reference eager.json         # within 0.5%?

The check's noise floor: the same eager run again (is it deterministic?), and eager with another SDPA kernel
across frames (``--time-backend efficient``), a change of numerics as small and as valid as compiling:

    python bench/train_loop.py --steps 2000 --modes eager --time-backend efficient --reference eager.json
"""

import argparse
import contextlib
import datetime
import faulthandler
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backbones.latte import TemporalAttention  # noqa: E402
from bench.attention_backends import BACKENDS  # noqa: E402
from utils.config import register_resolvers  # noqa: E402
from utils.run import train  # noqa: E402

PAPER_SHAPE = [  # after experiment=latte_synthetic: Latte-XL/2, AdamW 1e-4, EMA 0.9999, batch 5, bf16-mixed
    "autoencoder=identity",
    "data.resolution=32",
    "data.num_frames=16",
    "data.num_workers=8",
    "logger=csv",
    "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.video_sampler",
    "~callbacks.model_checkpoint",
    "~callbacks.loss_curve",
]


def sync() -> None:
    """Wait for the GPU's queued work (a host clock then reads the time it took)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Mean wall time of the training steps after the first ``skip``, the first step's, and every step's loss.

    It waits for the GPU three times only: around the first step (compilation) and when step ``skip`` starts
    and the last one ends. Waiting around every step would time a loop that no training run is: each wait
    drains the GPU's queue, which then idles while the host runs the loop's own work between steps. The losses
    stay on the device until training ends, for the same reason.
    """

    def __init__(self, path: str, skip: int):
        assert skip >= 1, "the first step compiles: it is timed on its own, never with the others"
        self.path, self.skip, self.losses = Path(path), skip, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if len(self.losses) in (0, self.skip):
            sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # {}: manual optimization
        # (with gradient accumulation Lightning hands over the loss divided by accumulate_grad_batches)
        self.losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float("nan")))
        if len(self.losses) == 1 or trainer.global_step == trainer.max_steps:
            sync()
            seconds = time.perf_counter() - self.start
            if len(self.losses) == 1:
                self.first_step_s = seconds
            else:
                self.step_s = seconds / (len(self.losses) - self.skip)

    def on_train_end(self, trainer, module) -> None:
        if not hasattr(self, "step_s"):  # training ended before max_steps (e.g. the data ran out)
            sync()
            self.step_s = (time.perf_counter() - self.start) / max(1, len(self.losses) - self.skip)
        losses = [float(loss) for loss in self.losses]
        self.path.write_text(
            json.dumps({"step_s": self.step_s, "first_step_s": self.first_step_s, "losses": losses})
        )


class SyncCensus(Callback):
    """Where the host waits for the GPU in ``steps`` training steps after ``skip``, as JSON at ``path``.

    ``torch.cuda.set_sync_debug_mode`` warns at every synchronising CUDA call (``.item()``, ``bool`` of a
    tensor, a blocking copy to or from the GPU); each is counted per step at the innermost frame outside torch
    (this project's, Lightning's), with the innermost frame of this project's code that led there. A step runs
    from one ``on_train_batch_start`` to the next, so the loop's work between steps counts too. Each wait
    drains the GPU's queue, and the GPU idles until the host has queued the next kernel.
    """

    MESSAGE = "called a synchronizing CUDA operation"
    STEPS = 3

    def __init__(self, path: str, skip: int, steps: int = STEPS):
        self.path, self.skip, self.steps, self.started = Path(path), skip, steps, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.started == self.skip:
            self.block = SyncCensus.waits()
            self.sites = self.block.__enter__()
        elif self.started == self.skip + self.steps:
            self.stop(trainer)
        self.started += 1

    def on_train_end(self, trainer, module) -> None:
        if self.skip < self.started <= self.skip + self.steps:  # training ended inside the census
            self.stop(trainer)

    def stop(self, trainer) -> None:
        self.block.__exit__(None, None, None)
        steps = min(self.steps, self.started - self.skip)
        if trainer.global_rank == 0:
            per_step = {
                site: count / steps for site, count in sorted(self.sites.items(), key=lambda kv: -kv[1])
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"steps": steps, "syncs_per_step": per_step}, indent=2))

    @staticmethod
    @contextlib.contextmanager
    def waits() -> Iterator[dict[str, int]]:
        """Count the host's waits for the GPU inside the block by site (``sync_site``); show other warnings.
        On the CPU nothing waits: the count stays empty."""
        sites: dict[str, int] = {}
        with warnings.catch_warnings():  # restores warnings.showwarning and the filters at the end
            warnings.simplefilter("always")
            show = warnings.showwarning

            def record(message, category, filename, lineno, file=None, line=None) -> None:
                if SyncCensus.MESSAGE not in str(message):
                    return show(message, category, filename, lineno, file, line)
                site = sync_site(traceback.extract_stack()[:-1])
                sites[site] = sites.get(site, 0) + 1

            warnings.showwarning = record
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield sites
            finally:
                if torch.cuda.is_available():
                    torch.cuda.set_sync_debug_mode(0)


def sync_site(stack: list[traceback.FrameSummary]) -> str:
    """``innermost frame outside torch <- innermost frame of this project`` (one of them if they are one),
    each as ``path:line function`` with the path from the repository root or from site-packages."""
    torch_dir, here = Path(torch.__file__).parent, Path(__file__).resolve()

    def outside(frame: traceback.FrameSummary) -> bool:
        path = Path(frame.filename).resolve()
        return torch_dir not in path.parents and path != here and path.name != "warnings.py"

    def name(frame: traceback.FrameSummary) -> str:
        path = Path(frame.filename).resolve()
        short = path.relative_to(ROOT) if ROOT in path.parents else Path(*path.parts[-3:])
        return f"{short}:{frame.lineno} {frame.name}"

    frames = [frame for frame in reversed(stack) if outside(frame)]
    ours = next((frame for frame in frames if ROOT in Path(frame.filename).resolve().parents), None)
    if not frames:
        return "torch (no frame outside it)"
    site = name(frames[0])
    return site if ours is None or ours is frames[0] else f"{site} <- {name(ours)}"


def curve_deviation(reference: list[float], losses: list[float], window: int) -> float | None:
    """Largest relative gap between two loss curves' means over consecutive ``window``-step windows (None:
    shorter than one window, as a throughput run is; NaN where a window has no finite loss)."""
    means = [
        (
            statistics.fmean(reference[start : start + window]),
            statistics.fmean(losses[start : start + window]),
        )
        for start in range(0, min(len(reference), len(losses)) - window + 1, window)
    ]
    gaps = [abs(other / ref - 1) for ref, other in means]
    return None if not gaps else float("nan") if any(map(math.isnan, gaps)) else max(gaps)


def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as JSON at ``path``, whole or not at all (a run may be killed while it writes)."""
    path.with_suffix(".tmp").write_text(json.dumps(rows, indent=2))
    path.with_suffix(".tmp").replace(path)


def busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Milliseconds covered by the union of ``(start, end)`` intervals given in microseconds."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total / 1000


class StepProfiler(Callback):
    """``torch.profiler`` over ``steps`` training steps after ``skip``; rank 0 writes where the GPU time goes.

    The summary (``path``, JSON) says per step: the wall time, the GPU busy time (kernels' union), the
    compute and the NCCL kernel time, the NCCL time no compute kernel overlaps, each kernel class's
    time, the longest kernels and the top CPU ops: enough to tell exposed communication from a CPU-bound loop.
    """

    STEPS = 3

    def __init__(self, path: str, skip: int, steps: int = STEPS):
        self.path, self.skip, self.steps, self.profiler = Path(path), skip, steps, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.skip:
            self.profiler = torch.profiler.profile(record_shapes=False)
            self.profiler.__enter__()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.profiler is None or batch_idx != self.skip + self.steps - 1:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = (time.perf_counter() - self.start) * 1000 / self.steps
        self.profiler.__exit__(None, None, None)
        if trainer.global_rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.summary(wall), indent=2))
        self.profiler = None

    def summary(self, wall_ms: float) -> dict:
        """Per-step milliseconds: wall, GPU time (``gpu_time``) and the top CPU ops."""
        ops = sorted(self.profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        return {
            "wall_ms": wall_ms,
            **gpu_time(self.profiler.events(), self.steps, wall_ms),
            "top_cpu_ops_ms": {e.key: e.self_cpu_time_total / 1000 / self.steps for e in ops[:15]},
        }


def gpu_time(events: list, steps: int, wall_ms: float) -> dict:
    """Per-step milliseconds of profiler ``events``: GPU busy, compute, NCCL, NCCL no compute overlaps,
    idle, each kernel class's and the longest kernels'.

    The ranges that the profiler also draws on the GPU row (``Optimizer.step#AdamW.step``, ``nccl:*``,
    ``DistributedDataParallel.forward``) carry the name of a CPU event and are left out: only kernels and
    copies count (``is_user_annotation`` does not mark them on every torch version).
    """
    from bench.train_profile import kernel_class

    gpu = torch.autograd.DeviceType.CUDA
    ranges = {e.name for e in events if e.device_type != gpu}
    kernels = [e for e in events if e.device_type == gpu and e.name not in ranges]
    spans = [(e.time_range.start, e.time_range.end, kernel_class(e.name)) for e in kernels]
    nccl = [(a, b) for a, b, c in spans if c == "communication (NCCL)"]
    compute = [(a, b) for a, b, c in spans if c != "communication (NCCL)"]
    classes, names = {}, {}
    for (a, b, c), e in zip(spans, kernels):
        classes[c] = classes.get(c, 0.0) + (b - a) / 1000 / steps
        names[e.name[:90]] = names.get(e.name[:90], 0.0) + (b - a) / 1000 / steps
    busy, busy_compute = busy_ms(nccl + compute) / steps, busy_ms(compute) / steps
    return {
        "gpu_busy_ms": busy,
        "compute_ms": busy_compute,
        "nccl_ms": busy_ms(nccl) / steps,
        "nccl_exposed_ms": busy - busy_compute,
        "gpu_idle_ms": wall_ms - busy,
        "classes_ms": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
        "top_kernels_ms": dict(sorted(names.items(), key=lambda kv: -kv[1])[:12]),
    }


class CompileWhole(Callback):
    """Compile the whole backbone in one ``torch.compile`` before the run (the ``compiled-whole`` mode)."""

    def setup(self, trainer, module, stage: str) -> None:
        module.backbone.compile()


def run(
    mode: str,
    steps: int,
    warmup: int,
    overrides: list[str],
    experiment: str = "latte_synthetic",
    profile: Path | None = None,
    syncs: Path | None = None,
) -> dict:
    """One ``train()`` of ``steps`` steps: the mean step after ``warmup`` steps (and after the steps profiled
    with ``profile`` and then counted with ``syncs``, whose tools slow them), and the whole wall time."""
    profiled = StepProfiler.STEPS if profile else 0
    timed_from = warmup + profiled + (SyncCensus.STEPS if syncs else 0)
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    f"experiment={experiment}",
                    *PAPER_SHAPE,
                    *overrides,
                    *(["module.compile=true"] if mode == "compiled" else []),
                    *(
                        ["+callbacks.whole._target_=bench.train_loop.CompileWhole"]
                        if mode == "compiled-whole"
                        else []
                    ),
                    f"trainer.max_steps={steps}",
                    f"paths.root_dir={tmp}",
                    f"paths.output_dir={tmp}/run",
                    "+callbacks.step_timer._target_=bench.train_loop.StepTimer",
                    f"+callbacks.step_timer.path={tmp}/step_times.json",
                    f"+callbacks.step_timer.skip={timed_from}",
                    *(
                        [
                            "+callbacks.profiler._target_=bench.train_loop.StepProfiler",
                            f"+callbacks.profiler.path={profile.with_suffix(f'.{mode}.json')}",
                            f"+callbacks.profiler.skip={warmup}",
                        ]
                        if profile
                        else []
                    ),
                    *(
                        [
                            "+callbacks.census._target_=bench.train_loop.SyncCensus",
                            f"+callbacks.census.path={syncs.with_suffix(f'.{mode}.json')}",
                            f"+callbacks.census.skip={warmup + profiled}",
                        ]
                        if syncs
                        else []
                    ),
                ],
            )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = train(cfg)
        wall = time.perf_counter() - start
        recorded = json.loads(Path(tmp, "step_times.json").read_text())
    step = recorded["step_s"]
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    strategy = cfg.trainer.strategy
    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
    return {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "mode": mode,
        "strategy": strategy if isinstance(strategy, str) else strategy._target_.rsplit(".", 1)[-1],
        "gpus": world,
        "steps": steps,
        "batch": cfg.data.batch_size,
        "step_ms": 1000 * step,
        "samples_per_s": world * cfg.data.batch_size / step,  # all ranks together
        "first_step_s": recorded["first_step_s"],
        "wall_s": wall,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan"),
        "final_loss": metrics.get("train/loss", metrics.get("train/loss_g", float("nan"))),
        "losses": recorded["losses"],  # every step's, for the loss-curve check
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the mean (compilation)")
    parser.add_argument(
        "--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled", "compiled-whole"]
    )
    parser.add_argument("--experiment", default="latte_synthetic", help="e.g. aapt_sky_gan (+ init=scratch)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--json", type=Path, help="write the rows here too, each as soon as it is measured")
    parser.add_argument(
        "--profile", type=Path, help="a GPU profile of 3 steps after warm-up: <path>.<mode>.json"
    )
    parser.add_argument(
        "--syncs",
        type=Path,
        help="where the host waits for the GPU in 3 steps after warm-up: <path>.<mode>.json",
    )
    parser.add_argument("--dump-stacks-after", type=float, help="seconds: then print every thread's stack")
    parser.add_argument(
        "--reference",
        type=Path,
        help="rows JSON of an earlier run: its first row's loss curve is the reference",
    )
    parser.add_argument("--curve-window", type=int, default=100, help="steps per window of the curve check")
    parser.add_argument(
        "--time-backend", choices=list(BACKENDS), default="model", help="force this SDPA kernel across frames"
    )
    args = parser.parse_args()
    TemporalAttention.time_backends = BACKENDS[args.time_backend]
    untimed = (
        args.warmup + (StepProfiler.STEPS if args.profile else 0) + (SyncCensus.STEPS if args.syncs else 0)
    )
    assert args.steps > untimed, (
        "--steps must exceed --warmup (+ the profiled and counted), or nothing is timed"
    )
    if args.dump_stacks_after:  # a stalled (multi-GPU) run says where each rank waits
        faulthandler.dump_traceback_later(args.dump_stacks_after, exit=False)
    register_resolvers()
    rank, rows = int(os.environ.get("RANK", 0)), []
    for mode in args.modes:
        rows.append(
            run(mode, args.steps, args.warmup, args.overrides, args.experiment, args.profile, args.syncs)
        )
        rows[-1]["time_backend"] = args.time_backend  # across frames: "model" is the model's own choice
        if args.json and rank == 0:
            write_rows(args.json, rows)
    if rank > 0:  # under torchrun: rank 0 reports
        return
    reference = json.loads(args.reference.read_text())[0] if args.reference else rows[0]
    for r in rows:  # the loss-curve check: each run's windowed mean loss against the reference run's
        r["curve_deviation"] = curve_deviation(reference["losses"], r["losses"], args.curve_window)
    if args.json:
        write_rows(args.json, rows)
    print(f"device: {rows[0]['device']}, torch {rows[0]['torch']}, {rows[0]['date']}")
    header = "mode | strategy | GPUs | batch per GPU | step (ms) | samples/s | first step (s) | wall (s)"
    curve = f"loss curve vs {reference['mode']}: largest gap of {args.curve_window}-step means"
    print(f"| {header} | peak GiB | loss | {curve} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gap = "-" if r["curve_deviation"] is None else f"{100 * r['curve_deviation']:.2f}%"
        print(
            f"| {r['mode']} | {r['strategy']} | {r['gpus']} | {r['batch']} | {r['step_ms']:.1f} | "
            f"{r['samples_per_s']:.1f} | {r['first_step_s']:.1f} | {r['wall_s']:.0f} | {r['peak_gib']:.1f} | "
            f"{r['final_loss']:.4f} | {gap} |"
        )
    for mode in args.modes if args.syncs else []:
        census = json.loads(args.syncs.with_suffix(f".{mode}.json").read_text())
        print(f"\n| {mode}: where the host waits for the GPU | per step ({census['steps']} steps) |")
        print("|---|---|")
        for site, count in census["syncs_per_step"].items() or [("none", 0)]:
            print(f"| `{site}` | {count:g} |")


if __name__ == "__main__":
    main()
