"""Hydra glue: OmegaConf resolvers and building keyed maps of callbacks and loggers."""

import hydra
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf


def register_resolvers() -> None:
    """Register the resolvers the configs use (``${floordiv:a,b}``); safe to call twice."""
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))


def instantiate_map(cfg: DictConfig | None, what: str) -> list:
    """Instantiate every entry with a ``_target_`` of a keyed map (``callbacks:`` or ``logger:``)."""
    objects = []
    for name, entry in (cfg or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            rank_zero_info(f"Instantiating {what} {name} <{entry._target_}>")
            objects.append(hydra.utils.instantiate(entry))
    return objects


register_resolvers()
