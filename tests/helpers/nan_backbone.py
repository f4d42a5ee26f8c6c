"""A Latte whose output turns to NaN after a number of forward calls in training mode (for the NaN test)."""

import torch

from backbones import Latte


class NaNAfter(Latte):
    """Latte that returns NaN from its ``nan_after``-th training forward on."""

    def __init__(self, nan_after: int, **kwargs):
        super().__init__(**kwargs)
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x, t, y)
        if self.training:
            self.calls += 1
            if self.calls > self.nan_after:
                return out * float("nan")
        return out
