"""Outside weights for a Latte: the official Latte release files, and ImageNet DiT for its spatial parts.

Official Latte files (github.com/Vchitect/Latte: ffs.pt, skytimelapse.pt, taichi-hd.pt, ucf101.pt) are a dict
with an "ema" (or "model") state dict in the layout of `backbones.latte.Latte` with its defaults:
`load_official_latte` builds the model and loads them strictly.

ImageNet DiT init (the Latte paper's learning strategy) is a step applied to a built model,
`init_from_dit(model, path)`. facebookresearch/DiT checkpoints use Latte's parameter names minus `temp_embed`
(DiT's `models.py` and the official Latte `models/latte.py` name their modules alike): `pos_embed` (1, P, D),
`x_embedder.proj`, `t_embedder.mlp`, a 1000-class `y_embedder.embedding_table` (1001, D),
`blocks.{i}.{attn,mlp,adaLN_modulation}` and `final_layer.{linear,adaLN_modulation}`. Spatial parts load
by name; temporal blocks and temporal attentions keep their own initialisation.
"""

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from backbones.latte import LATTE_SIZES, Latte
from backbones.layers import require
from utils.files import load_file

DIT_URL = "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"
LOADED_EVERYWHERE = ("pos_embed", "x_embedder.", "t_embedder.", "final_layer.")  # name prefixes
log = logging.getLogger(__name__)


#################################################################################
#                              Official Checkpoints                             #
#################################################################################


def _parse_model_name(model: str) -> tuple[str, int]:
    """Official model name like 'Latte-XL/2' or 'LatteIMG-XL/2' to (size, patch_size)."""
    names = {
        f"{prefix}-{size}/{patch}": (size, patch)
        for prefix in ("Latte", "LatteIMG")
        for size in LATTE_SIZES
        for patch in (2, 4, 8)
    }
    require(model in names, f"model={model!r} is not a Latte model name; valid names: {', '.join(names)}")
    return names[model]


def load_official_latte(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    model: str = "Latte-XL/2",
    input_size: int = 32,
    num_frames: int = 16,
    in_channels: int = 4,
    learn_sigma: bool = True,
    num_classes: int | None = None,
) -> Latte:
    """Build a Latte from an official release file (a dict with "ema" or "model") and load it strictly.

    `num_classes=None` infers it from `y_embedder.embedding_table.weight` (rows - 1), else 0.
    Returns the model in eval mode.
    """
    size, patch_size = _parse_model_name(model)
    checkpoint = path_or_state_dict
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_file(checkpoint, "an official Latte file")
    require(isinstance(checkpoint, Mapping), f"a Latte checkpoint is a dict, got {type(checkpoint).__name__}")
    found = list(checkpoint)
    require(
        "ema" in checkpoint or "model" in checkpoint,
        f"checkpoint has neither an 'ema' nor a 'model' entry; found {len(found)} keys: {found[:8]}",
    )
    state_dict = checkpoint["ema"] if "ema" in checkpoint else checkpoint["model"]
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if num_classes is None:
        table = state_dict.get("y_embedder.embedding_table.weight")
        num_classes = 0 if table is None else table.shape[0] - 1

    with torch.device("meta"):  # no random init: the strict load below sets every tensor
        latte = Latte(
            size=size,
            patch_size=patch_size,
            input_size=input_size,
            in_channels=in_channels,
            num_frames=num_frames,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
        )
    expected = {key: tuple(value.shape) for key, value in latte.state_dict().items()}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    require(
        not missing and not unexpected,
        f"checkpoint does not match {model} (num_classes={num_classes}): "
        f"missing keys {missing}, unexpected keys {unexpected}",
    )
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {shape}"
        for key, shape in expected.items()
        if tuple(state_dict[key].shape) != shape
    ]
    require(
        not mismatched,
        f"checkpoint shapes do not match {model} with input_size={input_size}, num_frames={num_frames}, "
        f"in_channels={in_channels}, learn_sigma={learn_sigma}, num_classes={num_classes}: {mismatched}",
    )
    latte.to_empty(device="cpu")  # every tensor is a Parameter in the state_dict, so none stays empty
    latte.load_state_dict(state_dict, strict=True)
    return latte.eval()


#################################################################################
#                                ImageNet DiT Init                              #
#################################################################################


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


def dit_targets(latte: Latte) -> set[str]:
    """The Latte parameter names that a DiT tensor of the same name may initialise (the spatial parts)."""
    targets = set()
    for key in latte.state_dict():
        match = re.match(r"blocks\.(\d+)\.([^.]+)\.", key)
        if key.startswith(LOADED_EVERYWHERE):
            targets.add(key)
        elif match and match.group(2) in latte.blocks[int(match.group(1))].dit_parts:
            targets.add(key)
    return targets


def fit_patch_embedding(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A DiT patch kernel (d, c, p, p) shaped for Latte's (d, c', [s,] p, p); unchanged if it cannot fit.

    A compression tubelet of s equal frames embeds like DiT's patch of one: the kernel is inflated over
    the s frames and divided by s. Input channels beyond DiT's c (c' > c, e.g. AAPT's previous frame)
    keep Latte's own init (`extra_channels_init`).
    """
    if target.ndim == 5 and value.ndim == 4:
        frames = target.shape[2]
        value = value.unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames  # (d, c, s, p, p)
    extra = target.shape[1] - value.shape[1]
    if extra > 0 and value.shape[2:] == target.shape[2:] and value.shape[0] == target.shape[0]:
        value = torch.cat([value.to(target.dtype), target[:, -extra:].detach()], dim=1)  # (d, c', [s,] p, p)
    return value


# Tensors whose shape follows the input, patch and output settings, not the transformer: they may differ from
# the DiT's (another resolution, patch size, latent channels or learn_sigma) and then keep Latte's own init.
SHAPE_DEPENDENT = ("pos_embed", "x_embedder.", "final_layer.linear.")


def init_from_dit(latte: Latte, path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> dict:
    """Copy an ImageNet DiT's weights into the spatial parts of a built `latte` (in place); return a report.

    Loaded by name: pos_embed, x_embedder (`fit_patch_embedding`), t_embedder, final_layer, and per block
    what its class lists in `dit_parts` (spatial blocks whole; variant 3: attn, mlp and the shared adaLN;
    variant 4: the whole block, whose temporal heads thus start from DiT heads too). Temporal blocks,
    `attn_temp`, temp_embed and the frame upsampling keep their own init. Report: "loaded" (Latte keys
    set), "skipped" (key -> shapes, where DiT's shape differs, e.g. final_layer.linear when learn_sigma
    differs; a differing block or embedding shape is an error), "dropped" (DiT keys with no place here:
    always the 1000-class label table, temporal blocks, blocks beyond the depth, adaLN with all_tokens)
    and "kept" (Latte keys that keep their own init).
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
            if key == "x_embedder.proj.weight":
                value = fit_patch_embedding(value, target)
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


#################################################################################
#                Another Latte's Weights into a Causal Next-Frame Latte           #
#################################################################################


def fit_latte_weights(
    weights: Mapping[str, torch.Tensor], latte: Latte
) -> tuple[dict[str, torch.Tensor], list]:
    """Another Latte's state dict (a bidirectional run, an official file) shaped for ``latte``; the changes.

    AAPT's diffusion adaptation turns a bidirectional model into a causal one whose input joins the noisy
    frame and the previous frame on channels (masks and RoPE have no weights). Here: the patch embedding's
    extra input channels keep ``latte``'s own init (`fit_patch_embedding`, per `extra_channels_init`); the
    final layer keeps the first ``out_channels`` of each patch position (learn_sigma's variance channels are
    dropped); `temp_embed` is dropped where ``latte`` has none (temporal_pos="rope"). Every other tensor is
    left as it is, for the caller's strict check.
    """
    own = latte.state_dict()
    fitted, changes = dict(weights), []
    if "x_embedder.proj.weight" in fitted and "x_embedder.proj.weight" in own:
        before = tuple(fitted["x_embedder.proj.weight"].shape)
        fitted["x_embedder.proj.weight"] = fit_patch_embedding(
            fitted["x_embedder.proj.weight"], own["x_embedder.proj.weight"]
        )
        if tuple(fitted["x_embedder.proj.weight"].shape) != before:
            changes.append(f"x_embedder.proj.weight {before}: extra channels {latte.extra_channels_init}")
    p2, c_out = latte.patch_size**2, latte.out_channels
    for key in ("final_layer.linear.weight", "final_layer.linear.bias"):
        value = fitted.get(key)
        if value is None or key not in own or value.shape[0] == own[key].shape[0] or value.shape[0] % p2:
            continue
        c_file = value.shape[0] // p2
        if c_file > c_out:  # rows ordered (p_row, p_col, channel): keep the first c_out channels of each
            kept = value.reshape(p2, c_file, *value.shape[1:])[:, :c_out]  # (p*p, c_out, [d])
            fitted[key] = kept.reshape(p2 * c_out, *value.shape[1:])  # (p*p*c_out, [d])
            changes.append(f"{key}: kept {c_out} of {c_file} output channels")
    if "temp_embed" in fitted and "temp_embed" not in own:
        del fitted["temp_embed"]
        changes.append("temp_embed dropped (the model has no absolute temporal embedding)")
    return fitted, changes
