"""LPIPS as a differentiable loss: torchmetrics' network, its ImageNet backbone from the weight registry.

torchmetrics' `LearnedPerceptualImagePatchSimilarity` builds this network (`_NoTrainLpips`) and would fetch
the torchvision backbone from the internet; here the backbone is built empty and filled from the registry file
(`lpips_vgg`, `lpips_alex`: torchvision's ImageNet weights), and the linear heads are the LPIPS ones that
ship inside torchmetrics. Nothing is downloaded. ``pretrained=False`` keeps a random backbone (tests).
"""

import torch
from torch import nn

from metrics.weights import WEIGHTS, resolve_weights
from utils.files import load_file

LPIPS_NETS = ("vgg", "alex")


def lpips_network(
    net: str = "vgg", pretrained: bool = True, path: str | None = None, weights_dir: str | None = None
) -> nn.Module:
    """A frozen LPIPS network: ``lpips(a, b)`` -> (n, 1, 1, 1) for images (n, 3, h, w) in [-1, 1]."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips  # the network inside torchmetrics' LPIPS

    if net not in LPIPS_NETS:
        raise ValueError(f"perceptual net={net!r} must be one of {LPIPS_NETS}")
    lpips = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)  # heads from torchmetrics, backbone empty
    if pretrained:
        key = f"lpips_{net}"
        state = load_file(resolve_weights(key, path, weights_dir), WEIGHTS[key].description)
        with torch.no_grad():
            for stage in lpips.net.children():  # slice1..5 hold torchvision's `features` layers by index
                for index, layer in stage.named_children():
                    for name, tensor in layer.named_parameters():
                        tensor.copy_(state[f"features.{index}.{name}"])
    return lpips.requires_grad_(False).eval()
