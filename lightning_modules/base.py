"""VideoModule: what every method's LightningModule shares, so that a method only says how it trains.

- an EMA copy of one submodule (``add_ema``), updated after each optimizer step in automatic optimization;
  a module with manual optimization (``automatic_optimization = False``, e.g. a generator and a critic)
  calls ``update_ema()`` itself, right after its generator's ``step()``, and steps its critic under
  ``uncounted(optimizer)``, so that one batch is one ``global_step`` as in automatic optimization;
- the NaN guard (``check_finite``): a non-finite loss stops the run before any checkpoint holds the weights it
  updated, naming the step and the last good checkpoint, without making the host wait for the GPU;
  (nor do the modules' per-step logs: none is ``prog_bar=True``, whose values Lightning reads on the host
  after every step, so the loss is in the loggers and ``loss_curve.png``, not in the progress bar);
- per-rank reseeding at fit start; every rank's RNG states saved in each checkpoint and restored on resume;
- the frozen submodules named in ``unsaved`` (the autoencoder, which has its own weights file) are left out
  of checkpoints and filled back in from the module when one is loaded;
- the ``sample(num_videos, y, generator, sampler, use_ema) -> (b f c h w) in [-1, 1]`` protocol that the
  video and metrics callbacks, sample.py and evaluate.py call.

A subclass that overrides a hook of this file (``on_fit_start``, ``optimizer_step``, ``on_train_start``,
``on_train_end``, ``on_save_checkpoint``, ``on_load_checkpoint``) calls ``super()`` in it.
"""

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from utils.distributed import is_sharded
from utils.rng import gather_rng_states, set_rng_states
from utils.strategies import ShardedDataParallel, shard_module


@contextlib.contextmanager
def uncounted(optimizer) -> Iterator[None]:
    """Step a LightningOptimizer inside without counting it in ``global_step``: a critic's step.

    Lightning counts every manual ``step()`` of any optimizer in ``global_step``; a GAN module steps its
    discriminator under this, so one batch is one global step (max_steps = generator updates, and every
    step interval of the callbacks counts batches), and a resumed run restores the same count.
    """
    hooks = optimizer._on_before_step, optimizer._on_after_step  # what advances Lightning's step count
    optimizer._on_before_step = optimizer._on_after_step = lambda: None
    try:
        yield
    finally:
        optimizer._on_before_step, optimizer._on_after_step = hooks


def with_scheduler(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
):
    """``configure_optimizers``' answer: the optimizer, and ``lr_scheduler`` (if any) stepped each step."""
    if lr_scheduler is None:
        return optimizer
    scheduler = {"scheduler": lr_scheduler(optimizer), "interval": "step"}
    return {"optimizer": optimizer, "lr_scheduler": scheduler}


def on_host(scalar: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy of a device ``scalar`` and the event after which it holds the value: on a CUDA device, a
    page-locked buffer that the GPU fills when its queue gets there (the host does not wait); else a copy."""
    if scalar.device.type != "cuda":
        return scalar.cpu(), None
    host = torch.empty((), dtype=scalar.dtype, pin_memory=True)
    with torch.cuda.device(scalar.device):  # the copy and the event on the scalar's GPU's stream
        host.copy_(scalar, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
    return host, ready


class VideoModule(LightningModule):
    """Base of the framework's LightningModules: EMA, NaN guard, RNG streams, checkpoint rules, sampling."""

    unsaved: tuple[str, ...] = ("autoencoder",)  # frozen submodules that checkpoints leave out
    # trainer.strategy.param_dtype (bf16-gathered blocks) needs every forward outside training under autocast:
    # true where sampling runs the sharded networks through a Sampler, which autocasts them
    half_gathers_ok: bool = False

    def __init__(self, ema_decay: float = 0.9999):
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = ema_decay
        self.ema_of: str | None = None  # the name of the submodule that `self.ema` averages (add_ema)
        self._rng_states: list[dict] | None = None  # every rank's RNG states from the checkpoint resumed from
        self._unchecked: list[tuple] = []  # the NaN guard's losses not read yet: (name, step, value, ready)
        self._nonfinite: str | None = None  # what the NaN guard found ("train/loss is nan at step 3")

    def configure_model(self) -> None:
        """``trainer=fsdp``: shard the saved submodules over all ranks (``utils.strategies.shard_module``)."""
        strategy = self._trainer.strategy if self._trainer is not None else None  # None: called by hand
        if isinstance(strategy, ShardedDataParallel) and not is_sharded(self):
            mesh = self.device_mesh["data_parallel"]
            shard_module(
                self,
                mesh,
                skip=self.unsaved,
                reshard_after_forward=strategy.reshard_after_forward,
                param_dtype=strategy.param_dtype,
            )

    #############################################################################
    #                                    EMA                                    #
    #############################################################################

    def add_ema(self, name: str = "backbone") -> None:
        """Keep ``self.ema``, a frozen copy of the submodule ``name`` that ``update_ema`` averages."""
        self.ema_of = name
        self.ema = copy.deepcopy(self.get_submodule(name)).requires_grad_(False).eval()

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a fresh run seeds the EMA with weights loaded after __init__
            self.reset_ema()
        if self.global_rank > 0:  # important! one seed gave every rank the same init; now each rank draws
            torch.manual_seed(torch.initial_seed() + self.global_rank)  # its own t, noise, dropout (as Latte)

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer's step, then the EMA's: before any callback's on_train_batch_end, so a checkpoint
        written there holds the EMA of its own step. (Manual optimization never calls this hook.)"""
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * live, over every parameter (frozen embeddings included); under
        ``trainer=fsdp`` both are sharded alike, so each rank averages its own shard."""
        if self.ema_of is None:
            return
        ema = list(self.ema.parameters())
        live = [p.detach().to(e.dtype) for p, e in zip(self.get_submodule(self.ema_of).parameters(), ema)]
        torch._foreach_lerp_(ema, live, 1.0 - self.ema_decay)

    @torch.no_grad()
    def reset_ema(self) -> None:
        """ema <- the live weights (a fresh run, or new initial weights)."""
        if self.ema_of is not None:
            self.ema.load_state_dict(self.get_submodule(self.ema_of).state_dict())

    #############################################################################
    #                                 NaN guard                                 #
    #############################################################################

    def check_finite(self, loss: torch.Tensor, name: str = "train/loss") -> None:
        """Stop the run (FloatingPointError) on a non-finite ``loss``, naming its step and the last good
        checkpoint.

        important! It does not wait for the GPU to compute ``loss``: a wait drains the GPU's queue, and the
        GPU then idles while the host queues the next work (bench/RESULTS.md, "Host waits"). The loss is
        copied to the host when the GPU gets there, and read at this guard's first call after ``global_step``
        has moved on (before that step's optimizer step), before any checkpoint is written (on every rank:
        under DDP one rank's NaN reaches every rank's weights), and when training ends. So the run stops with
        the bad loss's own update applied in memory, and no checkpoint holds it: once found, every later save
        raises.
        """
        self.raise_if_nonfinite(before_step=self.global_step)
        self._unchecked.append((name, self.global_step, *on_host(loss.detach())))

    def raise_if_nonfinite(self, before_step: int | None = None, all_ranks: bool = False) -> None:
        """Read the losses that ``check_finite`` noted at steps before ``before_step`` (None: all of them);
        raise FloatingPointError if one was not finite, now or at any earlier call. ``all_ranks`` (every rank
        calls it): also if another rank's was not."""
        pending, self._unchecked = self._unchecked, []
        for name, step, value, ready in pending:
            if before_step is not None and step >= before_step:
                self._unchecked.append((name, step, value, ready))  # this step's: read at a later one
                continue
            if ready is not None:
                ready.synchronize()  # the GPU is usually past it: no wait, and never for the work after it
            if self._nonfinite is None and not math.isfinite(value.item()):
                self._nonfinite = f"{name} is {value.item()} at step {step}"
        trainer = self._trainer
        if all_ranks and trainer is not None and trainer.world_size > 1:
            if trainer.strategy.reduce_boolean_decision(self._nonfinite is not None, all=False):
                self._nonfinite = self._nonfinite or "a loss of another rank is not finite"
        if self._nonfinite is not None:
            ckpt = getattr(getattr(trainer, "checkpoint_callback", None), "last_model_path", "")
            raise FloatingPointError(
                f"{self._nonfinite}; stopped at step {self.global_step}, before any checkpoint held the "
                f"weights it updated. Last good checkpoint: {ckpt or 'none written yet'}"
            )

    def on_train_end(self) -> None:
        """The NaN guard's last losses."""
        self.raise_if_nonfinite(all_ranks=True)

    #############################################################################
    #   Checkpoints: no frozen autoencoder (it comes from its own weights file), every rank's RNG states  #
    #############################################################################

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave out the ``unsaved`` submodules; add every rank's RNG states (for an exact resume). Not the
        weights of a step whose loss was not finite, on any rank: the NaN guard raises first."""
        self.raise_if_nonfinite(all_ranks=True)
        prefixes = tuple(f"{name}." for name in self.unsaved)
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)
        }
        checkpoint["rng_states"] = gather_rng_states(self.device)  # one per rank, in rank order

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Fill in the ``unsaved`` submodules from this module; keep the RNG states for on_train_start.

        (A sharded checkpoint's weights are loaded by the strategy: it hands over no ``state_dict``.)
        """
        for name in self.unsaved if "state_dict" in checkpoint else ():
            submodule = getattr(self, name, None)
            if isinstance(submodule, nn.Module):
                checkpoint["state_dict"].update({f"{name}.{k}": v for k, v in submodule.state_dict().items()})
        self._rng_states = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        """Resuming: continue this rank's RNG streams, after the per-rank reseeding and the sanity check."""
        states, self._rng_states = self._rng_states, None
        if states is None:
            return
        if len(states) != self.trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds the RNG states of {len(states)} ranks, this run has "
                f"{self.trainer.world_size}: random draws start afresh (the resumed run is not exact)"
            )
            return
        set_rng_states(states[self.global_rank], self.device)

    #############################################################################
    #                                  Sampling                                 #
    #############################################################################

    def labels_for(
        self, y: torch.Tensor | None, num_classes: int, num_videos: int, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """``y``, else random classes (num_videos,) for a class-conditional model, else None."""
        if y is not None or num_classes == 0:
            return y
        return torch.randint(0, num_classes, (num_videos,), device=self.device, generator=generator)

    @torch.no_grad()
    def sample(
        self,
        num_videos: int,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: Callable | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Generate ``num_videos`` videos (b f c h w, pixels in [-1, 1]); random classes if ``y`` is None.

        ``sampler`` replaces the module's own for this call (None: the module's); ``use_ema``: sample with
        the EMA weights (False: the live ones).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")
