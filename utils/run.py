"""What ``train.py`` and ``sample.py`` run: build everything from the Hydra config, then fit or sample."""

import json
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from backbones import load_official_latte
from lightning_modules import LatteDiffusion
from utils.config import instantiate_map
from utils.files import load_file
from utils.video import video_grid, write_gif, write_mp4


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured module on the configured data; resume from ``cfg.ckpt_path`` when it is set, or
    from the run folder's own newest checkpoint (a requeued SLURM job)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    rank_zero_info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule = instantiate(cfg.data)
    rank_zero_info(f"Instantiating module <{cfg.module._target_}>")
    module = instantiate(cfg.module)
    module.save_hyperparameters(
        {"config": OmegaConf.to_container(cfg, resolve=True)}
    )  # -> checkpoint + loggers
    callbacks = instantiate_map(cfg.get("callbacks"), "callback")
    loggers = instantiate_map(cfg.get("logger"), "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    ckpt_path = cfg.get("ckpt_path") or checkpoint_in_run_folder(Path(cfg.paths.output_dir))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        _finish_wandb()
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if trainer.is_global_zero:  # the run's result, one file per sweep job
        (Path(cfg.paths.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def checkpoint_in_run_folder(output_dir: Path) -> str | None:
    """What a run restarted in its own folder (a requeued SLURM job) continues from; None in a new folder.

    The newer of ``checkpoints/last.ckpt`` and Lightning's pre-emption checkpoints ``hpc_ckpt_<n>.ckpt``
    (written when SLURM sends the requeue signal, ``#SBATCH --signal=SIGUSR1@90``).
    """
    candidates = [*output_dir.glob("hpc_ckpt_*.ckpt"), output_dir / "checkpoints" / "last.ckpt"]
    found = [path for path in candidates if path.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    rank_zero_info(f"Resuming from {newest}: this run folder already holds a checkpoint")
    return str(newest)


OUR_OR_OFFICIAL = "a checkpoint of this framework or an official Latte file"


def load_module(ckpt_path: str, cfg: DictConfig) -> LatteDiffusion:
    """A module from one of our Lightning checkpoints or an official Latte release file (``{"ema": ...}``)."""
    checkpoint = load_file(ckpt_path, OUR_OR_OFFICIAL)
    overrides = {"sampler": instantiate(cfg.sampler)}
    if cfg.get("autoencoder") is not None:
        overrides["autoencoder"] = instantiate(cfg.autoencoder)
    if "state_dict" in checkpoint and "config" in checkpoint.get("hyper_parameters", {}):
        trained = OmegaConf.create(checkpoint["hyper_parameters"]["config"])
        if OmegaConf.select(trained, "module.backbone.pretrained_dit") is not None:
            trained.module.backbone.pretrained_dit = None  # the weights are in the checkpoint: no DiT file
        _warn_if_unguided(trained, cfg)
        module = instantiate(trained.module, **overrides)
        module.on_load_checkpoint(checkpoint)  # fills in the autoencoder weights, which checkpoints leave out
        module.load_state_dict(checkpoint["state_dict"])
        return module
    if "ema" not in checkpoint and "model" not in checkpoint:
        raise ValueError(
            f"{ckpt_path} is not {OUR_OR_OFFICIAL} (it holds {sorted(map(str, checkpoint))[:8]}: neither a "
            "'state_dict' with its run's 'hyper_parameters' nor an 'ema' or 'model' state dict)"
        )
    official = cfg.official
    backbone = load_official_latte(
        checkpoint,
        model=official.model,
        input_size=official.input_size,
        num_frames=official.num_frames,
        in_channels=official.in_channels,
        learn_sigma=official.learn_sigma,
        num_classes=official.num_classes,
    )
    if "autoencoder" not in overrides:
        raise ValueError(
            "an official Latte file holds no autoencoder: pass autoencoder=sd_vae autoencoder.path=<dir>"
        )
    return instantiate(cfg.module, backbone=backbone, **overrides)


def _warn_if_unguided(trained: DictConfig, cfg: DictConfig) -> None:
    """Say so when a class-conditional run is sampled at another CFG scale than it was trained to use."""
    trained_scale = OmegaConf.select(trained, "sampler.cfg_scale", default=1.0)
    if OmegaConf.select(trained, "module.backbone.num_classes", default=0) and (
        cfg.sampler.cfg_scale != trained_scale
    ):
        rank_zero_warn(
            f"sampling with sampler.cfg_scale={cfg.sampler.cfg_scale}, but this checkpoint's run samples "
            f"with cfg_scale={trained_scale}: pass sampler.cfg_scale={trained_scale} for its setting"
        )


def sample(cfg: DictConfig) -> list[Path]:
    """Sample ``cfg.num_videos`` videos from ``cfg.ckpt_path``: a grid (mp4, gif) + one mp4 each."""
    device = torch.device(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    module = load_module(cfg.ckpt_path, cfg).to(device).eval()
    generator = torch.Generator(device).manual_seed(cfg.seed)
    out = Path(cfg.paths.output_dir)
    videos = []
    for start in range(0, cfg.num_videos, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num_videos - start)
        videos.append(module.sample(n, generator=generator).cpu())  # (n, f, c, h, w) in [-1, 1]
        rank_zero_info(f"sampled {start + n}/{cfg.num_videos} videos with {module.sampler.name}")
    videos = torch.cat(videos)
    grid = video_grid(videos)
    written = [write_mp4(out / "grid.mp4", grid, cfg.fps), write_gif(out / "grid.gif", grid, cfg.fps)]
    for i, video in enumerate(videos):
        written.append(write_mp4(out / "videos" / f"{i:04d}.mp4", video_grid(video[None], pad=0), cfg.fps))
    rank_zero_info(f"wrote {len(videos)} videos and a grid to {out}")
    return written


def _finish_wandb() -> None:
    """Close the wandb run so multirun jobs in one process each get their own run."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
