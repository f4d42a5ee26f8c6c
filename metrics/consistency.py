"""APLA's metrics: frame consistency (CLIP image embeddings) and the CLIP text score, as torchmetrics metrics.

Definitions (the LOVEU-TGVE 2023 evaluation of the Tune-A-Video team, `scripts/run_eval.py`, which APLA's
one-shot protocol follows):

- frame consistency ("FCI"): the cosine similarity of the CLIP image embeddings of a video's frames, averaged
  over all ordered pairs of distinct frames (the similarity matrix with its diagonal zeroed, summed, divided
  by N(N-1)); reported with the mean over consecutive pairs (frame k, k+1), the other reading of "FCI";
- CLIP text score: 100 x the cosine between each frame's image embedding and the prompt's text embedding
  (CLIP's logit scale), averaged over frames and videos.

Both need no real data. The embedder is CLIP ViT-L/14 from the weight registry (`clip_vit_l14`), or, for
tests, a randomly initialised CLIP built from a `transformers.CLIPConfig` dict; `PixelFrames` (the frames'
own pixels, no weights) gives the same consistency statistics offline. Videos are `b f c h w` in [-1, 1].
"""

import torch
import torch.nn.functional as F
from torch import nn

from metrics.scores import VideoMetric
from metrics.weights import file_sha256, resolve_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#################################################################################
#                                Frame embedders                                #
#################################################################################


class FrameEmbedder(nn.Module):
    """Base class: videos (b, f, c, h, w) in [-1, 1] -> L2-normalised frame embeddings (b, f, d)."""

    per_frame = True

    def describe(self) -> dict:
        """What identifies the embeddings (the suite shares one embedder between metrics with equal ones)."""
        return {"detector": type(self).__name__, "file": "none", "sha256": "none: no weights"}

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings (n, d) of frames (n, c, h, w) in [-1, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (b, f, d) of the frames of ``videos`` (b, f, c, h, w)."""
        assert videos.ndim == 5 and videos.shape[2] in (1, 3), (
            f"videos must be (b, f, c, h, w) with c = 1 or 3 (frames first), got {tuple(videos.shape)}"
        )
        b, f = videos.shape[:2]
        frames = videos.flatten(0, 1).float().expand(-1, 3, -1, -1)  # (b*f, 3, h, w)
        return F.normalize(self.embed(frames).float(), dim=-1).unflatten(0, (b, f))  # (b, f, d)


class PixelFrames(FrameEmbedder):
    """The frames' own pixels, mean-centred per frame: weight-free consistency figures (offline)."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Flattened centred pixels (n, 3*h*w) of frames (n, 3, h, w)."""
        x = frames.flatten(1)  # (n, 3*h*w)
        return x - x.mean(dim=1, keepdim=True)  # (n, 3*h*w)


class CLIPFrames(FrameEmbedder):
    """CLIP's image (and prompt) embeddings: registry weights, or a random CLIP from a config dict (tests)."""

    weights_key = "clip_vit_l14"

    def __init__(self, path: str | None = None, weights_dir: str | None = None, config: dict | None = None):
        """path / weights_dir: where the registry looks for the folder; config: a random CLIP instead."""
        super().__init__()
        from transformers import CLIPConfig, CLIPModel  # here: importing transformers takes seconds

        if config is not None:
            self.model = CLIPModel(CLIPConfig(**config))
            self.tokenizer, self.file, self.sha256 = None, "random", "random"
        else:
            from transformers import AutoTokenizer

            folder = resolve_weights(self.weights_key, path, weights_dir)
            self.model = CLIPModel.from_pretrained(str(folder))
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            weights = [
                folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()
            ]
            self.file, self.sha256 = folder.name, file_sha256(weights[0]) if weights else "unknown"
        self.model.requires_grad_(False).eval()
        self.image_size = self.model.config.vision_config.image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def describe(self) -> dict:
        return {"detector": type(self).__name__, "file": self.file, "sha256": self.sha256}

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (n, d) of square frames (n, 3, h, w) in [-1, 1]."""
        x = F.interpolate(frames, size=self.image_size, mode="bicubic", align_corners=False)  # (n, 3, s, s)
        x = ((x + 1) / 2).clamp(0, 1)  # (n, 3, s, s) in [0, 1]
        return _pooled(self.model.get_image_features(pixel_values=(x - self.mean) / self.std))  # (n, d)

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """Unit-norm text embedding (d,) of ``prompt``."""
        if self.tokenizer is not None:
            ids = self.tokenizer([prompt], padding=True, return_tensors="pt").input_ids
        else:  # a random test CLIP has no tokenizer: the prompt's bytes as token ids
            vocab = self.model.config.text_config.vocab_size
            ids = torch.tensor([[b % vocab for b in prompt.encode()]])
        ids = ids.to(self.mean.device)  # (1, n)
        return F.normalize(_pooled(self.model.get_text_features(input_ids=ids)).float(), dim=-1)[0]  # (d,)


def _pooled(output) -> torch.Tensor:
    """The projected embeddings of a CLIP feature call (a tensor, or transformers 5's output object)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


#################################################################################
#                                    Metrics                                    #
#################################################################################


class FrameMetric(VideoMetric):
    """A per-video statistic of frame embeddings (b, f, d): no real-data reference."""

    needs_reference = False
    higher_is_better = True

    def update(self, videos: torch.Tensor | None = None, features: torch.Tensor | None = None) -> None:
        """Add videos (b, f, c, h, w), or their frame embeddings (b, f, d), to this rank's sums."""
        assert (videos is None) != (features is None), "pass either videos or features, not both"
        if features is None:
            features = self.detector(videos)  # (b, f, d)
        assert features.ndim == 3, f"{self.name}: embeddings must be (b, f, d), got {tuple(features.shape)}"
        self.accumulate(features)


class FrameConsistency(FrameMetric):
    """Mean cosine similarity of a video's frame embeddings: all ordered pairs of distinct frames, and
    consecutive pairs (``{name}`` and ``{name}_consecutive``)."""

    def __init__(self, detector: FrameEmbedder, name: str = "fci", **kwargs):
        super().__init__(detector, name, **kwargs)
        self.add_state("all_pairs", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("consecutive", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def accumulate(self, features: torch.Tensor) -> None:
        f = features.shape[1]
        assert f >= 2, f"{self.name}: frame consistency needs at least 2 frames, got {f}"
        x = features.double()  # (b, f, d), unit norm
        similarity = x @ x.transpose(1, 2)  # (b, f, f)
        off_diagonal = similarity.sum(dim=(1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(dim=1)  # (b,)
        self.all_pairs += (off_diagonal / (f * (f - 1))).sum()
        self.consecutive += similarity.diagonal(offset=1, dim1=1, dim2=2).mean(dim=1).sum()
        self.count += x.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            self.name: self.all_pairs / self.count,
            f"{self.name}_consecutive": self.consecutive / self.count,
        }


class CLIPTextScore(FrameMetric):
    """100 x cosine between each frame's CLIP embedding and the prompt's, averaged over frames and videos."""

    def __init__(self, detector: CLIPFrames, prompt: str, name: str = "clip_text", **kwargs):
        super().__init__(detector, name, **kwargs)
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{name} needs a text prompt (metrics.*.prompt), got {prompt!r}")
        self.prompt = prompt
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def accumulate(self, features: torch.Tensor) -> None:
        text = self.detector.text(self.prompt).to(features.device, torch.float64)  # (d,)
        self.total += 100.0 * (features.double() @ text).sum()  # frames x prompt, summed
        self.count += features.shape[0] * features.shape[1]

    def compute(self) -> dict[str, torch.Tensor]:
        return {self.name: self.total / self.count}
