"""Opt-in float8 training of the backbone blocks' largest matmuls (``module.float8=true``, torchao).

torchao's ``Float8Linear`` with tensorwise scaling replaces the blocks' ``qkv``, ``fc1`` and ``fc2`` Linears:
their forward and backward matmuls run in float8 (e4m3 operands, each tensor scaled by its absolute maximum,
dynamic per call), with the same fp32 master weights, optimizer and state-dict keys (checkpoints load either
way). The rest of the step keeps bf16 autocast. It needs float8 tensor cores (CUDA compute capability 8.9:
H100, L40 and later; fast under ``module.compile=true``) or the CPU, where torch's own scaled matmul runs it
(what the tests use). Token counts enter the backward's matmuls as inner dimensions: Latte's 256 tokens per
frame are float8-GEMM-sized; other counts may not be.
"""

import torch
from torch import nn

FLOAT8_LAYERS = ("qkv", "fc1", "fc2")  # the attention's fused projection and the MLP: most of a block's FLOPs


def convert_to_float8(backbone: nn.Module, device: torch.device | None = None) -> int:
    """Swap the ``FLOAT8_LAYERS`` Linears of ``backbone.blocks`` for torchao's Float8Linear, in place (again:
    nothing); how many it swapped. Matmul dims must be multiples of 16 (float8 GEMMs); other layers stay.
    ``device``: where it will train (default: where its weights are), checked for float8 support."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as error:
        raise ImportError('module.float8=true needs torchao: pip install -e ".[fp8]"') from error
    device = device or next(backbone.parameters()).device
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise RuntimeError(
            f"module.float8=true needs float8 tensor cores (compute capability 8.9+: H100, L40); "
            f"{torch.cuda.get_device_name(device)} has none. Leave module.float8=false"
        )
    swapped = []

    def chosen(module: nn.Module, name: str) -> bool:
        """An nn.Linear itself (not already float8) named qkv/fc1/fc2, float8-GEMM-sized."""
        pick = type(module) is nn.Linear and name.rsplit(".", 1)[-1] in FLOAT8_LAYERS
        pick = pick and module.in_features % 16 == 0 and module.out_features % 16 == 0
        swapped.extend([name] if pick else [])
        return pick

    config = Float8LinearConfig.from_recipe_name("tensorwise")
    convert_to_float8_training(backbone.blocks, config=config, module_filter_fn=chosen)
    return len(swapped)
