"""VideoModule, the base of every LightningModule: a test-only GAN (generator + critic, two optimizers, manual
optimization) trains through train(), keeps one EMA update per generator step, resumes exactly with both
optimizer states, and samples through load_module; and the init= steps (checkpoint, imagenet_dit)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_modules.init import from_checkpoint
from tests.conftest import TINY, compose_train
from tests.helpers.gan_module import TinyGan
from tests.helpers.probes import EndProbe, StartProbe
from utils.run import load_module, sample, train

PROBES = [
    "+callbacks.start._target_=tests.helpers.probes.StartProbe",
    "+callbacks.end._target_=tests.helpers.probes.EndProbe",
]


def last_checkpoint(run: Path) -> dict:
    """A run folder's last checkpoint, read as plain tensors and containers."""
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def under(state: dict, prefix: str) -> dict:
    """The tensors of ``state`` named ``<prefix>.<key>``, by ``key``."""
    return {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}


def assert_same_optimizer_states(found: list[dict], expected: list[dict]) -> None:
    """Every optimizer's per-parameter state tensors (step, exp_avg, exp_avg_sq) are equal and non-empty."""
    assert len(found) == len(expected) == 2, "a generator and a critic optimizer"
    for mine, theirs in zip(found, expected):
        assert mine["state"] and sorted(mine["state"]) == sorted(theirs["state"])
        for index, state in theirs["state"].items():
            assert all(torch.equal(mine["state"][index][k], v) for k, v in state.items()), index


#################################################################################
#                 Manual optimization with two optimizers: a GAN                #
#################################################################################

# 6 clips in batches of 2: 3 batches an epoch. Each batch steps both optimizers, so Lightning's global_step
# grows by 2 a batch: 8 steps are 4 batches (across an epoch boundary), and a checkpoint follows every batch.
GAN_RUN = [*TINY, "data.dataset.num_videos=6", "trainer.limit_val_batches=0", "trainer.max_steps=8"]
GAN = {
    "_target_": "tests.helpers.gan_module.TinyGan",
    "autoencoder": "${autoencoder}",
    "num_frames": "${data.num_frames}",
    "latent_size": "${data.resolution}",
    "ema_decay": 0.9,
}


def train_gan(root: Path, *overrides: str) -> Path:
    """Train the TinyGan in ``root/run`` through train() on the tiny synthetic data; the run folder."""
    cfg = compose_train(root, [*GAN_RUN, *overrides])
    cfg.module = OmegaConf.create(GAN)
    train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def gan_runs(tmp_path_factory) -> dict:
    """Run folders "full" (8 steps), "half" (4) and "resumed" (from half to 8), and the probes' records."""
    root = tmp_path_factory.mktemp("gan")
    StartProbe.seen.clear()
    EndProbe.seen.clear()
    runs = {
        "full": train_gan(root / "full", *PROBES),
        "half": train_gan(root / "half", "trainer.max_steps=4"),
    }
    half = runs["half"] / "checkpoints" / "last.ckpt"
    runs["resumed"] = train_gan(root / "resumed", *PROBES, f"ckpt_path={half}")
    return {**runs, "starts": list(StartProbe.seen), "modules": list(EndProbe.seen)}


def test_a_gan_with_two_optimizers_trains_through_train_with_one_ema_update_per_generator_step(gan_runs):
    checkpoint = last_checkpoint(gan_runs["full"])
    assert checkpoint["global_step"] == 8 and len(checkpoint["optimizer_states"]) == 2
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {
        "generator",
        "critic",
        "critic_head",
        "ema",
    }
    module = gan_runs["modules"][0]
    assert isinstance(module, TinyGan) and not module.automatic_optimization
    weights = module.generator_weights  # at fit start, then after each generator step
    assert len(weights) == 1 + 4, "4 batches: 4 generator steps"
    assert not torch.equal(weights[0]["net.0.weight"], weights[-1]["net.0.weight"]), "the generator trains"

    def ema_of(updates_per_step: int) -> dict:
        ema = {k: v.clone() for k, v in weights[0].items()}
        for live in weights[1:]:
            for _ in range(updates_per_step):
                ema = {k: torch.lerp(v, live[k], 1 - module.ema_decay) for k, v in ema.items()}
        return ema

    saved = under(checkpoint["state_dict"], "ema")
    once, twice = ema_of(1), ema_of(2)
    assert all(torch.allclose(saved[k], v, rtol=1e-6, atol=1e-7) for k, v in once.items())
    assert not all(torch.allclose(saved[k], v, rtol=1e-6, atol=1e-7) for k, v in twice.items())


def test_a_resumed_gan_restores_both_optimizer_states_and_repeats_the_full_run(gan_runs):
    fresh, resumed = gan_runs["starts"]
    assert fresh["step"] == 0 and all(not optimizer["state"] for optimizer in fresh["optim"])
    half = last_checkpoint(gan_runs["half"])
    assert resumed["step"] == half["global_step"] == 4
    assert_same_optimizer_states(resumed["optim"], half["optimizer_states"])
    assert all(torch.equal(resumed["weights"][k], v) for k, v in half["state_dict"].items())

    full, end = last_checkpoint(gan_runs["full"]), last_checkpoint(gan_runs["resumed"])
    different = [k for k, v in full["state_dict"].items() if not torch.equal(v, end["state_dict"][k])]
    assert not different, f"the resumed run must end on the full run's weights: {different[:5]}"
    assert_same_optimizer_states(end["optimizer_states"], full["optimizer_states"])


def test_load_module_rebuilds_the_gan_that_wrote_the_checkpoint_and_sample_py_samples_it(gan_runs, tmp_path):
    ckpt = gan_runs["full"] / "checkpoints" / "last.ckpt"
    cfg = compose_train(tmp_path, [f"ckpt_path={ckpt}", "num_videos=3", "batch_size=2"], config_name="sample")
    module = load_module(str(ckpt), cfg, overrides=[])
    assert type(module) is TinyGan
    saved = under(last_checkpoint(gan_runs["full"])["state_dict"], "ema")
    assert all(torch.equal(module.ema.state_dict()[k], v) for k, v in saved.items())
    videos = module.sample(2, generator=torch.Generator().manual_seed(0))
    assert videos.shape == (2, 4, 3, 16, 16) and videos.abs().max() <= 1
    written = sample(cfg)
    assert len(written) == 2 + 3 and all(path.is_file() for path in written)


#################################################################################
#                   init=checkpoint | imagenet_dit: starting weights             #
#################################################################################


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The last checkpoint of a 4-step tiny Latte run: what the next runs start from."""
    root = tmp_path_factory.mktemp("source")
    train(compose_train(root, [*TINY, "~callbacks.video_sampler"]))
    return root / "run" / "checkpoints" / "last.ckpt"


def start_of(tmp_path: Path, *overrides: str) -> dict:
    """What a 2-step tiny Latte run with ``overrides`` started training from (StartProbe)."""
    StartProbe.seen.clear()
    run = [*TINY, "trainer.max_steps=2", "~callbacks.video_sampler", PROBES[0], *overrides]
    train(compose_train(tmp_path, run))
    (start,) = StartProbe.seen
    return start


@pytest.mark.parametrize("prefix", ["ema", "backbone"])
def test_init_checkpoint_starts_a_new_run_from_the_weights_only(tmp_path, source, prefix):
    saved = last_checkpoint(source.parents[1])["state_dict"]
    start = start_of(tmp_path, "init=checkpoint", f"init.path={source}", f"init.prefix={prefix}.")
    assert start["step"] == 0 and all(not optimizer["state"] for optimizer in start["optim"]), "a new run"
    weights = start["weights"]
    assert all(torch.equal(under(weights, "backbone")[k], v) for k, v in under(saved, prefix).items())
    assert all(torch.equal(under(weights, "ema")[k], v) for k, v in under(saved, prefix).items())
    assert not all(torch.equal(under(saved, "ema")[k], v) for k, v in under(saved, "backbone").items()), (
        "the source's EMA lags its backbone, so the two prefixes are told apart"
    )


def test_a_resumed_run_takes_its_weights_from_ckpt_path_and_skips_init(tmp_path, source):
    start = start_of(
        tmp_path,
        "trainer.max_steps=6",
        f"ckpt_path={source}",
        "init=checkpoint",
        f"init.path={tmp_path}/gone",
    )
    assert start["step"] == 4, "the init file is never read when resuming"


def test_init_checkpoint_reports_missing_unexpected_and_mismatched_keys(tmp_path):
    module = instantiate(compose_train(tmp_path, TINY).module)
    weights = {k: torch.randn_like(v) for k, v in module.backbone.state_dict().items()}
    del weights["final_layer.linear.bias"]
    weights["extra.weight"] = torch.zeros(3)
    weights["pos_embed"] = torch.zeros(1, 17, 128)
    path = tmp_path / "ffs.pt"
    torch.save({"ema": weights}, path)  # an official Latte file's layout

    with pytest.raises(ValueError) as error:
        from_checkpoint(module, str(path))
    message = str(error.value)
    for part in (
        f"init.path={path}",
        "1 missing: final_layer.linear.bias",
        "1 unexpected: extra.weight",
        "1 mismatched: pos_embed (checkpoint (1, 17, 128) vs model (1, 16, 128))",
        "init.strict=false",
    ):
        assert part in message, message

    own_bias = module.backbone.final_layer.linear.bias.detach().clone()
    with pytest.warns(UserWarning, match="left out 1 missing"):
        report = from_checkpoint(module, str(path), strict=False)
    assert "x_embedder.proj.weight" in report["loaded"] and len(report["mismatched"]) == 1
    assert torch.equal(module.backbone.x_embedder.proj.weight, weights["x_embedder.proj.weight"])
    assert torch.equal(module.backbone.final_layer.linear.bias, own_bias), "a missing key keeps its own init"
    assert all(torch.equal(module.ema.state_dict()[k], v) for k, v in module.backbone.state_dict().items())

    with pytest.raises(ValueError, match=r"no weights under init.prefix='backbone.'; its prefixes: ema\."):
        from_checkpoint(module, str(path), prefix="backbone.")
    with pytest.raises(ValueError, match=r"init=checkpoint needs init.path="):
        instantiate(compose_train(tmp_path, ["init=checkpoint"]).init)(module)  # init.path: ??? not given


def test_init_imagenet_dit_loads_the_spatial_blocks_into_backbone_and_ema(tmp_path):
    from tests.test_latte_axes import fake_dit

    dit = fake_dit()
    torch.save(dit, tmp_path / "DiT-XL-2-256x256.pt")
    weights = start_of(tmp_path, "init=imagenet_dit", f"paths.weights_dir={tmp_path}")["weights"]
    key = "blocks.0.attn.qkv.weight"  # a spatial block's attention
    assert torch.equal(weights[f"backbone.{key}"], dit[key]) and torch.equal(weights[f"ema.{key}"], dit[key])


def test_a_checkpoint_whose_config_names_a_dit_file_samples_without_it(tmp_path, source):
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["module"]["backbone"]["pretrained_dit"] = str(
        tmp_path / "gone.pt"
    )
    path = tmp_path / "before_init.ckpt"  # as runs with init=imagenet_dit stored it before init= was a step
    torch.save(checkpoint, path)
    cfg = compose_train(tmp_path, [f"ckpt_path={path}"], config_name="sample")
    module = load_module(str(path), cfg, overrides=[])
    assert torch.equal(module.ema.state_dict()["pos_embed"], checkpoint["state_dict"]["ema.pos_embed"])
