"""Logs how many videos the data pipeline had to leave out (unreadable, corrupt, too short)."""

from lightning.pytorch import Callback, LightningModule, Trainer


class DataHealth(Callback):
    """Logs ``data/skipped_videos`` from the datamodule at the start of training and after every epoch."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_skipped(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_skipped(trainer)

    def log_skipped(self, trainer: Trainer) -> None:
        """Send the count to every logger (rank 0); datamodules without the count are left alone."""
        skipped = getattr(trainer.datamodule, "skipped_videos", None)
        if skipped is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics({"data/skipped_videos": float(skipped)}, step=trainer.global_step)
