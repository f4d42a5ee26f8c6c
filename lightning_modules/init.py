"""Starting weights of a new run (``init=``): a step applied to the built module before training starts.

- ``init=scratch``: the backbone's own initialisation (``init: null``, nothing to apply);
- ``init=imagenet_dit``: the spatial parts of the backbone from an ImageNet DiT checkpoint (``init.path``);
- ``init=checkpoint``: the weights of any earlier run's checkpoint or of an official Latte file
  (``init.path``), the way a method chains its stages; the step count, optimizer and EMA history start
  afresh (continuing a run is ``ckpt_path=``, which takes precedence: a resumed run skips ``init``).

Each step loads into the submodule ``into`` (the backbone; a dotted path such as ``discriminator.trunk``)
and then sets the module's EMA to it. A module with two networks to start (AAPT's GAN: the generator from
one stage, the discriminator from another) takes several steps: ``init=aapt_gan`` (``in_order``).
"""

from collections.abc import Iterator, Mapping

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from backbones import fit_latte_weights, init_from_dit
from lightning_modules.base import VideoModule
from utils.files import load_file

SHOWN = 5  # keys listed per kind of mismatch


def from_imagenet_dit(module: VideoModule, path: str, into: str = "backbone") -> None:
    """Initialise the spatial parts of ``module.<into>`` (a Latte) from an ImageNet DiT file, and the EMA."""
    init_from_dit(_submodule(module, into), path)
    module.reset_ema()


def from_checkpoint(
    module: VideoModule,
    path: str | None = None,
    prefix: str = "ema.",
    strict: bool = True,
    into: str = "backbone",
    convert: bool = False,
) -> dict[str, list[str]]:
    """Load the tensors of ``path`` named ``<prefix><key>`` into ``module.<into>`` (and the EMA); a report.

    ``path``: a checkpoint of this framework (its ``state_dict``: ``ema.*``, ``backbone.*``, ...) or an
    official Latte file (``{"ema": ...}`` or ``{"model": ...}``). ``prefix``: which of its weights,
    ``ema.`` (default) or ``backbone.`` (the live weights) of a run, ``model.`` of an official file.
    ``strict``: every tensor of ``module.<into>`` must be in the file with its shape, and nothing else be
    under ``prefix``; with ``strict=False`` what fits is loaded and the rest is listed in a warning.
    ``convert``: first fit another Latte's weights to this one (``backbones.fit_latte_weights``: a
    bidirectional or official model into AAPT's causal next-frame Latte, whose extra input channels keep
    their init and whose learn_sigma output channels are dropped).
    Report: ``loaded``, ``missing``, ``unexpected`` and ``mismatched`` keys (of ``module.<into>``).
    """
    if path is None:  # init.path: ??? in conf/init/checkpoint.yaml
        raise ValueError(
            "init=checkpoint needs init.path=<a checkpoint of train.py or an official Latte file>"
        )
    target = _submodule(module, into)
    weights = read_weights(path, prefix)
    if convert:
        weights, changes = fit_latte_weights(weights, target)
        for change in changes:
            rank_zero_info(f"init.convert: {change}")
    own = target.state_dict()
    report = {
        "loaded": [k for k in own if k in weights and weights[k].shape == own[k].shape],
        "missing": [k for k in own if k not in weights],
        "unexpected": [k for k in weights if k not in own],
        "mismatched": [
            f"{k} (checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)})"
            for k in own
            if k in weights and weights[k].shape != own[k].shape
        ],
    }
    problems = "; ".join(
        _listed(report, kind) for kind in ("missing", "unexpected", "mismatched") if report[kind]
    )
    where = f"init.path={path} (init.prefix={prefix!r}) into {type(module).__name__}.{into}"
    if problems and (strict or not report["loaded"]):
        advice = f"pass init.strict=false to load the {len(report['loaded'])} tensors that fit"
        raise ValueError(f"{where} does not fit: {problems}; {advice if report['loaded'] else 'none fits'}")
    target.load_state_dict({k: weights[k] for k in report["loaded"]}, strict=False)
    module.reset_ema()
    if problems:
        rank_zero_warn(f"{where}: loaded {len(report['loaded'])} tensors, left out {problems}")
    rank_zero_info(f"{where}: loaded {len(report['loaded'])} of {len(own)} tensors")
    return report


def in_order(module: VideoModule, **steps) -> None:
    """Apply several init steps (each called with the module), in the order given: ``init=aapt_gan``."""
    for name, step in steps.items():
        if step is None:
            continue
        rank_zero_info(f"init step {name}")
        step(module)


def read_weights(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint or official file named ``<prefix><key>``, by ``key`` (no DDP ``module.``)."""
    checkpoint = load_file(path, "a checkpoint to initialise from (init.path)")
    tensors = dict(_flatten(checkpoint.get("state_dict", checkpoint)))
    selected = {
        k.removeprefix(prefix).removeprefix("module."): v for k, v in tensors.items() if k.startswith(prefix)
    }
    if not selected:
        found = ", ".join(sorted({k.split(".", 1)[0] + "." for k in tensors}))
        raise ValueError(
            f"init.path={path} holds no weights under init.prefix={prefix!r}; its prefixes: {found}"
        )
    return selected


def _listed(report: dict[str, list[str]], kind: str) -> str:
    """ "2 missing: a, b" (the first SHOWN keys of ``report[kind]``)."""
    keys = report[kind]
    return f"{len(keys)} {kind}: {', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''}"


def _flatten(node: Mapping, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every tensor in nested dicts: ``{"ema": {"x": t}}`` -> ``("ema.x", t)``."""
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, torch.Tensor):
            yield f"{prefix}{key}", value


def _submodule(module: VideoModule, into: str) -> nn.Module:
    """``module.<into>`` (a dotted path), or an error naming init.into and the module's submodules."""
    try:
        submodule = module.get_submodule(into)
    except AttributeError:
        submodule = None
    if not isinstance(submodule, nn.Module) or submodule is module:
        names = ", ".join(name for name, _ in module.named_children())
        raise ValueError(f"init.into={into!r} is no submodule of {type(module).__name__}; valid: {names}")
    return submodule
