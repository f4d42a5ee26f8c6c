"""Loggers: wandb that goes offline by itself when no credentials are configured."""

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_credentials_available() -> bool:
    """True when wandb can log online: WANDB_API_KEY or a ~/.netrc (or $NETRC) api.wandb.ai entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, online when credentials exist and offline into ``save_dir`` otherwise.

    ``offline=None`` (the default) decides from the credentials; an explicit ``WANDB_MODE`` in the environment
    always wins, as wandb itself reads it.
    """

    def __init__(self, offline: bool | None = None, save_dir: str = ".", **kwargs):
        if offline is None:
            offline = "WANDB_MODE" not in os.environ and not wandb_credentials_available()
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(offline=offline, save_dir=save_dir, **kwargs)
        if offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
            rank_zero_info(
                f"wandb: no credentials found, logging offline; upload later with "
                f"`wandb sync {Path(save_dir).resolve()}/wandb/offline-run-*`"
            )
