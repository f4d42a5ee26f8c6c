"""
Frozen autoencoders that map pixel videos to the latent space the backbones work in.

Every autoencoder here shares one contract:
    encode(x) -> z    x: (b, f, c, h, w) pixels in [-1, 1]; z: (b, f, latent_channels, h/ds, w/ds), scaled
    decode(z) -> x    the inverse, back to (b, f, c, h, w) pixels in [-1, 1] (not clamped)
and exposes `latent_channels` and `downsample` (ds) so the Hydra config can interpolate them into the backbone
(`backbone.in_channels: ${autoencoder.latent_channels}`).

Autoencoders are frozen: their parameters never require gradients, they stay in eval mode even when the parent
LightningModule calls `.train()`, and encode/decode run under `torch.no_grad()` (not `inference_mode`, whose
tensors could not be saved for the backbone's backward pass).

Latte's convention (official Latte code: train.py at its release commit 8ce59df): the SD kl-f8 VAE
(`sd-vae-ft-ema`) encodes each frame independently, z = latent_dist.sample() * 0.18215 in training, and
decodes z / 0.18215.
"""

import os
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

SD_VAE_SCALING_FACTOR = 0.18215
SD_VAE_ENV_VAR = "SD_VAE_PATH"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HOW_TO_GET_SD_VAE = (
    "Get the SD VAE on a machine with internet access with "
    "`huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir <dir>` "
    "(newer huggingface_hub: `hf download stabilityai/sd-vae-ft-ema --local-dir <dir>`), copy <dir> here, "
    f"then pass `autoencoder.path=<dir>` or set the environment variable {SD_VAE_ENV_VAR}=<dir>."
)


#################################################################################
#                              Shared Frozen Base                               #
#################################################################################


class FrozenAutoencoder(nn.Module):
    """Base class: a frozen pixel <-> latent map over `b f c h w` videos that always stays in eval mode."""

    def __init__(self, latent_channels: int, downsample: int):
        super().__init__()
        if not isinstance(latent_channels, int) or latent_channels < 1:
            raise ValueError(f"latent_channels must be a positive int, got {latent_channels!r}.")
        if not isinstance(downsample, int) or downsample < 1:
            raise ValueError(f"downsample must be a positive int, got {downsample!r}.")
        self.latent_channels = latent_channels
        self.downsample = downsample

    def train(self, mode: bool = True) -> "FrozenAutoencoder":
        """Ignore `mode`: a frozen autoencoder is always in eval mode (no dropout, fixed norms)."""
        return super().train(False)

    def check_pixels(self, x: torch.Tensor, in_channels: int) -> None:
        """Assert that `x` is a `b f c h w` pixel video this autoencoder can encode."""
        shape = tuple(x.shape)
        assert x.ndim == 5, f"Videos are (b, f, c, h, w) with frames before channels; got shape {shape}."
        assert shape[2] == in_channels, f"Expected {in_channels} pixel channels on dim 2 (b f c h w): {shape}"
        assert shape[3] % self.downsample == 0 and shape[4] % self.downsample == 0, (
            f"Height and width must be divisible by downsample={self.downsample} (the autoencoder's stride); "
            f"got shape {shape}."
        )

    def check_latents(self, z: torch.Tensor) -> None:
        """Assert that `z` is a `b f c h w` latent video with `latent_channels` channels."""
        shape = tuple(z.shape)
        assert z.ndim == 5, f"Latents are (b, f, c, h, w) with frames before channels; got shape {shape}."
        assert shape[2] == self.latent_channels, (
            f"Expected latent_channels={self.latent_channels} on dim 2 (b f c h w); got shape {shape}."
        )


#################################################################################
#                         Identity (Pixel-Space Diffusion)                      #
#################################################################################


class IdentityAutoencoder(FrozenAutoencoder):
    """No autoencoder: diffusion runs directly on pixels, so encode and decode return their input."""

    def __init__(self, latent_channels: int = 3, downsample: int = 1):
        super().__init__(latent_channels, downsample)
        if downsample != 1:
            raise ValueError(f"downsample must be 1 for IdentityAutoencoder (no resizing), got {downsample}.")

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the pixels themselves, (b, f, c, h, w); `generator` is accepted for interface parity."""
        self.check_pixels(x, self.latent_channels)
        return x.detach()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return the latents themselves, (b, f, c, h, w)."""
        self.check_latents(z)
        return z.detach()

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """``decode`` letting gradients through to ``z`` (a loss on decoded pixels): the latents."""
        self.check_latents(z)
        return z


#################################################################################
#                          Diffusers AutoencoderKL (SD VAE)                     #
#################################################################################


def resolve_vae_path(path: str | os.PathLike | None) -> Path:
    """Return the first existing VAE location of `path`, then $SD_VAE_PATH; else say where to get it."""
    candidates = {"autoencoder.path": path, f"${SD_VAE_ENV_VAR}": os.environ.get(SD_VAE_ENV_VAR) or None}
    looked = {source: Path(value).expanduser() for source, value in candidates.items() if value is not None}
    for location in looked.values():
        if location.exists():
            return location
    where = ", ".join(f"'{location}' (from {source})" for source, location in looked.items())
    if not looked:
        where = f"nowhere: autoencoder.path is null and ${SD_VAE_ENV_VAR} is not set"
    raise FileNotFoundError(f"VAE weights not found; looked at {where}. {HOW_TO_GET_SD_VAE}")


def load_autoencoder_kl(
    path: Path,
    subfolder: str | None,
    single_file_config: str | None,
    torch_dtype: torch.dtype | None,
) -> nn.Module:
    """Load a diffusers `AutoencoderKL` offline from a diffusers folder, or from one weights file + config."""
    from diffusers import AutoencoderKL

    if path.is_dir():
        folder = path / subfolder if subfolder else path
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"'{folder}' has no config.json: expected a diffusers AutoencoderKL folder "
                f"(config.json + diffusion_pytorch_model.safetensors). {HOW_TO_GET_SD_VAE}"
            )
        return AutoencoderKL.from_pretrained(
            str(path), subfolder=subfolder, local_files_only=True, torch_dtype=torch_dtype
        )
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ValueError(
            f"path '{path}' is neither a diffusers folder nor a weights file {SINGLE_FILE_SUFFIXES}."
        )
    if subfolder:
        raise ValueError(f"subfolder={subfolder!r} only applies to a folder path, but '{path}' is a file.")
    config_dir = Path(single_file_config).expanduser() if single_file_config else path.parent
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"Loading the single weights file '{path}' offline needs a diffusers config.json, but "
            f"'{config_dir}' has none. Put the VAE's config.json (e.g. from stabilityai/sd-vae-ft-ema) "
            "next to the file or pass "
            f"`autoencoder.single_file_config=<folder with config.json>`. {HOW_TO_GET_SD_VAE}"
        )
    return AutoencoderKL.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=torch_dtype
    )


class DiffusersAutoencoderKL(FrozenAutoencoder):
    """A frozen diffusers `AutoencoderKL` (e.g. the SD VAE) applied frame by frame to `b f c h w` videos."""

    def __init__(
        self,
        path: str | None = None,
        latent_channels: int = 4,
        downsample: int = 8,
        scaling_factor: float | None = None,
        chunk_size: int = 16,
        sample_posterior: bool = True,
        subfolder: str | None = None,
        single_file_config: str | None = None,
        torch_dtype: str | None = None,
    ):
        """
        path: a diffusers AutoencoderKL folder, or one `.safetensors`/`.ckpt`/`.pt` weights file (diffusers
            or original LDM key layout); None reads $SD_VAE_PATH. Nothing is ever downloaded.
        latent_channels, downsample: what the rest of the config assumes; checked against the loaded VAE.
        scaling_factor: None reads `config.scaling_factor` (0.18215 when absent); a number overrides it.
        chunk_size: frames per VAE call, taken from the flattened (b f) batch, to bound memory.
        sample_posterior: True draws z ~ q(z|x) as Latte's training does; False uses the posterior mode.
        subfolder: subfolder of a folder `path` holding the VAE (e.g. "vae" in a full pipeline folder).
        single_file_config: folder with the config.json for a single-file `path` (default: the file's folder).
        torch_dtype: "float32", "float16" or "bfloat16" for the VAE weights; None keeps the stored dtype.
        """
        super().__init__(latent_channels, downsample)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
        if scaling_factor is not None and not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0 (or null: the VAE config's), got {scaling_factor}.")
        if torch_dtype is not None and torch_dtype not in TORCH_DTYPES:
            raise ValueError(f"torch_dtype must be null or one of {list(TORCH_DTYPES)}, got {torch_dtype!r}.")
        self.path = resolve_vae_path(path)
        vae = load_autoencoder_kl(
            self.path, subfolder, single_file_config, TORCH_DTYPES[torch_dtype] if torch_dtype else None
        )
        config = vae.config
        if config.latent_channels != latent_channels:
            raise ValueError(
                f"latent_channels={latent_channels} does not match the VAE at '{self.path}' "
                f"(config.latent_channels={config.latent_channels})."
            )
        vae_downsample = 2 ** (len(config.block_out_channels) - 1)
        if vae_downsample != downsample:
            raise ValueError(
                f"downsample={downsample} does not match the VAE at '{self.path}': it downsamples by "
                f"2**(len(block_out_channels)-1) = {vae_downsample} "
                f"(block_out_channels={list(config.block_out_channels)})."
            )
        config_scale = getattr(config, "scaling_factor", None)
        self.scaling_factor = float(scaling_factor or config_scale or SD_VAE_SCALING_FACTOR)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.in_channels = int(config.in_channels)
        self.chunk_size = chunk_size
        self.sample_posterior = sample_posterior
        vae.requires_grad_(False)  # important! the VAE is frozen: the optimizer must never update it
        self.vae = vae.eval()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the VAE weights (inputs are cast to it)."""
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode pixels (b, f, c, h, w) in [-1, 1] into scaled latents (b, f, zc, h/ds, w/ds)."""
        self.check_pixels(x, self.in_channels)
        b = x.shape[0]
        frames = rearrange(x, "b f c h w -> (b f) c h w").to(self.dtype)  # (b*f, c, h, w)
        latents = []
        for chunk in frames.split(self.chunk_size):  # frames are independent: chunking only bounds memory
            posterior = self.vae.encode(chunk).latent_dist  # diagonal Gaussian over (n, zc, h/ds, w/ds)
            z = posterior.sample(generator=generator) if self.sample_posterior else posterior.mode()
            latents.append(z)  # (n, zc, h/ds, w/ds)
        z = (torch.cat(latents) - self.shift_factor) * self.scaling_factor  # (b*f, zc, h/ds, w/ds)
        return rearrange(z, "(b f) c h w -> b f c h w", b=b).to(x.dtype)  # (b, f, zc, h/ds, w/ds)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents (b, f, zc, h', w') into unclamped pixels (b, f, c, h'*ds, w'*ds)."""
        return self.decode_with_grad(z)

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """``decode`` that lets gradients through the frozen VAE to ``z`` (a loss on decoded pixels)."""
        self.check_latents(z)
        b = z.shape[0]
        latents = rearrange(z, "b f c h w -> (b f) c h w").to(self.dtype)  # (b*f, zc, h', w')
        latents = latents / self.scaling_factor + self.shift_factor  # (b*f, zc, h', w')
        frames = [self.vae.decode(chunk).sample for chunk in latents.split(self.chunk_size)]  # [(n, c, h, w)]
        x = torch.cat(frames)  # (b*f, c, h'*ds, w'*ds)
        return rearrange(x, "(b f) c h w -> b f c h w", b=b).to(z.dtype)  # (b, f, c, h'*ds, w'*ds)
