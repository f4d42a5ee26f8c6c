"""What ``train.py`` and ``sample.py`` run: build everything from the Hydra config, then fit or sample."""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from backbones import load_official_latte
from lightning_modules import VideoModule
from utils.config import instantiate_map
from utils.files import META, load_file
from utils.lifecycle import USER_ERRORS, ConfigError, SignalsBetweenSteps, stop_on_signals
from utils.strategies import aside
from utils.video import video_grid, write_gif, write_mp4

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured module on the configured data; resume from ``cfg.ckpt_path`` when it is set, or
    from the run folder's own newest checkpoint (a requeued SLURM job).

    The data is built first, so a wrong dataset root or too few clips fails before any logger (wandb) starts.
    SIGTERM or Ctrl+C saves the current step and exits with 128 + the signal (143, 130).
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    rank_zero_info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule = instantiate(cfg.data)
    try:
        datamodule.setup("fit")  # Lightning's own setup call reuses these datasets
    except USER_ERRORS as error:
        raise ConfigError(str(error), key="data") from error
    rank_zero_info(f"Instantiating module <{cfg.module._target_}>")
    module = instantiate(cfg.module)
    ckpt_path = cfg.get("ckpt_path") or checkpoint_in_run_folder(Path(cfg.paths.output_dir))
    if ckpt_path is None and cfg.get("init") is not None:  # starting weights; a resumed run has its own
        rank_zero_info(f"Initialising the module with <{cfg.init._target_}>")
        instantiate(cfg.init)(module)
    module.save_hyperparameters(
        {"config": OmegaConf.to_container(cfg, resolve=True)}
    )  # -> checkpoint + loggers
    callbacks = instantiate_map(cfg.get("callbacks"), "callback")
    loggers = instantiate_map(cfg.get("logger"), "logger")
    callbacks.append(SignalsBetweenSteps())  # every rank saves and stops at the same step
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    exit_code = 0
    try:
        with stop_on_signals() as stop:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        exit_code = stop.exit_code
    except BaseException:
        exit_code = 1
        raise
    finally:
        _finish_wandb(exit_code)
        torch._dynamo.reset()  # a multirun's next job compiles afresh: no pile-up to dynamo's recompile limit
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if trainer.is_global_zero:  # the run's result, one file per sweep job
        (Path(cfg.paths.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if exit_code:
        log.error(f"Stopped by signal {exit_code - 128} at step {trainer.global_step}; exit code {exit_code}")
        raise SystemExit(exit_code)
    return metrics


def checkpoint_in_run_folder(output_dir: Path) -> str | None:
    """What a run restarted in its own folder (a requeued SLURM job) continues from; None in a new folder.

    The newer of ``checkpoints/last.ckpt`` and Lightning's pre-emption checkpoints ``hpc_ckpt_<n>.ckpt``
    (written when SLURM sends the requeue signal, ``#SBATCH --signal=SIGUSR1@90``); files, or sharded
    checkpoint folders under ``trainer=fsdp``.
    """
    candidates = [*output_dir.glob("hpc_ckpt_*.ckpt"), output_dir / "checkpoints" / "last.ckpt"]
    candidates = [path if path.exists() else aside(path) for path in candidates]  # a crashed sharded swap
    written = {path: path / META if path.is_dir() else path for path in candidates}  # a folder: trainer=fsdp
    found = [path for path, file in written.items() if file.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: written[p].stat().st_mtime)
    rank_zero_info(f"Resuming from {newest}: this run folder already holds a checkpoint")
    return str(newest)


OUR_OR_OFFICIAL = "a checkpoint of this framework or an official Latte file"
TRAINED = ("backbone", "diffusion", "module")  # what a train.py checkpoint fixes: not overridable at sampling


def load_module(ckpt_path: str, cfg: DictConfig, overrides: Sequence[str] | None = None) -> VideoModule:
    """A module from one of our Lightning checkpoints or an official Latte release file (``{"ema": ...}``).

    A checkpoint of train.py is rebuilt from the config stored in it, as the module class that wrote it
    (``module._target_``: LatteDiffusion or any other VideoModule). ``cfg`` changes only what sampling may
    change: the sampler (always ``cfg.sampler``), the autoencoder (when set) and the noise prior (when
    given); overriding the trained model (``backbone``, ``diffusion``, ``module``) is an error. ``overrides``:
    the ``key=value`` command-line overrides, by default those of the running Hydra app (none outside one).
    """
    given = overridden_keys(overrides)
    checkpoint = load_file(ckpt_path, OUR_OR_OFFICIAL)
    hyper_parameters = checkpoint.get("hyper_parameters")
    if "state_dict" in checkpoint and isinstance(hyper_parameters, dict) and "config" in hyper_parameters:
        return _from_training_checkpoint(checkpoint, cfg, given)
    if "ema" in checkpoint or "model" in checkpoint:
        return _from_official_file(checkpoint, cfg, given)
    raise ValueError(
        f"{ckpt_path} is not {OUR_OR_OFFICIAL} (it holds {sorted(map(str, checkpoint))[:8]}: neither a "
        "'state_dict' with its run's 'hyper_parameters' nor an 'ema' or 'model' state dict)"
    )


def overridden_keys(overrides: Sequence[str] | None = None) -> list[str]:
    """The config keys given on the command line (``noise_prior``, ``backbone.variant``, ...).

    Only the command line tells a choice from a default: sample.yaml's defaults (``noise_prior: iid``, a
    Latte-XL/2 backbone) are not the checkpoint's, and a user may choose a default's value on purpose.
    """
    if overrides is None:
        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return [override.split("=", 1)[0].lstrip("+~").split("@", 1)[0] for override in overrides]


def _given(keys: list[str], group: str) -> list[str]:
    """The keys of ``keys`` that set ``group`` or one of its entries."""
    return [key for key in keys if key == group or key.startswith(f"{group}.")]


def _from_training_checkpoint(checkpoint: dict, cfg: DictConfig, given: list[str]) -> VideoModule:
    """Rebuild a train.py run's module from its stored config, with the sampling-time choices of ``cfg``."""
    fixed = [key for group in TRAINED for key in _given(given, group)]
    if fixed:
        raise ValueError(
            f"{fixed[0]} cannot be overridden when sampling a train.py checkpoint: the backbone, diffusion "
            "and module are the trained run's (respacing is sampler.num_steps; sampler.*, noise_prior and "
            "autoencoder may change)"
        )
    trained = OmegaConf.create(checkpoint["hyper_parameters"]["config"])
    if OmegaConf.select(trained, "module.backbone") is not None:  # runs of before init=: the weights are
        trained.module.backbone.pop("pretrained_dit", None)  # in the checkpoint, no DiT file is needed
    _warn_if_unguided(trained, cfg)
    choices = {"sampler": instantiate(cfg.sampler)}  # each one only where the trained module has that part
    if cfg.get("autoencoder") is not None:
        choices["autoencoder"] = instantiate(cfg.autoencoder)
    if _given(given, "noise_prior"):
        choices["noise_prior"] = instantiate(cfg.noise_prior)
    choices = {name: part for name, part in choices.items() if name in trained.module}
    module = instantiate(trained.module, **choices)
    if not isinstance(module, VideoModule):
        raise ValueError(f"module._target_={trained.module._target_} of this checkpoint is not a VideoModule")
    source = "given on the command line" if "noise_prior" in choices else "the trained run's"
    rank_zero_info(
        f"sampling {type(module).__name__} with {getattr(module, 'sampler', None)!r} and the noise prior "
        f"{getattr(module, 'noise_prior', None)!r} ({source})"
    )
    module.on_load_checkpoint(checkpoint)  # fills in the autoencoder weights, which checkpoints leave out
    module.load_state_dict(checkpoint["state_dict"])
    module.save_hyperparameters({"config": checkpoint["hyper_parameters"]["config"]})  # the run's, as trained
    return module


def _from_official_file(checkpoint: dict, cfg: DictConfig, given: list[str]) -> VideoModule:
    """A module around an official Latte backbone, described by ``cfg.official``, with ``cfg``'s parts."""
    if _given(given, "backbone"):
        raise ValueError(
            f"{_given(given, 'backbone')[0]} does not apply to an official Latte file: describe its backbone "
            "with official.* (model, input_size, num_frames, in_channels, learn_sigma, num_classes)"
        )
    if cfg.get("autoencoder") is None:
        raise ValueError(
            "an official Latte file holds no autoencoder: pass autoencoder=sd_vae autoencoder.path=<dir>"
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
    return instantiate(
        cfg.module,
        backbone=backbone,
        sampler=instantiate(cfg.sampler),
        autoencoder=instantiate(cfg.autoencoder),
    )


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
        rank_zero_info(f"sampled {start + n}/{cfg.num_videos} videos with {_sampler_name(module)}")
    videos = torch.cat(videos)
    grid = video_grid(videos)
    written = [write_mp4(out / "grid.mp4", grid, cfg.fps), write_gif(out / "grid.gif", grid, cfg.fps)]
    for i, video in enumerate(videos):
        written.append(write_mp4(out / "videos" / f"{i:04d}.mp4", video_grid(video[None], pad=0), cfg.fps))
    rank_zero_info(f"wrote {len(videos)} videos and a grid to {out}")
    return written


def _sampler_name(module: VideoModule) -> str:
    """The name of the module's sampler, e.g. "ddim25-eta0.0"; the class name if it has none (a GAN)."""
    sampler = getattr(module, "sampler", None)
    return sampler.name if sampler is not None else type(module).__name__


def _finish_wandb(exit_code: int = 0) -> None:
    """Close the wandb run (marked failed for a non-zero exit code), so that multirun jobs in one process each
    get their own run."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
