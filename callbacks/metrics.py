"""FVD / FID / KID / IS during training: generate videos with the EMA weights, compare with real statistics.

Every `every_n_steps` optimizer steps (and/or after each validation) every rank generates its share of
`num_videos` videos with `module.sample` (EMA weights; `sampler` may be a faster one than the module's), the
metrics sync across ranks, and the values go to every logger as `{prefix}/{name}` (`val/fvd`, `val/fid`,
`val/kid_x1000`, `val/is`, plus `_std` where there is one). The sampler is named in a second copy of each
value, `{prefix}/{name}_{sampler}` (e.g. `val/fvd_ddim50-eta0.0`), so numbers from different samplers never
mix on one curve. Each evaluation also writes `dirpath/step_XXXXXXX.json` with the values, the sampler, the
counts and the sha256 of every detector file; the same facts go to the loggers' hyperparameters once per fit.
"""

import json
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from diffusion import SamplerBase
from metrics import MetricSuite, RealVideos, update_with_samples
from utils.distributed import is_sharded


class GenerationMetrics(Callback):
    """Periodically compute the configured video metrics of the module's samples against real data."""

    def __init__(
        self,
        suite: MetricSuite,
        real: RealVideos,
        every_n_steps: int | None = 10_000,
        at_validation_end: bool = False,
        num_videos: int = 256,
        batch_size: int = 8,
        sampler: SamplerBase | None = None,
        seed: int = 0,
        prefix: str = "val",
        dirpath: str | None = None,
        progress: bool = True,
        stream_frames: int | None = None,
    ):
        """
        suite: the metrics (conf/metrics); real: the real clips their references come from (cached).
        every_n_steps: evaluate at every multiple of this many optimizer steps (None: never by steps).
        at_validation_end: also evaluate after every validation loop (sanity checks excluded).
        num_videos: videos generated per evaluation, over all ranks (the paper protocol: 2048).
        sampler: None = the module's own; e.g. a 50-step DDIM for cheaper periodic numbers.
        seed: the same seed each time, so successive evaluations see the same initial noise.
        stream_frames: a causal one-step generator (AAPT: ``backbone``/``ema``, ``diffusion``,
            ``autoencoder``) streams this many frames per video from first frames of the training data, and
            the suite reads its views of them (e.g. FVD of the first and last 16: the drift); ``sampler``
            is then unused.
        """
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or null, got {every_n_steps}")
        if num_videos < 2 or batch_size < 1:
            raise ValueError(f"num_videos must be >= 2 and batch_size >= 1, got {num_videos}, {batch_size}")
        self.suite = suite
        self.real = real
        self.every_n_steps = every_n_steps
        self.at_validation_end = at_validation_end
        self.num_videos = num_videos
        self.batch_size = batch_size
        self.sampler = sampler
        self.seed = seed
        self.prefix = prefix
        self.dirpath = Path(dirpath) if dirpath else None
        self.progress = progress
        if stream_frames is not None and stream_frames < suite.num_frames:
            raise ValueError(
                f"stream_frames={stream_frames} is shorter than the metrics' {suite.num_frames} frames"
            )
        self.stream_frames = stream_frames
        self.references: dict[str, str | None] = {}
        self.history: list[dict] = []
        self._last_step = -1

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stream_frames is None:
            (self.sampler or pl_module.sampler).check(pl_module.diffusion)  # now, not at the first evaluation
        self.suite.to(pl_module.device)
        self.references = self.suite.prepare_reference(self.real, progress=self.progress)
        for logger in trainer.loggers:  # loggers are rank-zero only
            logger.log_hyperparams({"metrics": self.provenance(pl_module)})

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_validation_end and not trainer.sanity_checking and trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)

    def sampler_name(self, pl_module: LightningModule) -> str:
        """The name of the sampler the videos come from, e.g. "ddpm250", "ddim50-eta0.0" or "stream1440"."""
        if self.stream_frames is not None:
            return f"stream{self.stream_frames}"
        return (self.sampler or pl_module.sampler).name

    def sample_fn(self, trainer: Trainer, pl_module: LightningModule) -> Callable:
        """sample(n, generator) -> videos: the module's sampler, or streams of its generator's EMA."""
        if self.stream_frames is None:
            return lambda n, generator: pl_module.sample(n, generator=generator, sampler=self.sampler)
        from utils.stream import stream_sampler

        model = pl_module.ema if getattr(pl_module, "ema", None) is not None else pl_module.backbone
        clips = trainer.datamodule.build("train")
        suite, parts = self.suite, (pl_module.diffusion, pl_module.autoencoder)
        return stream_sampler(model, *parts, clips, self.stream_frames, suite.head, suite.tail)

    def provenance(self, pl_module: LightningModule) -> dict:
        """How the numbers are made: sampler, counts, detector files and sha256, reference cache files."""
        return {
            "sampler": self.sampler_name(pl_module),
            "num_videos": self.num_videos,
            "num_frames": self.suite.num_frames,
            "views": self.suite.views(),
            "detectors": self.suite.describe(),
            "references": self.references,
        }

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Generate (every rank its share), compute the synced metrics, log them; returns {name: value}."""
        step = self._last_step = trainer.global_step
        self.suite.reset()
        update_with_samples(
            self.suite,
            self.sample_fn(trainer, pl_module),
            self.num_videos,
            self.batch_size,
            seed=self.seed,
            progress=self.progress and trainer.is_global_zero,
            lockstep=is_sharded(pl_module),  # trainer=fsdp: every forward needs every rank
        )
        values = self.suite.compute()
        self.suite.reset()
        sampler = self.sampler_name(pl_module)
        logged = {f"{self.prefix}/{key}": value for key, value in values.items()}
        logged |= {f"{self.prefix}/{key}_{sampler}": value for key, value in values.items()}
        trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in logged.items()})
        record = {"step": step, "values": values, **self.provenance(pl_module)}
        self.history.append(record)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=step)
            if self.dirpath is not None:
                self.dirpath.mkdir(parents=True, exist_ok=True)
                (self.dirpath / f"step_{step:07d}.json").write_text(json.dumps(record, indent=2))
            shas = ", ".join(
                f"{name}: {d['file']} sha256 {d['sha256'][:12]}" for name, d in record["detectors"].items()
            )
            rank_zero_info(
                f"step {step}: "
                + ", ".join(f"{key}={value:.4f}" for key, value in values.items())
                + f" ({self.num_videos} videos, {sampler}; {shas})"
            )
        return values
