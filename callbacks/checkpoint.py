"""ModelCheckpoint, plus the two steps a run must never lose: its last one and the one it was stopped at."""

import warnings

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class RunCheckpoint(ModelCheckpoint):
    """Periodic checkpoints (``every_n_train_steps``) as Lightning writes them, and also:

    - at the end of training, the final step, whatever the interval (``last.ckpt`` is always the last step);
    - when SIGTERM or Ctrl+C stops the run (``utils.lifecycle.stop_on_signals``), the step it stopped at.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args, **kwargs) -> None:
        with warnings.catch_warnings():  # manual optimization (GANs): the weights after the step are the ones
            warnings.filterwarnings("ignore", "Using ModelCheckpoint with manual optimization")  # to save
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_current_step(trainer)
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        try:
            if isinstance(exception, SIGTERMException):  # raised between optimizer steps: a consistent state
                path = self.save_current_step(trainer)
                rank_zero_info(
                    f"Stopped by a signal at step {trainer.global_step}; saved {path or 'nothing new'}"
                )
            super().on_exception(trainer, pl_module, exception)  # saves too with save_on_exception=true
        except FloatingPointError as refused:  # the NaN guard: these weights must not be saved; the error
            rank_zero_warn(f"not saved: {refused}")  # that stopped the run stays the one raised

    def save_current_step(self, trainer: Trainer) -> str | None:
        """Save this step (``step_*.ckpt`` + ``last.ckpt``) unless it is saved already; the path, or None."""
        if trainer.global_step == self._last_global_step_saved or trainer.sanity_checking:
            return None
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        return self.last_model_path or self.best_model_path
