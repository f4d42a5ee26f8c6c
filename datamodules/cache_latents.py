"""
Latent cache: the VAE posterior of every frame of every video, computed once, so that training reads latents
instead of decoding and encoding videos at every step.

    python -m datamodules.cache_latents data=ucf101 autoencoder=sd_vae data.root=/datasets/UCF-101
    python train.py experiment=latte_ucf101 data.root=/datasets/UCF-101 data.use_latent_cache=true
    torchrun --standalone --nproc_per_node=8 -m datamodules.cache_latents data=ucf101 ...  # a share per GPU

What is stored: for each frame after the deterministic spatial transform (resize/crop to the resolution), the
posterior moments (mean, logvar) of the frame and, when the dataset flips clips, of its mirror image; shape
(frames, views, 2, zc, r/ds, r/ds) per video, views = (plain, flipped). Videos sit in numpy shards
`shard_NNNNN.npy` (rows = frames, read through memory maps) next to `manifest.json`, which maps each video
(path relative to the root, with its size/mtime fingerprint) to its shard and first row.

When it is stale: the manifest holds a key hashed from the dataset root, the transform (resolution, spatial
transform, flip), the storage dtype and the autoencoder's identity (resolved path, config.json, weight files'
sizes/mtimes, scaling and shift factors). A changed key rebuilds the whole cache; a video that was added or
changed (size/mtime) is encoded on the next run of the command, which also resumes an interrupted build
(rows of a changed video stay in their old shard unused). Training refuses a stale or incomplete cache and
says which command fixes it.

Training from the cache draws the same clip windows and flips as decoding would (`DecodedVideos.fetch` with
another `load`), then z = (mean + std * eps - shift) * scaling_factor, eps ~ N(0, I) from the global RNG in
training (which the training loader seeds per item and epoch) and from a per-item seeded generator otherwise;
with `sample_posterior=False`, z = (mean - shift) * scaling_factor, which equals `autoencoder.encode(video)`
with `sample_posterior=False`.
"""

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import Dataset
from tqdm import tqdm

from backbones.autoencoders import SD_VAE_SCALING_FACTOR, resolve_vae_path
from datamodules.synthetic import clip_generator
from datamodules.videos import READ_ERRORS, DecodedVideos, VideoRecord
from utils.config import register_resolvers
from utils.distributed import barrier, join_torchrun, leave_torchrun, rank_and_world_size, sum_over_ranks

CACHE_VERSION = 1
MANIFEST = "manifest.json"
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
DECODE_BLOCK = 64  # frames decoded per read while building

#################################################################################
#                                 Fingerprints                                  #
#################################################################################


def stat_fingerprint(path: str) -> str:
    """ "size:mtime_ns" of a file: changes whenever the file is rewritten."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def record_fingerprint(record: VideoRecord) -> str:
    """Fingerprint of a video file, or of a frame folder (every frame's name, size and mtime)."""
    if not record.frames:
        return stat_fingerprint(record.path)
    digest = hashlib.sha256()
    for frame in record.frames:
        digest.update(f"{os.path.basename(frame)}|{stat_fingerprint(frame)}\n".encode())
    return f"{len(record.frames)}:{digest.hexdigest()[:32]}"


def autoencoder_identity(
    path: str | None, subfolder: str | None = None, scaling_factor: float | None = None
) -> dict[str, Any]:
    """What makes two VAEs give the same latents, read from disk without loading the weights."""
    location = resolve_vae_path(path).resolve()
    folder = (location / subfolder if subfolder else location) if location.is_dir() else location.parent
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config = {key: value for key, value in config.items() if not key.startswith("_")}  # diffusers metadata
    files = [location] if location.is_file() else sorted(folder.iterdir())
    weights = [[f.name, stat_fingerprint(str(f))] for f in files if f.suffix in WEIGHT_SUFFIXES]
    return {
        "path": str(location),
        "subfolder": subfolder,
        "config": config,
        "weights": weights,
        "scaling_factor": float(scaling_factor or config.get("scaling_factor") or SD_VAE_SCALING_FACTOR),
        "shift_factor": float(config.get("shift_factor") or 0.0),
    }


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(temporary, path)


#################################################################################
#                                 Latent Cache                                  #
#################################################################################


class LatentCache:
    """A folder of per-frame VAE moments for the videos of one dataset: builds it, checks it, reads it."""

    def __init__(
        self,
        dir: str,
        autoencoder_path: str | None = None,
        autoencoder_subfolder: str | None = None,
        scaling_factor: float | None = None,
        autoencoder_dtype: str | None = None,
        sample_posterior: bool = True,
        dtype: str = "float16",
        shard_frames: int = 4096,
        device: str = "auto",
    ):
        """
        dir: the cache folder (created by `build`).
        autoencoder_path, autoencoder_subfolder, scaling_factor: the VAE the latents belong to, as in the
            autoencoder config (interpolated from it); checked against the cache before it is used.
        autoencoder_dtype: the VAE's weight dtype (its `torch_dtype`; null = as stored): part of the key,
            since an fp16 encoder gives other latents than an fp32 one.
        sample_posterior: draw z from the posterior (Latte trains so) or take its mean.
        dtype: storage dtype of the moments, "float16" (half the disk) or "float32" (exact).
        shard_frames: frames per shard file (a video never spans two shards).
        device: where `build` runs the VAE: "auto" (cuda if available), "cuda", "cpu", ...
        """
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES)}, got {dtype!r}.")
        if not isinstance(shard_frames, int) or shard_frames < 1:
            raise ValueError(f"shard_frames must be an int >= 1, got {shard_frames!r}.")
        self.dir = Path(dir).expanduser()
        self.autoencoder_path = autoencoder_path
        self.autoencoder_subfolder = autoencoder_subfolder
        self.scaling_factor = scaling_factor
        self.autoencoder_dtype = autoencoder_dtype
        self.sample_posterior = sample_posterior
        self.dtype = dtype
        self.shard_frames = shard_frames
        self.device = device

    def settings(self, dataset: DecodedVideos) -> dict[str, Any]:
        """Everything the stored moments depend on, besides the videos themselves."""
        return {
            "version": CACHE_VERSION,
            "root": str(dataset.root.resolve()),
            "resolution": dataset.resolution,
            "spatial": dataset.spatial,
            "flip": dataset.flip,
            "dtype": self.dtype,
            "autoencoder_dtype": self.autoencoder_dtype,
            "autoencoder": autoencoder_identity(
                self.autoencoder_path, self.autoencoder_subfolder, self.scaling_factor
            ),
        }

    @staticmethod
    def key(settings: dict[str, Any]) -> str:
        """The hash of the settings that names one cache content."""
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the folder holds no cache yet."""
        path = self.dir / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def clear(self) -> None:
        """Delete the manifests and the shards (only files this class writes)."""
        for path in [*self.dir.glob("manifest*.json"), *self.dir.glob("shard_*.npy")]:
            path.unlink()

    #############################################################################
    #                                  Building                                 #
    #############################################################################

    def build(
        self, datasets: list[DecodedVideos], autoencoder: torch.nn.Module, progress: bool = True
    ) -> dict[str, int]:
        """Encode every video of `datasets` not yet in the cache; rebuild all when the settings changed.

        Under torchrun every rank encodes its share of the videos into its own shards and its own partial
        manifest (`manifest.rank<r>.json`, the resume point of that rank), and rank 0 folds the partial
        manifests into the manifest at the end (or, after an interrupted run, at the next start).
        Returns counts over all ranks: "encoded" (this run), "cached" (already there), "failed" (unreadable).
        """
        assert datasets, "build needs at least one dataset (split) to cache."
        settings = self.settings(datasets[0])
        for dataset in datasets[1:]:
            assert self.settings(dataset) == settings, "One cache's splits must share root and transform."
        self.check_autoencoder(autoencoder, settings["autoencoder"])
        device = join_torchrun(self.device)  # under torchrun: join its group, this rank's GPU
        rank, world_size = rank_and_world_size()
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.start_manifest(settings)
        barrier()  # the manifest is current before any rank reads it
        manifest = self.read_manifest()
        todo: dict[str, tuple[DecodedVideos, int, str]] = {}
        for dataset in datasets:
            for i, record in enumerate(dataset.records):
                name, fingerprint = dataset.relative_path(i), record_fingerprint(record)
                if manifest["videos"].get(name, {}).get("fingerprint") != fingerprint:
                    todo[name] = (dataset, i, fingerprint)
        names = {dataset.relative_path(i) for dataset in datasets for i in range(len(dataset))}
        cached = len(names) - len(todo)
        mine = list(todo.items())[rank::world_size]
        if world_size > 1:  # this rank's own manifest: its shards and videos, updated after each shard
            manifest = {"key": manifest["key"], "shards": [], "videos": {}, "rank": rank}
        autoencoder.to(device)
        pending: list[tuple[str, str, np.ndarray]] = []
        failed = 0
        desc = f"Encoding videos into {self.dir}" + (f", rank {rank}/{world_size}" if world_size > 1 else "")
        for name, (dataset, i, fingerprint) in tqdm(mine, desc=desc, unit="video", disable=not progress):
            try:
                moments = self.encode_video(dataset, i, autoencoder, device)  # (n, views, 2, zc, h', w')
            except READ_ERRORS as error:
                reason = f"{type(error).__name__}: {str(error).strip()[:200]}"
                manifest["videos"][name] = {"fingerprint": fingerprint, "error": reason}
                failed += 1
                continue
            pending.append((name, fingerprint, moments))
            if sum(len(m) for _, _, m in pending) >= self.shard_frames:
                self.write_shard(manifest, pending)
                pending = []
        if pending:
            self.write_shard(manifest, pending)
        write_json(self.manifest_path(manifest), manifest)
        barrier()  # every rank's videos are in its partial manifest
        if rank == 0 and world_size > 1:
            self.start_manifest(settings)  # folds the partial manifests in
        barrier()
        encoded, failed = sum_over_ranks([len(mine) - failed, failed], device)
        return {"encoded": encoded, "cached": cached, "failed": failed}

    def manifest_path(self, manifest: dict[str, Any]) -> Path:
        """Where `manifest` lives: the manifest, or a rank's partial manifest during a parallel build."""
        return self.dir / (MANIFEST if "rank" not in manifest else f"manifest.rank{manifest['rank']}.json")

    def start_manifest(self, settings: dict[str, Any]) -> None:
        """Make the manifest current (rank 0): fold in the partial manifests of a parallel build, and start
        over (delete manifest and shards) when the settings changed."""
        key = self.key(settings)
        manifest = self.read_manifest()
        if manifest is not None and manifest["key"] != key:
            print(f"Latent cache {self.dir}: settings changed, rebuilding it.", file=sys.stderr)
            self.clear()
            manifest = None
        manifest = manifest or {"key": key, "settings": settings, "shards": [], "videos": {}}
        for path in sorted(self.dir.glob("manifest.rank*.json")):
            partial = json.loads(path.read_text())
            if partial["key"] == key:  # a stale rank's shards went with clear() above
                manifest["shards"] += partial["shards"]
                manifest["videos"].update(partial["videos"])
        write_json(self.dir / MANIFEST, manifest)
        for path in self.dir.glob("manifest.rank*.json"):
            path.unlink()

    def check_autoencoder(self, autoencoder: torch.nn.Module, identity: dict[str, Any]) -> None:
        """Fail unless `autoencoder` is the diffusers VAE the cache settings describe."""
        if not hasattr(autoencoder, "vae"):
            raise ValueError(
                f"A latent cache needs a diffusers VAE (autoencoder=sd_vae), not {type(autoencoder).__name__}"
            )
        if str(Path(autoencoder.path).resolve()) != identity["path"]:
            raise ValueError(
                f"The autoencoder was loaded from '{autoencoder.path}' but "
                f"data.latent_cache.autoencoder_path resolves to '{identity['path']}': they must be one VAE."
            )
        if autoencoder.scaling_factor != identity["scaling_factor"]:
            raise ValueError(
                f"autoencoder.scaling_factor={autoencoder.scaling_factor} but "
                f"data.latent_cache.scaling_factor gives {identity['scaling_factor']}: they must agree."
            )

    @torch.no_grad()
    def encode_video(
        self, dataset: DecodedVideos, index: int, autoencoder: torch.nn.Module, device: torch.device
    ) -> np.ndarray:
        """Moments of every frame of video `index`: (n, views, 2, zc, h', w'), views = plain (, flipped)."""
        length = dataset.lengths[index]
        blocks = []
        for start in range(0, length, DECODE_BLOCK):
            frames = dataset.read(index, list(range(start, min(start + DECODE_BLOCK, length))))
            clip = dataset.transform(frames, flip=False)  # (t, c, r, r) in [-1, 1]
            views = [clip, clip.flip(-1)] if dataset.flip else [clip]  # the flip the training clip may get
            for chunk in zip(*(view.split(autoencoder.chunk_size) for view in views)):
                moments = []
                for view in chunk:
                    posterior = autoencoder.vae.encode(view.to(device, autoencoder.dtype)).latent_dist
                    moment = torch.stack([posterior.mean, posterior.logvar], dim=1)  # (t', 2, zc, h', w')
                    moments.append(moment)
                blocks.append(torch.stack(moments, dim=1).float().cpu())  # (t', views, 2, zc, h', w')
        return torch.cat(blocks).numpy().astype(STORAGE_DTYPES[self.dtype])  # (n, views, 2, zc, h', w')

    def write_shard(self, manifest: dict[str, Any], pending: list[tuple[str, str, np.ndarray]]) -> None:
        """Write the pending videos' moments as one new shard and record them in the (partial) manifest."""
        if "rank" in manifest:  # a parallel build: names no other rank or earlier run uses
            name = f"shard_r{manifest['rank']:03d}_{uuid.uuid4().hex[:8]}_{len(manifest['shards']):05d}.npy"
        else:
            name = f"shard_{len(manifest['shards']):05d}.npy"
        temporary = self.dir / f"{name}.tmp"
        with open(temporary, "wb") as file:
            np.save(file, np.concatenate([moments for _, _, moments in pending]))
        os.replace(temporary, self.dir / name)
        offset = 0
        for video, fingerprint, moments in pending:
            manifest["videos"][video] = {
                "fingerprint": fingerprint,
                "shard": name,
                "offset": offset,
                "frames": len(moments),
            }
            offset += len(moments)
        manifest["shards"].append(name)
        write_json(self.manifest_path(manifest), manifest)  # an interrupted build resumes from here

    #############################################################################
    #                                  Reading                                  #
    #############################################################################

    def dataset(self, source: DecodedVideos) -> "CachedLatentVideos":
        """The clips of `source` read from this cache as latents (checked to be complete and current)."""
        return CachedLatentVideos(source, self)

    def check(self, source: DecodedVideos) -> dict[str, Any]:
        """The manifest, if it was built with today's settings and holds every video of `source` as is."""
        command = (
            "python -m datamodules.cache_latents data=<this preset> autoencoder=<this autoencoder> "
            f"data.root={source.root} data.latent_cache.dir={self.dir}"
        )
        manifest = self.read_manifest()
        if manifest is None:
            raise FileNotFoundError(f"No latent cache at '{self.dir}' (no {MANIFEST}). Build it: {command}")
        settings = self.settings(source)
        if manifest["key"] != self.key(settings):
            changed = sorted(k for k in settings if manifest["settings"].get(k) != settings[k])
            raise ValueError(
                f"The latent cache at '{self.dir}' is stale: {', '.join(changed)} changed since it was "
                f"built. Rebuild it: {command}"
            )
        videos = manifest["videos"]
        missing = [
            source.relative_path(i)
            for i, record in enumerate(source.records)
            if videos.get(source.relative_path(i), {}).get("fingerprint") != record_fingerprint(record)
        ]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(source)} videos of '{source.root}' ({source.split}) are missing "
                f"from the latent cache at '{self.dir}' or changed since it was built (e.g. {missing[:3]}). "
                f"Update it (only those are encoded): {command}"
            )
        return manifest


class CachedLatentVideos(Dataset):
    """The clips of a `DecodedVideos` as VAE latents from a `LatentCache`: {"latents": (f, zc, h', w')}."""

    def __init__(self, source: DecodedVideos, cache: LatentCache):
        """source: the decoded dataset (index, clip draws, labels); cache: where its moments are."""
        manifest = cache.check(source)
        self.source = source
        self.cache = cache
        self.entries = [manifest["videos"][source.relative_path(i)] for i in range(len(source))]
        for i, entry in enumerate(self.entries):
            if "error" in entry:  # unreadable when the cache was built: skipped as a failed read would be
                source.bad.add(i)
                source.skipped.append((source.records[i].path, f"unreadable when cached ({entry['error']})"))
        autoencoder = manifest["settings"]["autoencoder"]
        self.scaling_factor = autoencoder["scaling_factor"]
        self.shift_factor = autoencoder["shift_factor"]
        self.shards: dict[str, np.ndarray] = {}  # memory maps, opened lazily in each worker

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the open memory maps (workers reopen them; numpy would copy their data)."""
        return {**self.__dict__, "shards": {}}

    def __len__(self) -> int:
        """As many clips as the decoded dataset."""
        return len(self.source)

    def shard(self, name: str) -> np.ndarray:
        """The memory map of shard `name`: (rows, views, 2, zc, h', w')."""
        if name not in self.shards:
            self.shards[name] = np.load(self.cache.dir / name, mmap_mode="r")
        return self.shards[name]

    def load(self, index: int, indices: list[int], flip: bool) -> torch.Tensor:
        """Latents (t, zc, h', w') of frames `indices` of video `index`: a draw from q(z|x), or its mean."""
        entry = self.entries[index]
        if max(indices) >= entry["frames"]:
            raise IndexError(f"frame {max(indices)} requested from {entry['frames']} cached frames")
        rows = np.asarray(indices) + entry["offset"]
        moments = torch.from_numpy(np.asarray(self.shard(entry["shard"])[rows, int(flip)])).float()
        mean, logvar = moments.unbind(1)  # (t, zc, h', w') each
        z = mean
        if self.cache.sample_posterior:
            generator = None
            if not self.source.random_clips:  # seeded noise outside training, like the seeded clips
                generator = clip_generator(self.source.seed, f"latents/{self.source.split}", index)
            eps = torch.randn(mean.shape, generator=generator)  # (t, zc, h', w')
            z = mean + torch.exp(0.5 * logvar) * eps  # (t, zc, h', w')
        return (z - self.shift_factor) * self.scaling_factor  # (t, zc, h', w')

    def __getitem__(self, index: int) -> dict[str, Any]:
        """{"latents": (f, zc, h', w') float32} plus {"label": int64 scalar} when conditional."""
        used, latents = self.source.fetch(index, load=self.load)
        return {"latents": latents, **self.source.label(used)}

    def frame(self, index: int, frame_idx: int) -> dict[str, Any]:
        """Latents of frame `frame_idx` of the clip item `index` gives (joint training)."""
        used, latents = self.source.fetch(index, frame=frame_idx, load=self.load)
        return {"image": latents[0], **self.source.label(used)}


#################################################################################
#                                    Command                                    #
#################################################################################


def build_latent_cache(cfg: DictConfig, progress: bool = True) -> dict[str, int]:
    """Build (or update) the latent cache of `cfg.data` for its train and validation splits."""
    if cfg.data.get("latent_cache") is None:
        raise ValueError("This data preset has no latent_cache block: use a dataset preset (ffs, ucf101...).")
    datamodule = instantiate(cfg.data, use_latent_cache=False)
    autoencoder = instantiate(cfg.autoencoder)
    splits = list(dict.fromkeys(["train", datamodule.val_split]))
    datasets = [datamodule.build(split) for split in splits]
    counts = datamodule.latent_cache.build(datasets, autoencoder, progress=progress)
    print(f"Latent cache {datamodule.latent_cache.dir} ({', '.join(splits)}): {counts}")
    return counts


def command_overrides(args: list[str]) -> list[str]:
    """The command line plus `~experiment` (the data preset's sizes, not quickstart's) and a task name."""
    given = {arg.lstrip("+~").split("=", 1)[0] for arg in args}
    defaults = {"experiment": "~experiment", "task_name": "task_name=cache_latents"}
    return [override for key, override in defaults.items() if key not in given] + args


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Compose the training config (data, autoencoder, paths) and build its latent cache."""
    build_latent_cache(cfg)
    leave_torchrun()  # under torchrun: after a failure torchrun ends the other ranks


if __name__ == "__main__":
    register_resolvers()
    sys.argv[1:] = command_overrides(sys.argv[1:])
    main()
