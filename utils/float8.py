"""Opt-in float8 matmuls in the backbone blocks: in training (``module.float8=true``) and in sampling.

Training: torchao's ``Float8Linear`` with tensorwise scaling replaces the blocks' ``qkv``, ``fc1`` and
``fc2`` Linears: their forward and backward matmuls run in float8 (e4m3 operands, each tensor scaled by its
absolute maximum, dynamic per call), with the same fp32 master weights, optimizer and state-dict keys
(checkpoints load either way). The rest of the step keeps bf16 autocast. It needs float8 tensor cores (CUDA
compute capability 8.9: H100, L40 and later; fast under ``module.compile=true``) or the CPU, where torch's own
scaled matmul runs it (what the tests use). Token counts enter the backward's matmuls as inner dimensions:
Latte's 256 tokens per frame are float8-GEMM-sized; other counts may not be.

Sampling (``sampler.precision=float8``): ``quantize_for_inference`` replaces the same Linears of the
sampler's bf16 copy of the model with ``Float8InferenceLinear``, written here on ``torch._scaled_mm``: the
weight quantized once per output row, each token's activations per call (rowwise e4m3 scales, dynamic), bf16
out. It needs no torchao and runs on the CPU too (torch's own scaled matmul: what the tests use). It changes
the paper's numerics: each matmul operand keeps 3 mantissa bits.
"""

import torch
from torch import nn

FLOAT8_LAYERS = ("qkv", "fc1", "fc2")  # the attention's fused projection and the MLP: most of a block's FLOPs


def has_float8_tensor_cores(device: torch.device) -> bool:
    """Whether ``device`` runs float8 GEMMs: the CPU (emulated) or a CUDA GPU of compute capability 8.9+."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


def convert_to_float8(backbone: nn.Module, device: torch.device | None = None) -> int:
    """Swap the ``FLOAT8_LAYERS`` Linears of ``backbone.blocks`` for torchao's Float8Linear, in place (again:
    nothing); how many it swapped. Matmul dims must be multiples of 16 (float8 GEMMs); other layers stay.
    ``device``: where it will train (default: where its weights are), checked for float8 support."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as error:
        raise ImportError('module.float8=true needs torchao: pip install -e ".[fp8]"') from error
    device = device or next(backbone.parameters()).device
    if not has_float8_tensor_cores(device):
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


#################################################################################
#                  Float8 Inference: Rowwise Weights and Tokens                 #
#################################################################################

FLOAT8 = torch.float8_e4m3fn
FLOAT8_MAX = torch.finfo(FLOAT8).max  # 448: the largest e4m3 value a scaled row maps its absolute maximum to


def rowwise_float8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (m, k) in e4m3 and their fp32 scales (m, 1): x ~ x_f8 * scale, each row's amax at 448."""
    x = x.float()
    scale = (
        x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FLOAT8_MAX
    )  # (m, 1); an all-zero row: no NaN
    return (x / scale).clamp(-FLOAT8_MAX, FLOAT8_MAX).to(FLOAT8), scale  # (m, k), (m, 1)


class Float8InferenceLinear(nn.Module):
    """A frozen Linear run in float8: rowwise-scaled weight (once) and tokens (per call), bf16 out.

    Loading a state dict with a full-precision ``weight`` (the source model's, at every sampler call)
    quantizes it into the same buffers, so a compiled copy keeps its graph.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        assert linear.in_features % 16 == 0 and linear.out_features % 16 == 0, (
            "float8 GEMMs need multiples of 16"
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = self.quantize(linear.weight.detach())  # (n, k), (n, 1)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, n): _scaled_mm's rowwise layout
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    @staticmethod
    def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rowwise e4m3 of a weight (n, k) rounded to bf16 first: an fp32 source and its bf16 copy agree."""
        return rowwise_float8(weight.to(torch.bfloat16))  # (n, k), (n, 1)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        """Quantize a full-precision ``weight`` (a Linear's) as it loads; a float8 one loads as it is."""
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        if weight is not None and weight.dtype != FLOAT8:
            state_dict[prefix + "weight"], scale = self.quantize(weight)  # (n, k), (n, 1)
            state_dict[prefix + "weight_scale"] = scale.t().contiguous()  # (1, n)
        if bias is not None:  # bf16 as _scaled_mm's bf16 out needs, also where load_state_dict(assign=True)
            state_dict[prefix + "bias"] = bias.to(torch.bfloat16)  # (n,)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., k) -> (..., n) in bf16."""
        if x.numel() == 0:  # _scaled_mm refuses the scales (0, 1) of no tokens
            return x.new_zeros(*x.shape[:-1], self.out_features, dtype=torch.bfloat16)  # (..., n)
        tokens, scale = rowwise_float8(x.reshape(-1, self.in_features))  # (m, k) e4m3, (m, 1)
        out = torch._scaled_mm(
            tokens,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )  # (m, n)
        return out.reshape(*x.shape[:-1], self.out_features)  # (..., n)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def quantize_for_inference(model: nn.Module) -> int:
    """Swap every ``FLOAT8_LAYERS`` Linear of ``model`` (float8-GEMM-sized) for a Float8InferenceLinear, in
    place; how many it swapped. On CUDA it needs float8 tensor cores (compute capability 8.9+)."""
    device = next(model.parameters()).device
    if not has_float8_tensor_cores(device):
        raise RuntimeError(
            f"sampler.precision=float8 needs float8 tensor cores (compute capability 8.9+: H100, L40); "
            f"{torch.cuda.get_device_name(device)} has none. Use sampler.precision=bf16"
        )
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and name.rsplit(".", 1)[-1] in FLOAT8_LAYERS
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    ]
    for name, linear in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Float8InferenceLinear(linear))
    return len(chosen)
