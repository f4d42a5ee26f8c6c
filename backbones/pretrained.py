"""Initialise the spatial parts of a Latte from an ImageNet DiT checkpoint (the paper's "ImageNet init").

facebookresearch/DiT checkpoints use Latte's parameter names minus `temp_embed` (DiT's `models.py` and the
official Latte `models/latte.py` name their modules alike):
`pos_embed` (1, P, D), `x_embedder.proj`, `t_embedder.mlp`, a 1000-class `y_embedder.embedding_table`
(1001, D), `blocks.{i}.{attn,mlp,adaLN_modulation}` and `final_layer.{linear,adaLN_modulation}`.
Spatial parts load by name; temporal blocks and temporal attentions keep their own initialisation.
"""

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from utils.files import load_file

if TYPE_CHECKING:
    from backbones.latte import Latte

DIT_URL = "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"
LOADED_EVERYWHERE = ("pos_embed", "x_embedder.", "t_embedder.", "final_layer.")  # name prefixes
log = logging.getLogger(__name__)


def read_dit_state_dict(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The DiT state dict from a file or a dict: raw, or wrapped in "ema" (preferred) or "model"."""
    checkpoint = path_or_state_dict
    if isinstance(checkpoint, (str, os.PathLike)):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(
                f"no ImageNet DiT checkpoint at {str(path)!r} (pretrained_dit): download DiT-XL-2-256x256.pt "
                f"from {DIT_URL} and pass its path"
            )
        checkpoint = load_file(  # a DiT training checkpoint also holds its argparse args: refused
            path, "a DiT state dict (pretrained_dit; of a DiT training checkpoint, save its 'ema' alone)"
        )
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"a DiT checkpoint is a dict of tensors, got {type(checkpoint).__name__}")
    for wrapper in ("ema", "model"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def dit_targets(latte: "Latte") -> set[str]:
    """The Latte parameter names that a DiT tensor of the same name may initialise (the spatial parts)."""
    targets = set()
    for key in latte.state_dict():
        match = re.match(r"blocks\.(\d+)\.([^.]+)\.", key)
        if key.startswith(LOADED_EVERYWHERE):
            targets.add(key)
        elif match and match.group(2) in latte.blocks[int(match.group(1))].dit_parts:
            targets.add(key)
    return targets


# Tensors whose shape follows the input, patch and output settings, not the transformer: they may differ from
# the DiT's (another resolution, patch size, latent channels or learn_sigma) and then keep Latte's own init.
SHAPE_DEPENDENT = ("pos_embed", "x_embedder.", "final_layer.linear.")


def load_dit_init(latte: "Latte", path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> dict:
    """Copy an ImageNet DiT's weights into the spatial parts of `latte` (in place); return a report.

    Loaded by name: pos_embed, x_embedder (a 2-D patch kernel is inflated over the s frames of a
    compression tubelet and divided by s), t_embedder, final_layer, and per block what its class lists in
    `dit_parts` (spatial blocks whole; variant 3: attn, mlp and the shared adaLN; variant 4: the whole
    block, whose temporal heads thus start from DiT heads too). Temporal blocks, `attn_temp`, temp_embed
    and the frame upsampling keep their own init. Report: "loaded" (Latte keys set), "skipped" (key ->
    shapes, where DiT's shape differs, e.g. final_layer.linear when learn_sigma differs; a differing block
    or embedding shape is an error), "dropped" (DiT
    keys with no place here: always the 1000-class label table, temporal blocks, blocks beyond the depth,
    adaLN with all_tokens) and "kept" (Latte keys that keep their own init).
    """
    dit = read_dit_state_dict(path_or_state_dict)
    params = latte.state_dict(keep_vars=True)
    targets = dit_targets(latte)
    report: dict[str, Any] = {"loaded": [], "skipped": {}, "dropped": [], "kept": []}
    with torch.no_grad():
        for key, value in dit.items():
            if key not in targets:
                report["dropped"].append(key)
                continue
            target = params[key]
            if key == "x_embedder.proj.weight" and target.ndim == 5 and value.ndim == 4:
                frames = target.shape[2]  # a tubelet of s equal frames embeds like DiT's patch of one
                value = value.unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames
            if tuple(value.shape) != tuple(target.shape):
                report["skipped"][key] = f"checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}"
                continue
            target.copy_(value)
            report["loaded"].append(key)
    mismatched = [key for key in report["skipped"] if not key.startswith(SHAPE_DEPENDENT)]
    if mismatched:  # the transformer itself differs: loading the rest would be an init in name only
        raise ValueError(
            f"the DiT checkpoint does not fit this Latte: {mismatched[0]} is "
            f"{report['skipped'][mismatched[0]]} ({len(mismatched)} such tensors). Use a DiT of the same "
            f"size (hidden {latte.hidden_size}) as the backbone, e.g. DiT-XL/2 for Latte-XL/*"
        )
    report["kept"] = sorted(params.keys() - set(report["loaded"]))
    log.info(
        "DiT init: %d tensors loaded, %d skipped (shape), %d dropped, %d Latte tensors keep their init",
        len(report["loaded"]),
        len(report["skipped"]),
        len(report["dropped"]),
        len(report["kept"]),
    )
    return report
