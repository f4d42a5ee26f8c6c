"""Hydra glue: OmegaConf resolvers and building keyed maps of callbacks and loggers."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf


def sweep_choices() -> list[str]:
    """The ``key=value`` choices this multirun job got for the keys its sweep preset sweeps over.

    They become wandb tags, which hold 64 characters at most: a path value is shortened to its file name.
    """
    hydra_cfg = HydraConfig.get()
    swept = set(hydra_cfg.sweeper.get("params") or {})
    choices = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    short = [c if len(c) <= 64 else f"{c.split('=', 1)[0]}={Path(c.split('=', 1)[1]).name}" for c in choices]
    return [c[:64] for c in short]


def register_resolvers() -> None:
    """Register the resolvers the configs use (``${floordiv:a,b}``, ``${sweep_choices:}``); idempotent."""
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))
    if not OmegaConf.has_resolver("sweep_choices"):
        OmegaConf.register_new_resolver("sweep_choices", sweep_choices)


def instantiate_map(cfg: DictConfig | None, what: str) -> list:
    """Instantiate every entry with a ``_target_`` of a keyed map (``callbacks:`` or ``logger:``)."""
    objects = []
    for name, entry in (cfg or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            rank_zero_info(f"Instantiating {what} {name} <{entry._target_}>")
            objects.append(hydra.utils.instantiate(entry))
    return objects


register_resolvers()
