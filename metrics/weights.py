"""Registry of the pretrained detector files the metrics use, and where each one is looked for.

A file is never downloaded. Its path comes from, in order: the config (`path=`), the file's environment
variable, then the cache folder (`weights_dir`, i.e. `${paths.weights_dir}`, default ~/.cache/latte-lab).
A missing file raises FileNotFoundError naming the file, every place looked at and the public URL. The
sha256 of the file actually used is reported with every result (`WeightFile.sha256` is checked when known).
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WEIGHTS_DIR = "~/.cache/latte-lab"
WEIGHTS_DIR_ENV_VAR = "LATTE_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: what it is, its expected file name, its public URL and its known hash."""

    key: str
    filename: str
    url: str
    env_var: str
    description: str
    sha256: str | None  # hex digest, checked when known; None = not known (the hash is logged anyway)
    folder: bool = False  # a folder of files (a Hugging Face model), not one file


WEIGHTS: dict[str, WeightFile] = {
    weight.key: weight
    for weight in (
        WeightFile(
            key="i3d_torchscript",
            filename="i3d_torchscript.pt",
            url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
            env_var="LATTE_I3D_TORCHSCRIPT",
            description="StyleGAN-V's I3D TorchScript (Kinetics-400), the FVD detector Latte reports with",
            # sha256 unknown; the copy committed in JunyaoHu/common_metrics_on_video_quality has git blob
            # id 93daef59c7ae0e9e8f76225521407e60cbafa6aa (`git hash-object i3d_torchscript.pt` checks one).
            sha256=None,
        ),
        WeightFile(
            key="i3d_pretrained_400",
            filename="i3d_pretrained_400.pt",
            url="https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt",
            env_var="LATTE_I3D_PRETRAINED_400",
            description="VideoGPT's PyTorch I3D state dict (Kinetics-400), the second FVD detector",
            # sha256 unknown; git blob id a867b87ac3a9097d200598b1d48a1b890d8ec744 in the same repository.
            sha256=None,
        ),
        WeightFile(
            key="inception_v3",
            filename="weights-inception-2015-12-05-6726825d.pth",
            url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            env_var="LATTE_INCEPTION_V3",
            description="torch-fidelity's InceptionV3 (TF 2015-12-05 graph) for FID and KID on frames",
            # sha256 unknown; by torch.hub's `name-<sha256 prefix>.ext` naming it should start with 6726825d
            # (not verified: neither torch-fidelity nor torchmetrics checks it).
            sha256=None,
        ),
        WeightFile(
            key="c3d_ucf101",
            filename="c3d_ucf101.pt",
            url="https://www.dropbox.com/s/jxpu7avzdc9n97q/c3d_ucf101.pt?dl=1",
            env_var="LATTE_C3D_UCF101",
            description="StyleGAN-V's C3D TorchScript fine-tuned on UCF-101, the IS detector",
            sha256=None,  # unknown
        ),
        WeightFile(
            key="lpips_vgg",
            filename="vgg16-397923af.pth",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            env_var="LATTE_LPIPS_VGG",
            description="torchvision's ImageNet VGG16, the backbone of LPIPS-VGG (APLA's perceptual loss)",
            # sha256 unknown; by torch.hub's `name-<sha256 prefix>.ext` naming it should start with 397923af.
            sha256=None,
        ),
        WeightFile(
            key="lpips_alex",
            filename="alexnet-owt-7be5be79.pth",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            env_var="LATTE_LPIPS_ALEX",
            description="torchvision's ImageNet AlexNet, the backbone of LPIPS-Alex",
            sha256=None,  # unknown; by torch.hub's naming it should start with 7be5be79
        ),
        WeightFile(
            key="clip_vit_l14",
            filename="clip-vit-large-patch14",
            url="https://huggingface.co/openai/clip-vit-large-patch14 (a folder: config.json, the tokenizer "
            "files and model.safetensors; `hf download openai/clip-vit-large-patch14 --local-dir <folder>`)",
            env_var="LATTE_CLIP_VIT_L14",
            description="OpenAI CLIP ViT-L/14 (Hugging Face layout) for frame consistency and text score",
            sha256=None,  # unknown; the sha256 of its model.safetensors is reported with every result
            folder=True,
        ),
    )
}


def resolve_weights(key: str, path: str | os.PathLike | None = None, weights_dir: str | None = None) -> Path:
    """The existing file for registry entry `key`: config path, then its environment variable, then cache."""
    if key not in WEIGHTS:
        raise KeyError(f"unknown weights {key!r}; the registry has {sorted(WEIGHTS)}")
    weight = WEIGHTS[key]
    env_path = os.environ.get(weight.env_var) or None
    cache_dir = weights_dir or os.environ.get(WEIGHTS_DIR_ENV_VAR) or DEFAULT_WEIGHTS_DIR
    looked = []
    for source, candidate in (
        ("config path", path),
        (f"${weight.env_var}", env_path),
        ("cache folder", Path(cache_dir) / weight.filename),
    ):
        if candidate is None:
            looked.append(f"{source}: not set")
            continue
        candidate = Path(candidate).expanduser()
        if candidate.is_dir() if weight.folder else candidate.is_file():
            return candidate
        looked.append(f"{source}: {candidate} (no such {'folder' if weight.folder else 'file'})")
    raise FileNotFoundError(
        f"{weight.description}: weights {'folder' if weight.folder else 'file'} '{weight.filename}' not "
        "found. Looked at, in order: "
        + "; ".join(looked)
        + f". Download it from {weight.url} and save it as {Path(cache_dir).expanduser() / weight.filename}, "
        f"or set ${weight.env_var} or the detector's `path` to it. Nothing is downloaded automatically."
    )


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (memoised per path, size and modification time)."""
    stat = Path(path).stat()
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[memo] = digest.hexdigest()
    return _SHA256_CACHE[memo]


def checked_sha256(key: str, path: str | os.PathLike) -> str:
    """sha256 of the file at `path`; raise if the registry knows entry `key`'s hash and it differs."""
    sha256 = file_sha256(path)
    expected = WEIGHTS[key].sha256
    if expected is not None and sha256 != expected:
        raise ValueError(
            f"'{path}' has sha256 {sha256}, but {WEIGHTS[key].filename} should have {expected}: "
            f"a different or corrupt file. Get it again from {WEIGHTS[key].url}"
        )
    return sha256
