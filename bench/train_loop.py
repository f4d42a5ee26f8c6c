"""Steps/s of the whole training loop as ``python train.py`` runs it, eager and with ``module.compile=true``.

``bench/train_throughput.py`` times the bare backbone; this times what a researcher gets: the real Hydra
config through ``utils.run.train`` (Lightning loop, DataLoader workers, the EMA update, logging) with the
paper's model (Latte-XL/2) at the paper's token count. No SD VAE file is needed: ``autoencoder=identity``
on 16 x 32² pixel clips gives the 16 x 256 tokens per video that 16 x 256² video has in SD-VAE latents (3
channels instead of 4). Validation, sampling and checkpoints are off so that only training steps are timed.
Mode ``compiled`` is ``module.compile=true`` (each block compiled); ``compiled-whole`` compiles the whole
backbone in one ``torch.compile`` instead, for comparison.

    python bench/train_loop.py                                   # on a GPU: eager, then compiled
    python bench/train_loop.py --steps 3 --warmup 1 --modes eager --overrides backbone=latte_tiny \
        trainer=cpu data.batch_size=2 data.num_frames=4 data.num_workers=0   # CPU smoke run
    torchrun --nproc-per-node=4 bench/train_loop.py --overrides trainer=ddp trainer.devices=4  # 4 GPUs
"""

import argparse
import datetime
import faulthandler
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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


class StepTimer(Callback):
    """Wall time of every training batch (device synchronised), written to ``path`` at the end."""

    def __init__(self, path: str):
        self.path, self.times = Path(path), []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, module) -> None:
        self.path.write_text(json.dumps(self.times))


class CompileWhole(Callback):
    """Compile the whole backbone in one ``torch.compile`` before the run (the ``compiled-whole`` mode)."""

    def setup(self, trainer, module, stage: str) -> None:
        module.backbone.compile()


def run(
    mode: str, steps: int, warmup: int, overrides: list[str], experiment: str = "latte_synthetic"
) -> dict:
    """One ``train()`` of ``steps`` steps; the median step after ``warmup`` steps, and the whole wall time."""
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
                ],
            )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = train(cfg)
        wall = time.perf_counter() - start
        times = json.loads(Path(tmp, "step_times.json").read_text())
    step = statistics.median(times[warmup:])
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
        "median_step_ms": 1000 * step,
        "samples_per_s": world * cfg.data.batch_size / step,  # all ranks together
        "first_step_s": times[0],
        "wall_s": wall,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan"),
        "final_loss": metrics.get("train/loss", metrics.get("train/loss_g", float("nan"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the median (compilation)")
    parser.add_argument(
        "--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled", "compiled-whole"]
    )
    parser.add_argument("--experiment", default="latte_synthetic", help="e.g. aapt_sky_gan (+ init=scratch)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--json", type=Path, help="write the rows here too, each as soon as it is measured")
    parser.add_argument("--dump-stacks-after", type=float, help="seconds: then print every thread's stack")
    args = parser.parse_args()
    assert args.steps > args.warmup, "--steps must exceed --warmup, or nothing is timed"
    if args.dump_stacks_after:  # a stalled (multi-GPU) run says where each rank waits
        faulthandler.dump_traceback_later(args.dump_stacks_after, exit=False)
    register_resolvers()
    rank, rows = int(os.environ.get("RANK", 0)), []
    for mode in args.modes:
        rows.append(run(mode, args.steps, args.warmup, args.overrides, args.experiment))
        if args.json and rank == 0:  # whole or not at all, should the run be killed while writing
            args.json.with_suffix(".tmp").write_text(json.dumps(rows, indent=2))
            args.json.with_suffix(".tmp").replace(args.json)
    if rank > 0:  # under torchrun: rank 0 reports
        return
    print(f"device: {rows[0]['device']}, torch {rows[0]['torch']}, {rows[0]['date']}")
    header = (
        "mode | strategy | GPUs | batch per GPU | median step (ms) | samples/s | first step (s) | wall (s)"
    )
    print(f"| {header} | peak GiB | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['strategy']} | {r['gpus']} | {r['batch']} | {r['median_step_ms']:.1f} | "
            f"{r['samples_per_s']:.1f} | {r['first_step_s']:.1f} | {r['wall_s']:.0f} | {r['peak_gib']:.1f} | "
            f"{r['final_loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
