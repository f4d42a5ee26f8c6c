"""Our I3D: the VideoGPT state-dict layout, and parity with an independent functional re-computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from metrics import I3DVideoGPT, InceptionI3d
from metrics.i3d import same_padding
from metrics.standins import randomize_

ENDPOINTS = [  # (name, kind, kernel, stride) in network order
    ("Conv3d_1a_7x7", "unit", (7, 7, 7), (2, 2, 2)),
    ("MaxPool3d_2a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    ("Conv3d_2b_1x1", "unit", (1, 1, 1), (1, 1, 1)),
    ("Conv3d_2c_3x3", "unit", (3, 3, 3), (1, 1, 1)),
    ("MaxPool3d_3a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", "mixed", None, None),
    ("Mixed_3c", "mixed", None, None),
    ("MaxPool3d_4a_3x3", "pool", (3, 3, 3), (2, 2, 2)),
    *[(f"Mixed_4{c}", "mixed", None, None) for c in "bcdef"],
    ("MaxPool3d_5a_2x2", "pool", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", "mixed", None, None),
    ("Mixed_5c", "mixed", None, None),
]


def test_state_dict_has_the_videogpt_layout():
    state = InceptionI3d().state_dict()
    assert len(state) == 344
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(v.numel() for k, v in state.items() if not k.endswith(buffers)) == 12_697_264
    assert list(state)[:2] == ["logits.conv3d.weight", "logits.conv3d.bias"]
    shapes = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("logits.bn") for k in state), "the logits unit has no BatchNorm"


@pytest.mark.parametrize(
    "size,kernel,stride", [(224, 7, 2), (16, 7, 2), (112, 3, 2), (8, 3, 2), (4, 2, 2), (7, 3, 1)]
)
def test_same_padding_equals_tensorflow_static_padding_where_sizes_divide(size, kernel, stride):
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)  # TF "SAME", computed from the static shape
    assert same_padding(size, kernel, stride) == (total // 2, total - total // 2)


def tf_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """TF static "SAME" zero padding, written independently of metrics.i3d."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def functional_i3d(state: dict, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Time-averaged I3D logits computed from a state dict with torch.nn.functional only."""

    def unit(prefix: str, x: torch.Tensor) -> torch.Tensor:
        weight = state[f"{prefix}.conv3d.weight"]
        kernel = tuple(weight.shape[2:])
        stride = (2, 2, 2) if prefix == "Conv3d_1a_7x7" else (1, 1, 1)
        x = F.conv3d(tf_pad(x, kernel, stride), weight, stride=stride)
        bn = [state[f"{prefix}.bn.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        return F.relu(F.batch_norm(x, *bn, training=False, eps=eps))

    for name, kind, kernel, stride in ENDPOINTS:
        if kind == "unit":
            x = unit(name, x)
        elif kind == "pool":
            x = F.max_pool3d(tf_pad(x, kernel, stride), kernel, stride)
        else:
            pooled = F.max_pool3d(tf_pad(x, (3, 3, 3), (1, 1, 1)), 3, 1)
            branches = [
                unit(f"{name}.b0", x),
                unit(f"{name}.b1b", unit(f"{name}.b1a", x)),
                unit(f"{name}.b2b", unit(f"{name}.b2a", x)),
                unit(f"{name}.b3b", pooled),
            ]
            x = torch.cat(branches, dim=1)
    x = F.avg_pool3d(x, (2, 7, 7), stride=1)
    logits = F.conv3d(x, state["logits.conv3d.weight"], state["logits.conv3d.bias"])
    return logits.flatten(2).mean(dim=2)


def test_i3d_detector_equals_a_functional_recomputation_with_the_same_random_weights(tmp_path):
    model = randomize_(InceptionI3d(), seed=0).eval()
    weights = tmp_path / "i3d_pretrained_400.pt"
    torch.save(model.state_dict(), weights)
    detector = I3DVideoGPT(path=str(weights))  # loads the file strictly, as the real one
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1, 16, 3, 224, 224), generator=generator).float()  # (1, f, c, h, w)
    blobs = torch.rand(1, 3, 4, 7, 7, generator=generator) * 255  # a smooth video: upsampled coarse noise
    smooth = F.interpolate(blobs, size=(16, 224, 224), mode="trilinear").transpose(1, 2)  # (1, f, c, h, w)
    videos = torch.cat([noise, smooth]).round().to(torch.uint8)  # (2, 16, 3, 224, 224): b f c h w

    ours = detector(videos)  # (2, 400)
    x = videos.permute(0, 2, 1, 3, 4).float() / 255 * 2 - 1  # (b, c, t, h, w) in [-1, 1]; 224 needs no resize
    reference = functional_i3d(model.state_dict(), x)

    assert ours.shape == (2, 400)
    spread = (ours[0] - ours[1]).norm() / ours[0].norm()
    assert spread > 0.3 and ours.std() > 1, "random features must depend on the input, or parity is vacuous"
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
