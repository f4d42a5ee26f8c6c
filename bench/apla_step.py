"""Time of one APLA fine-tuning step of Latte-XL/2 + VGT at 24 x 256^2 (random weights), and its peak memory.

The real ``APLAFinetune.training_step`` under a Lightning Trainer (manual optimization: a discriminator step
and a generator step per batch), on random SD-VAE-shaped latents (batch 1 x 24 x 4 x 32 x 32), bf16 autocast
on a GPU (``precision=bf16-mixed``). The trainable base parameters are Tune-A-Video's (query rows + temporal
attention). Rows: the plain one-shot fine-tune (no VGT, no discriminator, MSE only), then VGT-Pure and
VGT-Hyper with the 1x1 discriminator and the hyper-loss, whose LPIPS-VGG (random weights) runs on 2 frames
decoded through an SD-VAE-sized decoder (diffusers' AutoencoderKL with random weights when diffusers is
installed, else a stand-in upsampler that the table names). Prints one table; writes JSON with device, torch
and date.

    python bench/apla_step.py --json apla_step.json          # GPU
    python bench/apla_step.py --tiny --json /tmp/apla.json   # CPU smoke run (tiny sizes)
"""

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import Latte  # noqa: E402
from backbones.autoencoders import FrozenAutoencoder  # noqa: E402
from backbones.vgt import VGT, NoiseDiscriminator  # noqa: E402
from diffusion import GaussianDiffusion, IIDNoise, Sampler  # noqa: E402
from lightning_modules.apla import APLAFinetune, HyperLoss  # noqa: E402

TRAINABLE = [r"blocks\.\d+\.attn\.qkv\.(weight|bias):q", r"blocks\.{temporal}\.attn\."]
SIZES = {  # Latte size, latent size, frames, VGT width/depth/heads, SD-VAE-like decoder widths
    "full": dict(latte="XL", latent=32, frames=24, vgt=(320, 4, 8), decoder=(128, 256, 512, 512)),
    "tiny": dict(latte="tiny", latent=8, frames=4, vgt=(32, 2, 4), decoder=(8, 8, 16, 16)),
}


class RandomDecoder(FrozenAutoencoder):
    """A frozen random decoder of SD-VAE shape (latents / 8 -> pixels): diffusers' AutoencoderKL if there."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__(latent_channels=4, downsample=8)
        try:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL(
                block_out_channels=widths,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                latent_channels=4,
                norm_num_groups=min(32, widths[0]),
            )
            self.kind = "AutoencoderKL decoder (diffusers, random)"
        except ImportError:
            layers = [nn.Conv2d(4, widths[-1], 3, padding=1)]
            for width_in, width_out in zip(widths[::-1], widths[::-1][1:]):  # 3 doublings: 8x
                layers += [
                    nn.Upsample(scale_factor=2),
                    nn.Conv2d(width_in, width_out, 3, padding=1),
                    nn.SiLU(),
                ]
            self.vae = nn.Sequential(*layers[:-1], nn.Conv2d(widths[0], 3, 3, padding=1))
            self.kind = "stand-in upsampler (no diffusers)"
        self.vae.requires_grad_(False).eval()

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels (b, f, 3, 8h, 8w) of latents (b, f, 4, h, w), differentiable in z."""
        frames = z.flatten(0, 1) / 0.18215  # (b*f, 4, h, w)
        out = self.vae.decode(frames).sample if hasattr(self.vae, "decode") else self.vae(frames)
        return out.unflatten(0, z.shape[:2])  # (b, f, 3, 8h, 8w)


class Latents(Dataset):
    """Random latents {"latents": (f, 4, s, s)}, as the latent cache hands them."""

    def __init__(self, frames: int, size: int, items: int):
        self.shape, self.items = (frames, 4, size, size), items

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, index: int) -> dict:
        return {"latents": torch.randn(self.shape, generator=torch.Generator().manual_seed(index))}


class StepTimer(Callback):
    """Wall time of every training batch (device synchronised), peak memory after the warm-up steps."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self.start = warmup, [], 0.0

    def sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup and module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.sync(module)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.sync(module)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)


def build(size: dict, vgt: str | None, adversarial: bool, hyper: bool) -> APLAFinetune:
    """APLAFinetune on Latte (random weights) with the chosen VGT, discriminator and loss."""
    torch.manual_seed(0)
    latte = Latte(
        size=size["latte"], patch_size=2, input_size=size["latent"], in_channels=4, num_frames=size["frames"]
    )
    width, depth, heads = size["vgt"]
    lpips = lambda: _random_lpips()  # noqa: E731
    return APLAFinetune(
        backbone=latte,
        autoencoder=RandomDecoder(size["decoder"]),
        diffusion=GaussianDiffusion(),
        noise_prior=IIDNoise(),
        sampler=Sampler("ddim", num_steps=50),
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-5, weight_decay=0.0),
        loss=HyperLoss(w_l1=1.0 if hyper else 0.0, w_perc=0.1 if hyper else 0.0, perceptual=lpips),
        vgt=VGT(4, size["latent"], size["frames"], 2, width, depth, heads, variant=vgt) if vgt else None,
        trainable=TRAINABLE,
        discriminator=NoiseDiscriminator(4) if adversarial else None,
        disc_optimizer=(lambda params: torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999)))
        if adversarial
        else None,
        adv_warmup_steps=0,
    )


def _random_lpips() -> nn.Module:
    """torchmetrics' LPIPS-VGG network with a random backbone (its linear heads ship with torchmetrics)."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    return _NoTrainLpips(net="vgg", pretrained=True, pnet_rand=True).requires_grad_(False)


def time_step(module: APLAFinetune, size: dict, steps: int, warmup: int) -> dict:
    """Median step time (ms) and peak memory (GiB) of ``steps`` timed batches after ``warmup``."""
    cuda = torch.cuda.is_available()
    timer = StepTimer(warmup)
    trainer = Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision="bf16-mixed" if cuda else "32-true",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    data = DataLoader(Latents(size["frames"], size["latent"], warmup + steps), batch_size=1)
    trainer.fit(module, train_dataloaders=data)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"step_ms": 1000 * statistics.median(timer.times), "peak_gib": peak, "trainable_params": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke run")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    parser.add_argument("--json", type=str, default=None, help="write the rows here")
    args = parser.parse_args()
    size = SIZES["tiny" if args.tiny else "full"]
    steps = args.steps or (2 if args.tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    rows = []
    for name, vgt, adversarial, hyper in [
        ("base only (MSE, no VGT, no D)", None, False, False),
        ("VGT-Pure + 1x1 D + hyper-loss", "pure", True, True),
        ("VGT-Hyper + 1x1 D + hyper-loss", "hyper", True, True),
    ]:
        module = build(size, vgt, adversarial, hyper)
        rows.append(
            {"config": name, **time_step(module, size, steps, warmup), "decoder": module.autoencoder.kind}
        )
        del module
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    shape = f"1 x {size['frames']} x 4 x {size['latent']}^2 latents, Latte-{size['latte']}/2"
    print(
        f"\nAPLA fine-tuning step, {shape}, {device}, torch {torch.__version__} (median of {steps} steps)\n"
    )
    print("| config | step (ms) | peak memory (GiB) | trainable params | decoder |")
    print("|---|---|---|---|---|")
    for row in rows:
        numbers = f"{row['step_ms']:.1f} | {row['peak_gib']:.2f} | {row['trainable_params'] / 1e6:.2f}M"
        print(f"| {row['config']} | {numbers} | {row['decoder']} |")
    if args.json:
        record = {
            "device": device,
            "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "shape": shape,
            "steps": steps,
            "warmup": warmup,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
