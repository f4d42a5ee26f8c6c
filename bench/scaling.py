"""Multi-GPU scaling of the train.py loop: DDP and FSDP on 1, 2 and 4 GPUs of one host, eager and compiled.

Each row is one ``torchrun --nproc-per-node=N bench/train_loop.py`` (the real Hydra config through
``utils.run.train``; see that script) with ``trainer=ddp`` or ``trainer=fsdp``; one GPU is ``trainer=gpu``,
the baseline of the scaling efficiency = samples/s on N GPUs / (N x samples/s on one GPU, same model, mode).

    python bench/scaling.py --part latte    # Latte-XL/2, paper's shape, batch 5 per GPU: DDP on 1/2/4 GPUs
    python bench/scaling.py --part ddp-tuning --gpus 4  # compiled DDP: static graph, 100 MB buckets, cuts
    python bench/scaling.py --part fsdp     # FSDP for Latte-XL/2 on 2/4 GPUs (1 GPU: the baseline)
    python bench/scaling.py --part pair     # the AAPT generator + discriminator pair: DDP and FSDP
    python bench/scaling.py --part fsdp --gpus 2 --steps 4 --warmup 1 --modes eager --overrides \
        backbone=latte_tiny trainer.accelerator=cpu trainer.precision=32-true data.num_workers=0  # CPU smoke

Prints one table and writes the rows as JSON (``--json``).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from subprocess import PIPE

ROOT = Path(__file__).resolve().parents[1]
AAPT_PAIR = ["init=scratch", "data=synthetic", "data.resolution=32"]  # XL/2 G + D, 16 frames, batch 2 per GPU


DDP_VARIANTS = [
    "trainer.strategy.split_compiled_graphs=true",  # dynamo's DDPOptimizer cuts each block's graph at 25 MB
    "trainer.strategy.split_compiled_graphs=true trainer.strategy.static_graph=true",
    "trainer.strategy.bucket_cap_mb=100",
]


def configurations(part: str, gpus: list[int], variants: list[str] = DDP_VARIANTS) -> list[dict]:
    """The rows of ``part``: model (experiment + overrides), strategy, GPUs, modes."""
    latte = {"model": "Latte-XL/2", "experiment": "latte_synthetic", "overrides": []}
    pair = {"model": "AAPT G+D (XL/2)", "experiment": "aapt_sky_gan", "overrides": AAPT_PAIR}
    rows = []
    if part == "latte":
        for n in gpus:
            modes = ["eager", "compiled", "compiled-whole"] if n == 1 else ["eager", "compiled"]
            rows.append({**latte, "trainer": "gpu" if n == 1 else "ddp", "gpus": n, "modes": modes})
    if part == "ddp-tuning":  # compiled DDP with each variant in turn
        for variant in variants:
            for n in [n for n in gpus if n > 1]:
                overrides = variant.split()
                rows.append(
                    {**latte, "trainer": "ddp", "gpus": n, "modes": ["compiled"], "overrides": overrides}
                )
    if part == "fsdp":  # one GPU (trainer=gpu) is the efficiency baseline measured on the same machine
        for n in gpus:
            rows.append(
                {**latte, "trainer": "gpu" if n == 1 else "fsdp", "gpus": n, "modes": ["eager", "compiled"]}
            )
    if part == "pair":  # FSDP also with the weights kept gathered through the generator's 16-frame rollout
        gathered = ["trainer.strategy.reshard_after_forward=false"]
        for n in gpus:
            runs = [("gpu", [])] if n == 1 else [("fsdp", gathered), ("fsdp", []), ("ddp", [])]
            for trainer, extra in runs:
                overrides = [*AAPT_PAIR, *extra]
                rows.append(
                    {**pair, "overrides": overrides, "trainer": trainer, "gpus": n, "modes": ["eager"]}
                )
                rows[-1].update(steps=12, warmup=4)  # ~2.7 s a step
    return rows


def run(
    row: dict,
    steps: int,
    warmup: int,
    extra: list[str],
    modes: list[str],
    timeout: float,
    profile: Path | None = None,
) -> list[dict]:
    """One torchrun of train_loop.py for ``row`` (its modes among ``modes``); its rows, one per mode."""
    row = {**row, "modes": [m for m in row["modes"] if m in modes]}
    if not row["modes"]:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={row['gpus']}",
        ]
        command += [str(ROOT / "bench" / "train_loop.py"), "--experiment", row["experiment"]]
        command += ["--steps", str(row.get("steps", steps)), "--warmup", str(row.get("warmup", warmup))]
        command += ["--modes", *row["modes"], "--json", str(out)]
        command += ["--dump-stacks-after", str(max(timeout - 15, 0.8 * timeout))]
        if profile:  # <dir>/<trainer>_<gpus>gpu.<mode>.json
            profile.mkdir(parents=True, exist_ok=True)
            command += ["--profile", str(profile / f"{row['trainer']}_{row['gpus']}gpu")]
        command += ["--overrides", f"trainer={row['trainer']}"]
        command += [f"trainer.devices={row['gpus']}", *row["overrides"], *extra]
        print(f"{time.strftime('%H:%M:%S')} {' '.join(command[5:])}", flush=True)
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and every rank
            _, stderr = process.communicate()
            print(
                f"TIMED OUT after {timeout} s (every rank's stacks above the end)\n{stderr[-16000:]}",
                flush=True,
            )
        else:
            if process.returncode != 0:
                print(f"FAILED\n{stderr[-3000:]}", flush=True)
        results = json.loads(out.read_text()) if out.exists() else []  # the modes measured before any stop
    variant = " ".join(o for o in [*row["overrides"], *extra] if o not in AAPT_PAIR)  # --overrides too
    return [{**r, "model": row["model"], "trainer": row["trainer"], "variant": variant} for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["latte", "ddp-tuning", "fsdp", "pair"], required=True)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DDP_VARIANTS,
        help="--part ddp-tuning: a row each (overrides split at spaces)",
    )
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=15, help="steps left out of the mean (compilation)")
    modes = ["eager", "compiled", "compiled-whole"]
    parser.add_argument("--modes", nargs="+", default=modes, choices=modes)
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per torchrun before it is killed")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile", type=Path, help="a folder: each run's GPU profile summary (train_loop.py)"
    )
    args = parser.parse_args()
    rows = []
    for config in configurations(args.part, args.gpus, args.variants):
        done = run(config, args.steps, args.warmup, args.overrides, args.modes, args.timeout, args.profile)
        rows += done
        print(json.dumps(done), flush=True)
    if rows:
        print(f"device: {rows[0]['device']}, torch {rows[0]['torch']}, {rows[0]['date']}")
    one = {(r["model"], r["mode"]): r["samples_per_s"] for r in rows if r["gpus"] == 1}
    print(
        "| model | trainer | GPUs | mode | samples/s | scaling efficiency | step (ms) | peak GiB per GPU ",
        end="",
    )
    print("| note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = one.get((r["model"], r["mode"]))
        efficiency = f"{100 * r['samples_per_s'] / (r['gpus'] * base):.1f}%" if base else "-"
        print(
            f"| {r['model']} | {r['trainer']} | {r['gpus']} | {r['mode']} | {r['samples_per_s']:.1f} | "
            f"{efficiency} | {r['step_ms']:.1f} | {r['peak_gib']:.1f} | {r['variant']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
