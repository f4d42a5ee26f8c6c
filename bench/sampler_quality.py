"""Equal quality, shown (issue #14, items 3-4): one checkpoint's FVD/FID/KID under each sampler, and the wall
time of each evaluation as ``evaluate.py`` runs it.

Every sampler is one ``metrics.evaluation.evaluate`` (the ``evaluate.py`` path: its config, seed, batching
and real reference) on the same checkpoint's EMA weights. The table gives each metric, the FVD over
DDPM-250's (a fast sampler counts where it is within 5%; one seed, no error bars) and the evaluation's wall
time end to end as ``evaluate.py`` reports it: loading the detectors, the cached reference and the
checkpoint, compiling (``--compile``), sampling, features and statistics. The real reference is prepared
before the first clock starts. Without the real detector files, ``--random-detectors`` writes a randomly
initialised I3D (TorchScript signature) and InceptionV3 of the real architectures into ``--workdir`` (rank
0, the other ranks read them), and every row says so: such figures compare samplers with each other, not
with papers.

    python bench/sampler_quality.py CKPT --random-detectors    # DDPM-250, DDIM-50/25, DPM-Solver++-20/10
    torchrun --nproc-per-node=2 bench/sampler_quality.py CKPT --random-detectors --samplers dpm_solver:20
    python bench/sampler_quality.py CKPT --random-detectors --samplers ddpm:250 ddim:2 --num-videos 4 \
        --overrides metrics=fvd data.resolution=16 real.num_videos=8   # CPU smoke run (16-frame CKPT)

Item 4 (``evaluate.py``'s wall time at the paper's protocol) needs the paper's workload, not its weights:
``--random-model XL/2`` evaluates a randomly initialised official-layout Latte-XL/2 file through a randomly
initialised SD VAE of the real kl-f8 architecture (both written into ``--workdir``), at the data preset's
resolution, so the times are those of the real networks and the metric values mean nothing:

    python bench/sampler_quality.py --random-model XL/2 --random-detectors --compile \
        --samplers dpm_solver:20 --overrides autoencoder.torch_dtype=bfloat16   # 2048 videos of 16 x 256²

Prints one table (rank 0) and writes the rows as JSON (``--json``), each as soon as it is measured.
"""

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backbones import Latte  # noqa: E402
from bench.train_loop import write_rows  # noqa: E402
from metrics import I3DTorchScriptLike, InceptionI3d  # noqa: E402
from metrics.evaluation import evaluate  # noqa: E402
from metrics.standins import random_inception_weights, randomize_, save_scripted  # noqa: E402
from utils.config import register_resolvers  # noqa: E402
from utils.distributed import barrier, join_torchrun, leave_torchrun, rank_and_world_size  # noqa: E402

SAMPLERS = ["ddpm:250", "ddim:50", "ddim:25", "dpm_solver:20", "dpm_solver:10"]  # issue #14, item 3
WITHIN = 0.05  # a fast sampler counts where its FVD is within 5% of DDPM-250's


def random_detectors(folder: Path) -> Path:
    """Random-weight I3D and InceptionV3 files (seeded) under their registry names in ``folder``."""
    save_scripted(I3DTorchScriptLike(randomize_(InceptionI3d(), seed=0)), folder / "i3d_torchscript.pt")
    random_inception_weights(folder / "weights-inception-2015-12-05-6726825d.pth")
    return folder


def write_random_model(folder: Path, model: str, input_size: int) -> None:
    """A random official-layout Latte file (``model`` as "XL/2") and a random SD VAE (kl-f8) in ``folder``."""
    from diffusers import AutoencoderKL

    size, patch = model.split("/")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    latte = Latte(size=size, patch_size=int(patch), input_size=input_size, learn_sigma=True)
    torch.save({"ema": latte.state_dict()}, folder / "latte_random.pt")  # the official files' layout
    vae = AutoencoderKL(  # Stable Diffusion's kl-f8 (sd-vae-ft-ema's config.json), random weights
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=256,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(folder / "sd_vae_random")


def config(spec: str, args: argparse.Namespace, weights_dir: Path | None, out: Path) -> DictConfig:
    """evaluate.py's config for the checkpoint with sampler ``name:steps``."""
    name, steps = spec.split(":")
    overrides = [f"ckpt_path={args.ckpt}", f"sampler={name}", f"sampler.num_steps={steps}"]
    overrides += [f"num_videos={args.num_videos}", f"batch_size={args.batch_size}", "progress=false"]
    overrides += [f"sampler.compile={str(args.compile).lower()}", f"paths.output_dir={out / spec}"]
    overrides += [f"paths.weights_dir={weights_dir}"] if weights_dir else []
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=[*overrides, *args.overrides])


def prepare_reference(cfg: DictConfig) -> None:
    """The real reference statistics, computed (or found cached) before any row's clock starts."""
    device = join_torchrun(cfg.device)
    instantiate(cfg.metrics).to(device).prepare_reference(instantiate(cfg.real), progress=False)


def one_sampler(spec: str, args: argparse.Namespace, weights_dir: Path | None, out: Path) -> dict:
    """``evaluate()`` of the checkpoint with sampler ``name:steps``; its row."""
    record = evaluate(config(spec, args, weights_dir, out))
    return {
        "sampler": spec,
        "model": f"random-weight Latte-{args.random_model}" if args.random_model else str(args.ckpt),
        "tag": record["source"]["sampler"],
        "values": record["values"],
        "seconds": record["seconds"],
        "phase_seconds": record[
            "phase_seconds"
        ],  # setup (reference, checkpoint), generate, features, statistics
        "seconds_per_video": record["seconds"] / record["num_generated"],
        "num_generated": record["num_generated"],
        "processes": record["processes"],
        "detectors": "random-weight" if weights_dir else "registry",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "ckpt", nargs="?", help="a train.py checkpoint (file or sharded folder) or an official Latte file"
    )
    parser.add_argument(
        "--random-model", help='instead of ckpt: a random Latte of this size/patch ("XL/2") and SD VAE'
    )
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS, help="sampler group:steps, in order")
    parser.add_argument("--num-videos", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--compile", action="store_true", help="sampler.compile=true (the fast path on a GPU)"
    )
    parser.add_argument("--random-detectors", action="store_true", help="random-weight I3D and InceptionV3")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for evaluate.py")
    parser.add_argument("--json", type=Path, help="the rows, rewritten as each sampler finishes")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sampler_quality",
        help="shared by ranks",
    )
    args = parser.parse_args()
    if (args.ckpt is None) == (args.random_model is None):
        parser.error("give exactly one of a checkpoint or --random-model")
    register_resolvers()
    join_torchrun("auto")  # under torchrun: one process group, so rank 0 writes the shared files first
    rank = rank_and_world_size()[0]
    weights_dir = args.workdir / "weights" if args.random_detectors else None
    if weights_dir and rank == 0:
        random_detectors(weights_dir)
    if args.random_model:  # read through evaluate.py's official-file route, as a released checkpoint is
        args.ckpt = args.workdir / "latte_random.pt"
        vae = ["autoencoder=sd_vae", f"autoencoder.path={args.workdir / 'sd_vae_random'}"]
        args.overrides = [*vae, *args.overrides]
        input_size = config("ddpm:1", args, weights_dir, args.workdir).data.resolution // 8  # kl-f8 latents
        args.overrides += [f"official.model=Latte-{args.random_model}", f"official.input_size={input_size}"]
        if rank == 0:
            write_random_model(args.workdir, args.random_model, input_size)
    barrier()
    prepare_reference(config(args.samplers[0], args, weights_dir, args.workdir / "runs"))
    rows = []
    for spec in args.samplers:  # each row kept as soon as it is measured: a killed run keeps the finished
        rows.append(one_sampler(spec, args, weights_dir, args.workdir / "runs"))
        if args.json and rank == 0:
            write_rows(args.json, compare(rows))
    if rank == 0:
        print_table(compare(rows))
    leave_torchrun()


def compare(rows: list[dict]) -> list[dict]:
    """Each row's FVD over DDPM-250's and whether it is within 5% (None without a DDPM-250 row, or for it)."""
    baseline = next((r["values"].get("fvd") for r in rows if r["sampler"] == "ddpm:250"), None)
    for r in rows:
        fvd = r["values"].get("fvd")
        known = baseline is not None and fvd is not None and r["sampler"] != "ddpm:250"
        r["fvd_vs_ddpm250"] = fvd / baseline if known else None
        r["within_5pct"] = r["fvd_vs_ddpm250"] <= 1 + WITHIN if known else None
    return rows


def print_table(rows: list[dict]) -> None:
    """One markdown table of the rows, after a line naming the device, videos and detectors."""
    metrics = sorted({k for r in rows for k in r["values"]})
    first = rows[0]
    print(
        f"device: {first['device']} x {first['processes']}, torch {first['torch']}, {first['date']}; "
        f"{first['model']}; {first['num_generated']} videos, {first['detectors']} detectors"
    )
    print(
        f"| sampler | {' | '.join(metrics)} | FVD / DDPM-250's | within 5% | evaluate() s, end to end | "
        "s per video | setup / generate / features / statistics s |"
    )
    print("|---|" + "---|" * (len(metrics) + 5))
    for r in rows:
        ratio = f"{r['fvd_vs_ddpm250']:.3f}" if r["fvd_vs_ddpm250"] is not None else "-"
        within = {None: "-", True: "yes", False: "no"}[r["within_5pct"]]
        values = " | ".join(f"{r['values'][k]:.3f}" if k in r["values"] else "-" for k in metrics)
        print(
            f"| {r['tag']} | {values} | {ratio} | {within} | {r['seconds']:.1f} | "
            f"{r['seconds_per_video']:.3f} | {' / '.join(f'{v:.1f}' for v in r['phase_seconds'].values())} |"
        )


if __name__ == "__main__":
    main()
