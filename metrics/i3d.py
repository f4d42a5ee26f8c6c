"""The Inception-v1 I3D video classifier (Kinetics-400) in the layout of VideoGPT's `i3d_pretrained_400.pt`.

Input: `b c t h w` float videos in [-1, 1] at 224x224 (channels before time: the detector's own layout, not
the framework's `b f c h w`; `i3d_preprocess` converts). Output: the 400 logits averaged over the remaining
time positions, the feature FVD uses. Every convolution and max pool pads "SAME" from the actual input size,
as the TensorFlow original does dynamically; BatchNorm eps defaults to 1e-5 as in the VideoGPT port (the
TensorFlow graph uses 1e-3). State-dict keys: `<Endpoint>.conv3d.weight`, `<Endpoint>.bn.*`,
`Mixed_XX.{b0,b1a,b1b,b2a,b2b,b3b}.*`, `logits.conv3d.{weight,bias}`.
"""

import torch
import torch.nn.functional as F
from torch import nn

#################################################################################
#                          "SAME" padded building blocks                        #
#################################################################################


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(front, back) zero padding of one dimension so that the output has ceil(size / stride) positions."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: list[int], stride: list[int]) -> torch.Tensor:
    """Zero-pad a (b, c, t, h, w) tensor "SAME" for a 3D kernel and stride."""
    t0, t1 = same_padding(x.shape[2], kernel[0], stride[0])
    h0, h1 = same_padding(x.shape[3], kernel[1], stride[1])
    w0, w1 = same_padding(x.shape[4], kernel[2], stride[2])
    return F.pad(x, [w0, w1, h0, h1, t0, t1])


class Unit3D(nn.Module):
    """SAME padding -> Conv3d -> BatchNorm3d -> ReLU (the logits unit: conv with bias only)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.kernel = list(kernel)
        self.stride = list(stride)
        self.activation = activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.01) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))  # (b, c_out, t', h', w')
        x = self.bn(x)  # (b, c_out, t', h', w')
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pool after SAME zero padding (harmless: its inputs are post-ReLU, so >= 0)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel = list(kernel)
        self.stride = list(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(
            pad_same(x, self.kernel, self.stride), self.kernel, self.stride
        )  # (b, c, t', h', w')


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3x3; 1x1->3x3x3; maxpool->1x1) concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int], bn_eps: float = 1e-5):
        """widths: output channels of [b0, b1a, b1b, b2a, b2b, b3b]."""
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = widths
        self.b0 = Unit3D(in_channels, c0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, c1a, bn_eps=bn_eps)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, c2a, bn_eps=bn_eps)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, c3b, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.b0(x)  # (b, c0, t, h, w)
        b1 = self.b1b(self.b1a(x))  # (b, c1b, t, h, w)
        b2 = self.b2b(self.b2a(x))  # (b, c2b, t, h, w)
        b3 = self.b3b(self.b3a(x))  # (b, c3b, t, h, w)
        return torch.cat([b0, b1, b2, b3], dim=1)  # (b, c0 + c1b + c2b + c3b, t, h, w)


#################################################################################
#                                    I3D                                        #
#################################################################################


class InceptionI3d(nn.Module):
    """I3D: Inception-v1 inflated to 3D; forward gives time-averaged class logits (b, num_classes)."""

    def __init__(
        self, num_classes: int = 400, in_channels: int = 3, bn_eps: float = 1e-5, dropout: float = 0.5
    ):
        super().__init__()
        e = bn_eps
        self.logits = Unit3D(1024, num_classes, batch_norm=False, activation=False, bias=True)
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), bn_eps=e)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=e)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=e)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(192, (64, 96, 128, 16, 32, 32), e)
        self.Mixed_3c = InceptionBlock(256, (128, 128, 192, 32, 96, 64), e)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(480, (192, 96, 208, 16, 48, 64), e)
        self.Mixed_4c = InceptionBlock(512, (160, 112, 224, 24, 64, 64), e)
        self.Mixed_4d = InceptionBlock(512, (128, 128, 256, 24, 64, 64), e)
        self.Mixed_4e = InceptionBlock(512, (112, 144, 288, 32, 64, 64), e)
        self.Mixed_4f = InceptionBlock(528, (256, 160, 320, 32, 128, 128), e)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(832, (256, 160, 320, 32, 128, 128), e)
        self.Mixed_5c = InceptionBlock(832, (384, 192, 384, 48, 128, 128), e)
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The Mixed_5c map: (b, 3, t, 224, 224) -> (b, 1024, t/8, 7, 7)."""
        x = self.Conv3d_1a_7x7(x)  # (b, 64, t/2, 112, 112)
        x = self.MaxPool3d_2a_3x3(x)  # (b, 64, t/2, 56, 56)
        x = self.Conv3d_2b_1x1(x)  # (b, 64, t/2, 56, 56)
        x = self.Conv3d_2c_3x3(x)  # (b, 192, t/2, 56, 56)
        x = self.MaxPool3d_3a_3x3(x)  # (b, 192, t/2, 28, 28)
        x = self.Mixed_3b(x)  # (b, 256, t/2, 28, 28)
        x = self.Mixed_3c(x)  # (b, 480, t/2, 28, 28)
        x = self.MaxPool3d_4a_3x3(x)  # (b, 480, t/4, 14, 14)
        x = self.Mixed_4b(x)  # (b, 512, t/4, 14, 14)
        x = self.Mixed_4c(x)  # (b, 512, t/4, 14, 14)
        x = self.Mixed_4d(x)  # (b, 512, t/4, 14, 14)
        x = self.Mixed_4e(x)  # (b, 528, t/4, 14, 14)
        x = self.Mixed_4f(x)  # (b, 832, t/4, 14, 14)
        x = self.MaxPool3d_5a_2x2(x)  # (b, 832, t/8, 7, 7)
        x = self.Mixed_5b(x)  # (b, 832, t/8, 7, 7)
        return self.Mixed_5c(x)  # (b, 1024, t/8, 7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged logits of (b, 3, t, 224, 224) videos in [-1, 1]: (b, num_classes)."""
        x = self.avg_pool(self.features(x))  # (b, 1024, t/8 - 1, 1, 1)
        x = self.logits(self.dropout(x))  # (b, num_classes, t/8 - 1, 1, 1)
        assert x.shape[3] == 1 and x.shape[4] == 1, (
            f"I3D needs 224x224 frames (resize first); its logits map is {x.shape[3]}x{x.shape[4]}, not 1x1"
        )
        return x.flatten(2).mean(dim=2)  # (b, num_classes)


#################################################################################
#               Preprocessing and the StyleGAN-V TorchScript call               #
#################################################################################


def i3d_preprocess(x: torch.Tensor, rescale: bool, resize: bool, size: int = 224) -> torch.Tensor:
    """(b, c, t, h, w) input -> float: rescale uint8 [0, 255] to [-1, 1]; resize frames bilinearly to 224."""
    x = x.float()
    if rescale:
        x = x / 255.0 * 2.0 - 1.0  # (b, c, t, h, w) in [-1, 1]
    if resize:
        shape = [x.shape[2], size, size]  # time kept: trilinear at scale 1 in t = bilinear per frame
        x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)  # (b, c, t, 224, 224)
    return x


class I3DTorchScriptLike(nn.Module):
    """An I3D behind the StyleGAN-V TorchScript signature: forward(x, rescale, resize, return_features).

    The real `i3d_torchscript.pt` cannot be rebuilt here (its weights and exact resize are unknown); this
    module, scripted with random weights, stands in for it in tests and in `bench/fvd_speed.py`.
    """

    def __init__(self, i3d: InceptionI3d):
        super().__init__()
        self.i3d = i3d

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        logits = self.i3d(i3d_preprocess(x, rescale, resize))  # (b, 400)
        return logits if return_features else logits.softmax(dim=1)  # (b, 400)
