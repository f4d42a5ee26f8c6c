"""Stand-ins for the pretrained detectors (their files are not here) and random initialisation for parity.

Tests and the CPU smoke run of `bench/fvd_speed.py` use these: tiny TorchScript modules with the exact call
signatures of `i3d_torchscript.pt` and `c3d_ucf101.pt`, a random-weight InceptionV3 file in torch-fidelity's
layout, and `randomize_`, which makes a random network's features depend on its input (He-normal weights and
random BatchNorm statistics; PyTorch's default init leaves Inception features nearly constant).
"""

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#################################################################################
#                             Random initialisation                             #
#################################################################################


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """He-normal conv/linear weights, small random biases, random BatchNorm affine and running statistics."""
    generator = torch.Generator().manual_seed(seed)

    def uniform_(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
            if layer.bias is not None:
                uniform_(layer.bias, -0.1, 0.1)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            uniform_(layer.weight, 0.5, 1.5)
            uniform_(layer.bias, -0.1, 0.1)
            uniform_(layer.running_mean, -0.1, 0.1)
            uniform_(layer.running_var, 0.5, 1.5)
    return module


def save_scripted(module: nn.Module, path: str | Path) -> Path:
    """torch.jit.script a module and save it (how the StyleGAN-V detector files were made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript as deprecated; the real files use it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(module.eval()).save(str(path))
    return path


#################################################################################
#                                Tiny detectors                                 #
#################################################################################


class TinyVideoDetector(nn.Module):
    """Stand-in for `i3d_torchscript.pt`: same signature; a fixed random linear map of pooled pixels.

    Linear in the pixels, so shifting every pixel by a constant shifts the features by a known vector.
    """

    def __init__(self, num_features: int = 400, pool: tuple[int, int, int] = (2, 4, 4), seed: int = 0):
        super().__init__()
        self.pool = list(pool)
        generator = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(3 * math.prod(pool), num_features)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=generator))
            self.proj.bias.copy_(torch.randn(num_features, generator=generator))

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        x = x.float()  # (b, 3, t, h, w)
        if rescale:
            x = x / 255.0 * 2.0 - 1.0
        pooled = F.adaptive_avg_pool3d(x, self.pool)  # (b, 3, *pool), any input size (resize is implied)
        features = self.proj(pooled.flatten(1))  # (b, num_features)
        return features if return_features else features.softmax(dim=1)


class TinyC3D(nn.Module):
    """Stand-in for `c3d_ucf101.pt`: uint8 (b, 3, t, h, w) in, class probabilities (b, num_classes) out."""

    def __init__(self, num_classes: int = 101, pool: tuple[int, int, int] = (2, 4, 4), seed: int = 0):
        super().__init__()
        self.pool = list(pool)
        generator = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(3 * math.prod(pool), num_classes)
        with torch.no_grad():
            self.proj.weight.copy_(4 * torch.randn(self.proj.weight.shape, generator=generator))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 * 2.0 - 1.0  # (b, 3, t, h, w) in [-1, 1]
        pooled = F.adaptive_avg_pool3d(x, self.pool)  # (b, 3, *pool)
        return self.proj(pooled.flatten(1)).softmax(dim=1)  # (b, num_classes)


#################################################################################
#                          Random-weight InceptionV3 file                       #
#################################################################################


def random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a random InceptionV3 state dict in torch-fidelity's layout (as the real .pth) to `path`."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        """torch-fidelity's network built without weights (its constructor insists on loading some)."""

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            return super().load_state_dict(state_dict, strict=bool(state_dict), assign=assign)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_name(f"{path.name}.empty")
    torch.save({}, empty)
    network = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    torch.save(randomize_(network, seed).state_dict(), path)
    return path
