"""Tests for the causal Latte of backbones/latte.py: block-causal temporal attention with a window and sink
frames, streaming through a KV cache, per-frame timesteps, features(), out_channels, and the config keys.

Tiny models on CPU (size "tiny": depth 4, hidden 128, 4 heads); every all-zero trainable tensor (adaLN-Zero,
output layer, biases) is perturbed, so that every output depends on every weight.
"""

import pytest
import torch

import backbones
from backbones.latte import LATTE_SIZES, Latte, causal_frames
from tests.conftest import TINY, compose_train
from tests.test_latte_axes import fake_dit
from utils.run import train

SMALL = dict(patch_size=2, input_size=8, in_channels=4, num_frames=4)
CAUSAL = dict(temporal_mask="causal", temporal_pos="rope")
pytestmark = pytest.mark.usefixtures("one_thread")  # many calls on a few tokens


def tiny(seed: int = 0, **kwargs) -> Latte:
    """A tiny Latte in eval mode whose all-zero trainable tensors are perturbed."""
    torch.manual_seed(seed)
    model = Latte(**{"size": "tiny", **SMALL, **kwargs})
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and not param.any():
                param.normal_(std=0.05)
    return model.eval()


def latents(frames: int, batch: int = 2, size: int = 8, seed: int = 1) -> torch.Tensor:
    """Random latents (batch, frames, 4, size, size)."""
    return torch.randn(batch, frames, 4, size, size, generator=torch.Generator().manual_seed(seed))


def frame_timesteps(frames: int, batch: int = 2, seed: int = 2) -> torch.Tensor:
    """Random integer timesteps, one per frame: (batch, frames)."""
    return torch.randint(0, 1000, (batch, frames), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def stream(model: Latte, x: torch.Tensor, t: torch.Tensor, chunk: int, **kwargs) -> torch.Tensor:
    """The outputs of streaming x (b, F, c, h, w) through a new cache, `chunk` frames per call."""
    cache, outputs = model.new_cache(x.shape[0]), []
    for start in range(0, x.shape[1], chunk):
        t_chunk = t if t.ndim == 1 else t[:, start : start + chunk]
        outputs.append(model(x[:, start : start + chunk], t_chunk, cache=cache, **kwargs))
    assert cache.frames == x.shape[1]
    return torch.cat(outputs, dim=1)


#################################################################################
#                   The Rule: Which Frames a Frame Attends To                   #
#################################################################################


def test_causal_rule_with_window_keeps_the_sink_frames():
    positions = torch.arange(8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for k in range(8):
        for j in range(8):
            expected[k, j] = j <= k and (j < 1 or j > k - 3)
    assert torch.equal(causal_frames(positions, positions, window=3, sink_frames=1), expected)
    everything_before = torch.ones(8, 8, dtype=torch.bool).tril()
    assert torch.equal(causal_frames(positions, positions, window=None, sink_frames=1), everything_before)
    no_sink = causal_frames(positions, positions, window=2, sink_frames=0)
    assert no_sink[5].nonzero().flatten().tolist() == [4, 5]


def input_dependence(model: Latte, frames: int, **kwargs) -> torch.Tensor:
    """(F, F) bool: whether output frame k depends on input frame j (nonzero gradient)."""
    x = latents(frames).requires_grad_(True)
    out = model(x, torch.tensor([7, 500]), **kwargs)
    rows = []
    for k in range(frames):
        (grad,) = torch.autograd.grad(out[:, k].square().sum(), x, retain_graph=True)
        rows.append(grad.abs().sum(dim=(0, 2, 3, 4)) > 0)
    return torch.stack(rows)


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_causal_network_is_block_causal_over_frames(variant):
    depends = input_dependence(tiny(variant=variant, **CAUSAL), frames=6)
    assert torch.equal(depends, torch.ones(6, 6, dtype=torch.bool).tril()), "frame k sees frames <= k, all"


def test_window_and_sink_hold_through_the_whole_network():
    # With window 1, a frame sees itself and the sink frame in every block, so the network's output frame k
    # depends on input frames {0, k} only; without sink frames, on frame k only.
    assert depends_on(tiny(window=1, sink_frames=1, **CAUSAL), 6) == [[0]] + [[0, k] for k in range(1, 6)]
    assert depends_on(tiny(window=1, sink_frames=0, **CAUSAL), 6) == [[k] for k in range(6)]


def depends_on(model: Latte, frames: int) -> list[list[int]]:
    """For every output frame, the input frames it depends on."""
    return [row.nonzero().flatten().tolist() for row in input_dependence(model, frames)]


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_a_bidirectional_checkpoint_starts_a_causal_model(variant):
    bidirectional = tiny(variant=variant, temporal_pos="rope", num_classes=5)
    causal = tiny(seed=1, variant=variant, num_classes=5, **CAUSAL)
    causal.load_state_dict(bidirectional.state_dict(), strict=True)  # the mask adds no weights
    x, t, y = latents(6), frame_timesteps(6), torch.tensor([1, 3])
    with torch.no_grad():
        out, full = causal(x, t, y), bidirectional(x, t, y)
        alone = bidirectional(x[:, :1], t[:, :1], y)  # (b, 1, c, h, w): frame 0 without the others
    torch.testing.assert_close(out[:, 0], alone[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, 0], full[:, 0], atol=1e-4), "the bidirectional frame 0 sees frames 1-5"


#################################################################################
#                  Streaming through the Cache = Parallel Forward               #
#################################################################################


@pytest.mark.parametrize("window", [None, 3], ids=["all_frames", "window3_sink1"])
@pytest.mark.parametrize(
    ("variant", "conditioning"),
    [(1, "s_adaln"), (1, "all_tokens"), (2, "s_adaln"), (3, "s_adaln"), (4, "s_adaln")],
)
def test_streaming_one_frame_or_three_at_a_time_equals_the_parallel_forward(variant, conditioning, window):
    model = tiny(variant=variant, conditioning=conditioning, window=window, num_classes=5, **CAUSAL)
    x, y = latents(10), torch.tensor([1, 4])  # 10 frames, past num_frames=4: RoPE at absolute positions
    for t in (torch.tensor([7, 500]), frame_timesteps(10)):  # one timestep per clip, or per frame
        with torch.no_grad():
            parallel = model(x, t, y)  # (b, 10, 8, h, w)
        assert parallel.shape == (2, 10, 8, 8, 8) and parallel.abs().mean() > 0.01
        for chunk in (1, 3):
            torch.testing.assert_close(stream(model, x, t, chunk, y=y), parallel, atol=1e-5, rtol=1e-5)


def test_windowed_model_differs_from_the_full_causal_one():
    full, windowed = tiny(**CAUSAL), tiny(window=3, **CAUSAL)
    x, t = latents(8), torch.tensor([7, 500])
    with torch.no_grad():
        a, b = full(x, t), windowed(x, t)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-5, rtol=1e-5)  # frames 0-2 see the same frames
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4), "later frames lose the frames out of the window"


def test_absolute_positions_stream_within_num_frames_and_point_to_rope_beyond():
    model = tiny(temporal_mask="causal", temporal_pos="absolute")
    x, t = latents(4), frame_timesteps(4)
    with torch.no_grad():
        torch.testing.assert_close(stream(model, x, t, 1), model(x, t), atol=1e-5, rtol=1e-5)
        cache = model.new_cache(2)
        model(x, t, cache=cache)
        with pytest.raises(ValueError, match=r"reaches frame 5.*'absolute' embeds.*temporal_pos='rope'"):
            model(x[:, :1], t[:, :1], cache=cache)


def test_a_thousand_frame_stream_keeps_only_the_sink_and_window_frames(monkeypatch):
    sink, window = 1, 3
    monkeypatch.setitem(LATTE_SIZES, "micro", dict(depth=4, hidden_size=32, num_heads=2))
    model = tiny(size="micro", window=window, sink_frames=sink, input_size=4, **CAUSAL)  # 4 tokens per frame
    x, t = latents(1000, batch=1, size=4), frame_timesteps(1000, batch=1)
    cache, outputs = model.new_cache(1), []
    with torch.no_grad():
        for k in range(1000):
            outputs.append(model(x[:, k : k + 1], t[:, k : k + 1], cache=cache))  # (1, 1, 8, 4, 4)
            kept = cache.positions.tolist()
            assert kept == sorted({*range(min(sink, k + 1)), *range(max(0, k + 2 - window), k + 1)})
            assert len(kept) <= sink + window
            assert all(kv.k.shape[2] == kv.v.shape[2] == len(kept) for kv in cache.layers.values())
        parallel = model(x, t)  # (1, 1000, 8, 4, 4): one pass over all frames, masked
    assert cache.frames == 1000 and len(cache.layers) == 2, "one K/V cache per temporal block"
    torch.testing.assert_close(torch.cat(outputs, dim=1), parallel, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("variant", "conditioning", "window", "sink"),
    [(1, "s_adaln", 3, 1), (1, "all_tokens", 2, 0), (3, "s_adaln", 1, 2), (4, "s_adaln", 4, 1)],
)
def test_the_static_ring_buffer_cache_equals_the_growing_one_across_the_window_wrap(
    variant, conditioning, window, sink
):
    model = tiny(
        variant=variant, conditioning=conditioning, window=window, sink_frames=sink, num_classes=5, **CAUSAL
    )
    x, t, y = latents(11), frame_timesteps(11), torch.tensor([1, 4])  # 11 frames: the ring wraps twice
    growing, static = model.new_cache(2), model.new_cache(2, static=True)
    with torch.no_grad():
        for k in range(11):
            a = model(x[:, k : k + 1], t[:, k : k + 1], y, cache=growing)  # (2, 1, 8, 8, 8)
            b = model(x[:, k : k + 1], t[:, k : k + 1], y, cache=static)  # (2, 1, 8, 8, 8)
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            assert all(kv.k.shape[2] == sink + window for kv in static.layers.values()), "fixed size"
            filled = sorted(p for p in static.positions.tolist() if p >= 0)
            assert filled == sorted({*range(min(sink, k + 1)), *range(max(sink, k + 1 - window), k + 1)})
    assert static.frame.item() == 11 and not torch.allclose(x[:, -1], a[:, -1, :4]), "not the input"
    static.reset()
    assert static.frame.item() == 0 and (static.positions == -1).all()
    with torch.no_grad():  # after a reset the same buffers stream the video again from frame 0
        torch.testing.assert_close(
            model(x[:, :1], t[:, :1], y, cache=static), stream(model, x[:, :1], t[:, :1], 1, y=y)
        )


def test_a_static_cache_needs_a_window_rope_and_one_frame_per_call():
    with pytest.raises(ValueError, match="static cache.*needs a window and temporal_pos='rope'"):
        tiny(**CAUSAL).new_cache(1, static=True)
    with pytest.raises(ValueError, match="static cache.*window=3, temporal_pos='absolute'"):
        tiny(temporal_mask="causal", window=3).new_cache(1, static=True)
    model = tiny(window=3, **CAUSAL)
    with pytest.raises(ValueError, match="one frame per call, got 2"), torch.no_grad():
        model(latents(2), torch.tensor([1, 2]), cache=model.new_cache(2, static=True))


#################################################################################
#                    Timesteps per Frame, features() and head()                 #
#################################################################################


@pytest.mark.parametrize("mask", ["bidirectional", "causal"])
def test_timesteps_per_frame(mask):
    model = tiny(temporal_mask=mask, temporal_pos="rope")
    x, t = latents(5), torch.tensor([7, 500])
    with torch.no_grad():
        per_clip = model(x, t)
        torch.testing.assert_close(model(x, t[:, None].expand(2, 5)), per_clip, atol=1e-5, rtol=1e-5)
        same = model(x, t[:, None].repeat(1, 5))
        other = t[:, None].repeat(1, 5)
        other[:, 2] = 900  # frame 2 at another noise level
        changed = model(x, other)
    affected = (changed - same).abs().amax(dim=(0, 2, 3, 4)) > 1e-5  # (5,) which output frames changed
    expected = [True] * 5 if mask == "bidirectional" else [False, False, True, True, True]
    assert affected.tolist() == expected


def test_features_then_head_is_forward_with_and_without_a_cache():
    model = tiny(num_classes=5, **CAUSAL)
    x, t, y = latents(5), frame_timesteps(5), torch.tensor([1, 2])
    with torch.no_grad():
        out = model(x, t, y)
        features = model.features(x, t, y, layers=[0, 2, -1])
        assert [h.shape for h in features.hidden] == [(2, 5, 16, 128)] * 3 and features.c.shape == (2, 5, 128)
        torch.testing.assert_close(model.head(features.hidden[-1], features.c), out, atol=0, rtol=0)
        assert not torch.allclose(features.hidden[0], features.hidden[1])
        cache = model.new_cache(2)
        first = model.features(x[:, :3], t[:, :3], y, cache=cache, layers=[1])
        rest = model.features(x[:, 3:], t[:, 3:], y, cache=cache)
        assert first.hidden[0].shape == (2, 3, 16, 128) and cache.frames == 5
    streamed = torch.cat([model(x[:, :3], t[:, :3], y), model.head(rest.hidden[0], rest.c)], dim=1)
    torch.testing.assert_close(streamed[:, 3:], out[:, 3:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"layers=\[4\] must be block indices in \[-4, 4\)"):
        model.features(x, t, y, layers=[4])


def test_features_of_all_tokens_leave_out_the_conditioning_tokens():
    model = tiny(conditioning="all_tokens", num_classes=5, **CAUSAL)
    features = model.features(latents(3), torch.tensor([1, 2]), torch.tensor([0, 1]), layers=[1])
    assert features.hidden[0].shape == (2, 3, 16, 128) and features.c is None


#################################################################################
#                  Output Channels and Extra Input Channels (AAPT)              #
#################################################################################


@pytest.mark.parametrize(("learn_sigma", "channels"), [(True, 8), (False, 4)])
def test_out_channels_keep_the_prediction_latent_sized(learn_sigma, channels):
    model = tiny(in_channels=8, out_channels=4, learn_sigma=learn_sigma, **CAUSAL)
    assert model.out_channels == channels
    x = torch.randn(2, 3, 8, 8, 8)  # noise of the frame and the previous latent frame, joined on channels
    assert model(x, torch.tensor([1, 2])).shape == (2, 3, channels, 8, 8)


def test_extra_input_channels_start_random_or_zero():
    torch.manual_seed(0)
    random = Latte(size="tiny", out_channels=4, **{**SMALL, "in_channels": 8})
    zero = Latte(size="tiny", out_channels=4, extra_channels_init="zero", **{**SMALL, "in_channels": 8})
    assert random.x_embedder.proj.weight[:, 4:].abs().sum() > 0, "random (default, as AAPT)"
    assert not zero.x_embedder.proj.weight[:, 4:].any() and zero.x_embedder.proj.weight[:, :4].any()


def test_dit_init_fills_the_latent_channels_and_keeps_the_extra_ones():
    model = tiny(in_channels=8, out_channels=4, **CAUSAL)
    extra = model.x_embedder.proj.weight[:, 4:].clone()
    report = backbones.init_from_dit(model, fake_dit())
    assert "x_embedder.proj.weight" in report["loaded"]
    assert torch.equal(model.x_embedder.proj.weight[:, :4], fake_dit()["x_embedder.proj.weight"])
    assert torch.equal(model.x_embedder.proj.weight[:, 4:], extra)


#################################################################################
#                                  Clear Errors                                 #
#################################################################################


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temporal_mask="future"), r"temporal_mask='future' is unknown; valid: bidirectional, causal"),
        (dict(temporal_mask="causal", patch_embed="compression"), r"needs patch_embed='uniform'"),
        (dict(window=3), r"window=3 must be null or a positive integer with temporal_mask='causal'"),
        (dict(temporal_mask="causal", window=0), r"window=0 must be null or a positive integer"),
        (dict(temporal_mask="causal", sink_frames=-1), r"sink_frames=-1 must be an int >= 0"),
        (dict(out_channels=0), r"out_channels=0 must be >= 1 or null"),
        (dict(extra_channels_init="ones"), r"extra_channels_init='ones' is unknown; valid: random, zero"),
    ],
)
def test_invalid_causal_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Latte(size="tiny", **{**SMALL, **kwargs})


def test_invalid_calls_raise():
    with pytest.raises(ValueError, match=r"new_cache needs temporal_mask='causal', got 'bidirectional'"):
        tiny().new_cache(2)
    model, x = tiny(**CAUSAL), latents(3)
    with pytest.raises(ValueError, match=r"num_images=1: a streamed call carries clip frames only"):
        model(x, torch.tensor([1, 2]), cache=model.new_cache(2), num_images=1)
    with pytest.raises(ValueError, match=r"the cache streams 1 videos, but x holds 2"):
        model(x, torch.tensor([1, 2]), cache=model.new_cache(1))
    with pytest.raises(ValueError, match=r"num_images=3 must be an int in \[0, 3\)"):
        model(x, torch.tensor([1, 2]), num_images=3)
    with pytest.raises(AssertionError, match=r"one per frame \(2, 3\), got \(2, 4\)"):
        model(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"t of shape \(b, f\).*patch_embed='compression'"):
        tiny(patch_embed="compression")(latents(4), torch.zeros(2, 4))


#################################################################################
#                         Config: train.py with a causal Latte                  #
#################################################################################


def test_train_py_composes_and_trains_a_causal_rope_latte(tmp_path):
    overrides = [
        *TINY,
        "backbone.temporal_mask=causal",
        "backbone.temporal_pos=rope",
        "backbone.window=2",
        "trainer.max_steps=2",
    ]
    cfg = compose_train(tmp_path, overrides)
    assert (cfg.backbone.temporal_mask, cfg.backbone.window, cfg.backbone.sink_frames) == ("causal", 2, 1)
    assert cfg.backbone.out_channels is None
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "backbone.temp_embed" not in state["state_dict"], "rope: no temporal table"
    assert state["global_step"] == 2
