"""Tests for backbones/autoencoders.py: the frozen pixel <-> latent maps, on a tiny random diffusers VAE."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from backbones.autoencoders import SD_VAE_ENV_VAR, DiffusersAutoencoderKL, IdentityAutoencoder
from tests.helpers.vae import TINY_SCALE, tiny_vae


def to_ldm_keys(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Rename a diffusers AutoencoderKL state dict to the original LDM single-file layout (SD .ckpt files)."""
    up = lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}"  # LDM numbers decoder levels from the bottom
    rules = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: up(m) + ".block."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: up(m) + ".upsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.", "mid.attn_1."),
        (r"attn_1\.to_out\.0\.", "attn_1.proj_out."),
        (r"attn_1\.to_([qkv])\.", r"attn_1.\1."),
        (r"attn_1\.group_norm\.", "attn_1.norm."),
        (r"conv_shortcut", "nin_shortcut"),
        (r"conv_norm_out", "norm_out"),
    ]
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if "attn_1" in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        converted[key] = value.contiguous()
    return converted


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder (config.json + safetensors) holding the tiny VAE."""
    folder = tmp_path_factory.mktemp("tiny_vae")
    tiny_vae().save_pretrained(folder)
    return folder


def pixels(b: int = 2, f: int = 3, size: int = 16) -> torch.Tensor:
    """A random pixel video (b, f, 3, size, size) in [-1, 1]."""
    torch.manual_seed(1)
    return torch.rand(b, f, 3, size, size) * 2 - 1


#################################################################################
#                               Identity                                        #
#################################################################################


def test_identity_round_trip_and_contract():
    ae = IdentityAutoencoder()
    x = pixels()
    z = ae.encode(x)
    assert torch.equal(z, x) and torch.equal(ae.decode(z), x)
    assert (ae.latent_channels, ae.downsample) == (3, 1)
    assert IdentityAutoencoder(latent_channels=1).encode(x[:, :, :1]).shape == (2, 3, 1, 16, 16)


def test_identity_validation():
    with pytest.raises(ValueError, match="downsample"):
        IdentityAutoencoder(downsample=8)
    with pytest.raises(ValueError, match="latent_channels"):
        IdentityAutoencoder(latent_channels=0)
    with pytest.raises(AssertionError, match="pixel channels"):
        IdentityAutoencoder(latent_channels=4).encode(pixels())
    with pytest.raises(AssertionError, match="frames before channels"):
        IdentityAutoencoder().encode(pixels()[0])


#################################################################################
#                             Diffusers AutoencoderKL                           #
#################################################################################


def test_kl_shapes_and_config_scaling_factor(vae_dir: Path):
    ae = DiffusersAutoencoderKL(str(vae_dir), latent_channels=4, downsample=2)
    assert ae.scaling_factor == TINY_SCALE
    z = ae.encode(pixels(size=16))
    assert z.shape == (2, 3, 4, 8, 8) and z.dtype == torch.float32
    assert ae.decode(z).shape == (2, 3, 3, 16, 16)


def test_kl_applies_scaling_factor_like_latte(vae_dir: Path):
    ae = DiffusersAutoencoderKL(str(vae_dir), latent_channels=4, downsample=2, sample_posterior=False)
    reference = tiny_vae()
    x = pixels(b=1, f=2)
    frames = x.flatten(0, 1)
    with torch.no_grad():
        expected_z = reference.encode(frames).latent_dist.mode() * TINY_SCALE
        z = ae.encode(x)
        expected_x = reference.decode(z.flatten(0, 1) / TINY_SCALE).sample
    torch.testing.assert_close(z.flatten(0, 1), expected_z)
    torch.testing.assert_close(ae.decode(z).flatten(0, 1), expected_x)


def test_kl_explicit_scaling_factor_overrides_config(vae_dir: Path):
    ae = DiffusersAutoencoderKL(str(vae_dir), 4, 2, scaling_factor=0.18215, sample_posterior=False)
    base = DiffusersAutoencoderKL(str(vae_dir), 4, 2, sample_posterior=False)
    x = pixels()
    assert ae.scaling_factor == 0.18215
    torch.testing.assert_close(ae.encode(x) / 0.18215, base.encode(x) / TINY_SCALE)


def test_kl_chunked_encode_equals_all_at_once(vae_dir: Path):
    chunked = DiffusersAutoencoderKL(str(vae_dir), 4, 2, chunk_size=3, sample_posterior=False)
    whole = DiffusersAutoencoderKL(str(vae_dir), 4, 2, chunk_size=64, sample_posterior=False)
    x = pixels(b=2, f=4)  # 8 frames -> chunks of 3, 3, 2
    z = chunked.encode(x)
    torch.testing.assert_close(z, whole.encode(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.decode(z), whole.decode(z), rtol=1e-5, atol=1e-6)


def test_kl_sample_vs_mode(vae_dir: Path):
    sampling = DiffusersAutoencoderKL(str(vae_dir), 4, 2, sample_posterior=True)
    mode = DiffusersAutoencoderKL(str(vae_dir), 4, 2, sample_posterior=False)
    x = pixels()
    z_mode = mode.encode(x)
    torch.testing.assert_close(mode.encode(x), z_mode, rtol=0, atol=0)  # the mode is deterministic
    z1 = sampling.encode(x, generator=torch.Generator().manual_seed(7))
    z2 = sampling.encode(x, generator=torch.Generator().manual_seed(7))
    z3 = sampling.encode(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(z1, z2), "the same generator seed must give the same posterior sample"
    assert not torch.equal(z1, z3) and not torch.allclose(z1, z_mode), "samples must be stochastic"
    assert (z1 - z_mode).abs().mean() < z_mode.abs().mean() * 10, "samples must stay near the posterior mode"


def test_kl_is_frozen_and_stays_eval(vae_dir: Path):
    ae = DiffusersAutoencoderKL(str(vae_dir), 4, 2)
    assert not any(p.requires_grad for p in ae.parameters())
    assert sum(p.numel() for p in ae.parameters()) > 0, "the VAE is a registered submodule (moves with .to())"
    parent = nn.ModuleDict({"ae": ae, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not ae.training
    assert not any(m.training for m in ae.modules())
    x = pixels().requires_grad_(True)
    assert not ae.encode(x).requires_grad


def test_kl_torch_dtype(vae_dir: Path):
    ae = DiffusersAutoencoderKL(str(vae_dir), 4, 2, torch_dtype="bfloat16", sample_posterior=False)
    assert ae.dtype == torch.bfloat16
    z = ae.encode(pixels())
    assert z.dtype == torch.float32, "outputs keep the caller's dtype"
    with pytest.raises(ValueError, match="torch_dtype"):
        DiffusersAutoencoderKL(str(vae_dir), 4, 2, torch_dtype="half")


def test_kl_subfolder(tmp_path: Path):
    tiny_vae().save_pretrained(tmp_path / "vae")
    ae = DiffusersAutoencoderKL(str(tmp_path), 4, 2, subfolder="vae")
    assert ae.encode(pixels()).shape == (2, 3, 4, 8, 8)
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiffusersAutoencoderKL(str(tmp_path), 4, 2)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt", ".pt"])
def test_kl_single_ldm_file(tmp_path: Path, vae_dir: Path, suffix: str):
    reference = DiffusersAutoencoderKL(str(vae_dir), 4, 2, sample_posterior=False)
    weights = to_ldm_keys(tiny_vae().state_dict(), num_levels=2)
    file = tmp_path / f"vae{suffix}"
    if suffix == ".safetensors":
        save_file(weights, file)
    else:
        torch.save({"state_dict": weights}, file)
    with pytest.raises(FileNotFoundError, match="single_file_config"):
        DiffusersAutoencoderKL(str(file), 4, 2)
    ae = DiffusersAutoencoderKL(str(file), 4, 2, sample_posterior=False, single_file_config=str(vae_dir))
    assert ae.scaling_factor == TINY_SCALE
    x = pixels()
    torch.testing.assert_close(ae.encode(x), reference.encode(x))


def test_kl_missing_path_explains_how_to_get_the_vae(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(SD_VAE_ENV_VAR, raising=False)
    missing = tmp_path / "no_such_vae"
    with pytest.raises(FileNotFoundError) as error:
        DiffusersAutoencoderKL(str(missing))
    assert str(missing) in str(error.value) and "sd-vae" in str(error.value)
    with pytest.raises(FileNotFoundError, match=SD_VAE_ENV_VAR):
        DiffusersAutoencoderKL(None)


def test_kl_path_from_environment(tmp_path: Path, vae_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(SD_VAE_ENV_VAR, str(vae_dir))
    assert DiffusersAutoencoderKL(None, latent_channels=4, downsample=2).path == vae_dir
    missing = tmp_path / "not_downloaded"
    assert DiffusersAutoencoderKL(str(missing), 4, 2).path == vae_dir, "config path, then env var"
    monkeypatch.setenv(SD_VAE_ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="not_downloaded.*gone"):
        DiffusersAutoencoderKL(str(missing), 4, 2)


def test_kl_mismatched_config_names_the_argument(vae_dir: Path):
    with pytest.raises(ValueError, match="latent_channels=16"):
        DiffusersAutoencoderKL(str(vae_dir), latent_channels=16, downsample=2)
    with pytest.raises(ValueError, match="downsample=8"):
        DiffusersAutoencoderKL(str(vae_dir), latent_channels=4, downsample=8)
    with pytest.raises(ValueError, match="chunk_size"):
        DiffusersAutoencoderKL(str(vae_dir), 4, 2, chunk_size=0)


def test_kl_rejects_bad_layout(vae_dir: Path):
    ae = DiffusersAutoencoderKL(str(vae_dir), 4, 2)
    with pytest.raises(AssertionError, match="frames before channels"):
        ae.encode(pixels()[0])
    with pytest.raises(AssertionError, match="pixel channels"):
        ae.encode(pixels(f=4).transpose(1, 2))  # b c f h w by mistake
    with pytest.raises(AssertionError, match="divisible"):
        ae.encode(pixels(size=15))
    with pytest.raises(AssertionError, match="latent_channels"):
        ae.decode(torch.zeros(1, 2, 3, 8, 8))
