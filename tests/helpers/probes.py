"""Callbacks that record what a run saw, for tests that drive train.py through its config."""

from lightning.pytorch import Callback


class StartProbe(Callback):
    """Records the step count and EMA weights a run starts training from (in the class attribute ``seen``)."""

    seen: list[dict] = []

    def on_train_start(self, trainer, module) -> None:
        ema = {f"ema.{k}": v.detach().clone() for k, v in module.ema.state_dict().items()}
        StartProbe.seen.append({"step": trainer.global_step, "ema": ema})
