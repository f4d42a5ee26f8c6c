"""The frozen networks the metrics read videos with, each loaded from a registry file (`metrics.weights`).

Every detector takes framework videos, `b f c h w` (frames before channels) as float in [-1, 1] or uint8 in
[0, 255], converts them to uint8 with the reference rounding (`utils.video.to_uint8`: round half up of
127.5 x + 127.5, as StyleGAN-V and Latte), repeats grayscale to RGB, and returns one row per video
(I3D, C3D) or one row per frame (Inception). It runs without autocast and without TF32, as the reference
evaluates in full fp32.
"""

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from metrics.i3d import InceptionI3d, i3d_preprocess
from metrics.weights import WEIGHTS, checked_sha256, resolve_weights
from utils.files import load_file, reading
from utils.video import to_uint8

#################################################################################
#                                Shared plumbing                                #
#################################################################################


def videos_to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """`b f c h w` videos (float in [-1, 1] or uint8) -> uint8 `b f 3 h w` (grayscale repeated to RGB)."""
    assert videos.ndim == 5 and videos.shape[2] in (1, 3), (
        f"videos must be (b, f, c, h, w) with c = 1 or 3 (frames before channels), got {tuple(videos.shape)}"
    )
    frames = videos if videos.dtype == torch.uint8 else to_uint8(videos)  # (b, f, c, h, w)
    return frames.expand(-1, -1, 3, -1, -1)  # (b, f, 3, h, w)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """Run convolutions and matmuls in true fp32 (no TF32), restoring the previous settings afterwards."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def load_torchscript(path: Path, what: str) -> torch.jit.ScriptModule:
    """Load a TorchScript detector on the CPU in eval mode, without the TorchScript deprecation warning."""
    with warnings.catch_warnings(), reading(path, what):
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


class Detector(nn.Module):
    """Base class: a frozen network from registry file `weights_key`; forward(videos) -> (n, num_features)."""

    weights_key: str
    num_features: int
    per_frame: bool = False  # True: one feature row per frame; False: one per video

    def __init__(self, path: str | None = None, weights_dir: str | None = None):
        super().__init__()
        self.path = resolve_weights(self.weights_key, path, weights_dir)
        self.sha256 = checked_sha256(self.weights_key, self.path)
        self.what = WEIGHTS[self.weights_key].description  # what the file is, for errors naming it

    def describe(self) -> dict:
        """What identifies this detector's features: class, settings, file name and sha256 (not its path)."""
        return {
            "detector": type(self).__name__,
            "file": WEIGHTS[self.weights_key].filename,
            "sha256": self.sha256,
            **self.settings(),
        }

    def settings(self) -> dict:
        """Constructor settings that change the features (besides the weights file)."""
        return {}

    def extract(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (b, f, 3, h, w) -> features (n, num_features); implemented per detector."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Detector":
        """Stay in eval mode whatever is asked (BatchNorm statistics and dropout stay frozen)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """`b f c h w` videos (float in [-1, 1] or uint8) -> float32 features (n, num_features)."""
        frames = videos_to_uint8(videos)  # (b, f, 3, h, w)
        with torch.autocast(frames.device.type, enabled=False), full_fp32():
            features = self.extract(frames).float()  # (n, d)
        n = frames.shape[0] * frames.shape[1] if self.per_frame else frames.shape[0]
        assert features.shape == (n, self.num_features), (
            f"{type(self).__name__} ({self.path}) returned {tuple(features.shape)}, expected ({n}, "
            f"{self.num_features}): is this the right weights file?"
        )
        return features


#################################################################################
#                                 FVD detectors                                 #
#################################################################################


class I3DTorchScript(Detector):
    """StyleGAN-V's I3D TorchScript, called as StyleGAN-V/Latte call it: 400-d features per video."""

    weights_key = "i3d_torchscript"

    def __init__(self, path: str | None = None, weights_dir: str | None = None, num_features: int = 400):
        """num_features: 400 for the real file (the time-averaged Kinetics logits); stand-ins may differ."""
        super().__init__(path, weights_dir)
        self.num_features = num_features
        self.model = load_torchscript(self.path, self.what)

    def extract(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 2, 1, 3, 4).contiguous()  # (b, 3, f, h, w) uint8, the detector's layout
        return self.model(x, rescale=True, resize=True, return_features=True)  # (b, 400)


class I3DVideoGPT(Detector):
    """VideoGPT's PyTorch I3D (`i3d_pretrained_400.pt`): frames resized to 224 bilinearly, [-1, 1], logits.

    Preprocessing follows cd-fvd's `i3d` route (cdfvd/third_party/i3d/utils.py: direct half-pixel bilinear
    resize, 2 x / 255 - 1), not VideoGPT's own (videogpt/data.py, preprocess: a short-side resize and center
    crop, then [-0.5, 0.5]).
    """

    weights_key = "i3d_pretrained_400"
    num_features = 400

    def __init__(self, path: str | None = None, weights_dir: str | None = None, bn_eps: float = 1e-5):
        super().__init__(path, weights_dir)
        self.bn_eps = bn_eps
        self.model = InceptionI3d(num_classes=400, bn_eps=bn_eps).eval()
        with reading(self.path, self.what):  # tensors that do not fit: one line naming the file
            self.model.load_state_dict(load_file(self.path, self.what), strict=True)
        self.model.requires_grad_(False)

    def settings(self) -> dict:
        return {"bn_eps": self.bn_eps}

    def extract(self, frames: torch.Tensor) -> torch.Tensor:
        x = i3d_preprocess(frames.permute(0, 2, 1, 3, 4), rescale=True, resize=True)  # (b, 3, f, 224, 224)
        return self.model(x)  # (b, 400)


#################################################################################
#                            FID / KID and IS detectors                         #
#################################################################################


class InceptionV3(Detector):
    """torch-fidelity's InceptionV3 through torchmetrics: 2048-d pool features per frame (FID, KID)."""

    weights_key = "inception_v3"
    num_features = 2048
    per_frame = True

    def __init__(self, path: str | None = None, weights_dir: str | None = None, antialias: bool = False):
        """antialias=False: TF1-style bilinear resize to 299, which matches torch-fidelity and TF FID."""
        super().__init__(path, weights_dir)
        try:
            import torch_fidelity  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "FID and KID need torch-fidelity (torchmetrics' InceptionV3): pip install torch-fidelity"
            ) from error
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.antialias = antialias
        weights = io.BytesIO()  # torch-fidelity torch.loads its path with weights_only=False: hand it the
        torch.save(load_file(self.path, self.what), weights)  # tensors read here with weights_only=True
        weights.seek(0)
        with reading(self.path, self.what):
            self.model = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=weights,
                antialias=antialias,
            )

    def settings(self) -> dict:
        return {"antialias": self.antialias}

    def extract(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames.flatten(0, 1))  # (b*f, 2048)


class C3DTorchScript(Detector):
    """StyleGAN-V's C3D TorchScript fine-tuned on UCF-101: class probabilities per 16-frame video (IS)."""

    weights_key = "c3d_ucf101"

    def __init__(
        self,
        path: str | None = None,
        weights_dir: str | None = None,
        num_classes: int = 101,
        softmax: bool = False,
    ):
        """softmax=False: the file returns probabilities (as StyleGAN-V uses it); True if it gave logits."""
        super().__init__(path, weights_dir)
        self.num_features = num_classes
        self.softmax = softmax
        self.model = load_torchscript(self.path, self.what)

    def settings(self) -> dict:
        return {"softmax": self.softmax}

    def extract(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.model(frames.permute(0, 2, 1, 3, 4).contiguous())  # (b, 101), uint8 (b, 3, f, h, w) in
        probs = out.float().softmax(dim=1) if self.softmax else out.float()  # (b, 101)
        total = probs.sum(dim=1)  # (b,)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-3), (
            f"{self.path} did not return probabilities (row sums {total.min():.4g}..{total.max():.4g}); "
            "set softmax=true if it returns logits"
        )
        return probs
