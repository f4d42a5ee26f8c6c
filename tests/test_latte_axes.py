"""Tests for the ablation axes of backbones/latte.py (issue #3) and the DiT init (backbones/pretrained.py).

Tiny models on CPU: size "tiny" = depth 4, hidden 128, 4 heads of 32; 8x8 latents in 2x2 patches (16 tokens
per frame), 4 clip frames. Zero-initialised tensors are perturbed wherever a test needs a non-trivial output.
"""

import itertools
import re

import pytest
import torch
from torch import nn

from backbones.latte import LATTE_SIZES, Latte
from backbones.layers import RotaryEmbedding
from backbones.pretrained import DIT_URL, init_from_dit

TINY = dict(patch_size=2, input_size=8, in_channels=4, num_frames=4)
HIDDEN, PATCH, GRID = 128, 2, 4
AXES = list(
    itertools.product(
        (1, 2, 3, 4), ("uniform", "compression"), ("s_adaln", "all_tokens"), ("absolute", "rope")
    )
)
# The Latte paper's trainable parameters (M) of Latte-XL/2 per variant, and ours exactly.
PAPER_PARAMS_M = {1: 673.68, 2: 673.68, 3: 676.33, 4: 676.44}
OUR_PARAMS = {1: 673_681_568, 2: 673_681_568, 3: 676_355_360, 4: 673_681_568}
OUR_DEPTHS = {1: 28, 2: 28, 3: 23, 4: 28}


def tiny(seed: int = 0, perturb: bool = True, **kwargs) -> Latte:
    """A tiny Latte; `perturb` puts noise on every all-zero trainable tensor (adaLN-Zero, output, biases)."""
    torch.manual_seed(seed)
    model = Latte(size="tiny", **{**TINY, **kwargs})
    if perturb:
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad and not param.any():
                    param.normal_(std=0.05)
    return model.eval()


def inputs(frames: int = 4, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random latents (batch, frames, 4, 8, 8) and timesteps."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 4, 8, 8, generator=generator), torch.tensor([7, 500])[:batch]


def cross_frame_gradient(model: Latte, x: torch.Tensor, t: torch.Tensor, **labels) -> float:
    """|d out[:, 0] / d x[:, 3]|: how much frame 0's output depends on clip frame 3's input."""
    x = x.clone().requires_grad_(True)
    model(x, t, **labels)[:, 0].square().sum().backward()
    return x.grad[:, 3].abs().sum().item()


#################################################################################
#                   Every Combination Builds, Runs and Learns                   #
#################################################################################


@pytest.mark.parametrize(("variant", "patch_embed", "conditioning", "temporal_pos"), AXES)
def test_every_axis_combination_runs_forward_and_backward(variant, patch_embed, conditioning, temporal_pos):
    axes = dict(
        variant=variant, patch_embed=patch_embed, conditioning=conditioning, temporal_pos=temporal_pos
    )
    fresh = tiny(perturb=False, num_classes=5, **axes)
    x, t = inputs()
    y = torch.tensor([1, 4])
    assert torch.equal(fresh(x, t, y), torch.zeros(2, 4, 8, 8, 8)), "a fresh model outputs exactly 0"
    model = tiny(num_classes=5, **axes).train()
    out = model(x, t, y)
    assert out.shape == (2, 4, 8, 8, 8), "(b, f, 2c, h, w)"
    out.square().mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert param.grad is None, f"frozen {name} received a gradient"


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_xl2_parameter_counts_match_paper_per_variant(variant):
    with torch.device("meta"):
        model = Latte(size="XL", patch_size=2, variant=variant)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (model.depth, trainable) == (OUR_DEPTHS[variant], OUR_PARAMS[variant])
    assert abs(trainable / 1e6 / PAPER_PARAMS_M[variant] - 1) < 0.005, "within 0.5% of the paper"


def test_variant_layouts():
    kinds = {
        v: [type(block).__name__ for block in tiny(perturb=False, variant=v).blocks] for v in (1, 2, 3, 4)
    }
    assert kinds[1] == ["SpatialBlock", "TemporalBlock"] * 2
    assert kinds[2] == ["SpatialBlock"] * 2 + ["TemporalBlock"] * 2
    assert kinds[3] == ["FactorisedAttentionBlock"] * 3  # round(4 * 18 / 22)
    assert kinds[4] == ["FactorisedHeadsBlock"] * 4
    v3 = tiny(perturb=False, variant=3).blocks[0]
    assert v3.attn_temp.qkv.weight.shape == (3 * HIDDEN, HIDDEN)
    assert v3.adaLN_modulation[1].out_features == 6 * HIDDEN, "one adaLN shared by both attentions"


#################################################################################
#                      Temporal Mixing and Joint Training                      #
#################################################################################


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_frames_meet_only_through_temporal_attention(variant):
    model = tiny(variant=variant)
    x, t = inputs()
    assert cross_frame_gradient(model, x, t) > 1e-3, "frame 0 depends on frame 3 through temporal attention"
    # Switch off every temporal path (temporal blocks' and attn_temp's outputs, variant 4's temporal heads).
    with torch.no_grad():
        for block in model.blocks:
            for attention in (getattr(block, name) for name in block.attentions):
                if type(attention).__name__ == "TemporalAttention":
                    attention.proj.weight.zero_()
                elif type(attention).__name__ == "FactorisedHeadsAttention":
                    attention.proj.weight[:, HIDDEN // 2 :] = 0  # columns of the temporal heads
    assert cross_frame_gradient(model, x, t) == 0, "no other path between frames"


def test_factorised_heads_split_space_and_time():
    model = tiny(variant=4)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.proj.weight[:, : HIDDEN // 2] = 0  # keep only the temporal heads
    x, t = inputs()
    x.requires_grad_(True)
    model(x, t)[:, :, :, :2, :2].sum().backward()  # the first patch (top-left 2x2) of every frame
    assert x.grad[:, :, :, :2, :2].abs().sum() > 0, "its own patch at every frame"
    assert x.grad[:, :, :, 2:, :].abs().sum() == 0 and x.grad[:, :, :, :, 2:].abs().sum() == 0, (
        "the temporal heads attend across frames at one location only"
    )


@pytest.mark.parametrize(
    ("variant", "conditioning", "temporal_pos"),
    list(itertools.product((1, 2, 3, 4), ("s_adaln", "all_tokens"), ("absolute", "rope"))),
)
def test_joint_training_images_never_meet_the_clip(variant, conditioning, temporal_pos):
    model = tiny(variant=variant, conditioning=conditioning, temporal_pos=temporal_pos, num_classes=5)
    x, t = inputs(frames=4 + 3)
    y, y_image = torch.tensor([1, 2]), torch.tensor([[0, 3, 4], [2, 2, 1]])
    with torch.no_grad():
        out = model(x, t, y, y_image, num_images=3)
        assert out.shape == (2, 7, 8, 8, 8)
        other = x.clone()
        other[:, 5:] = torch.randn_like(other[:, 5:])  # new images 1 and 2
        changed = model(other, t, y, y_image, num_images=3)
        assert torch.equal(changed[:, :5], out[:, :5]), "the clip and image 0 ignore images 1, 2"
        assert not torch.allclose(changed[:, 5:], out[:, 5:]), "images 1, 2 changed"
        other = x.clone()
        other[:, :4] = torch.randn_like(other[:, :4])  # a new clip
        changed = model(other, t, y, y_image, num_images=3)
        assert torch.equal(changed[:, 4:], out[:, 4:]), "images ignore the clip's content"
        clip_only = model(x[:, :4], t, y)
    torch.testing.assert_close(out[:, :4], clip_only, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("variant", "temporal"),
    [(1, r"blocks\.[13]\."), (2, r"blocks\.[23]\."), (3, r"attn_temp\.")],
    ids=["variant1", "variant2", "variant3"],
)
def test_joint_training_images_skip_temporal_weights(variant, temporal):
    model = tiny(variant=variant)
    x, t = inputs(frames=4 + 2)
    model(x, t, num_images=2)[:, 4:].square().sum().backward()  # the images' outputs only
    grads = {name: p.grad.abs().sum().item() for name, p in model.named_parameters() if p.requires_grad}
    skipped = {name for name in grads if re.match(rf".*{temporal}", name)}
    assert skipped and all(grads[name] == 0 for name in skipped), "images skip the temporal part"
    assert all(g > 0 for name, g in grads.items() if name not in skipped), "and use everything else"


def test_joint_training_labels_are_per_image():
    model = tiny(num_classes=5)
    x, t = inputs(frames=6)
    y, y_image = torch.tensor([1, 2]), torch.tensor([[0, 3], [4, 4]])
    with torch.no_grad():
        out = model(x, t, y, y_image, num_images=2)
        new_clip_label = model(x, t, torch.tensor([3, 0]), y_image, num_images=2)
        assert not torch.allclose(new_clip_label[:, :4], out[:, :4])
        assert torch.equal(new_clip_label[:, 4:], out[:, 4:]), "images are conditioned on their own labels"
        new_image_label = model(x, t, y, torch.tensor([[2, 3], [4, 4]]), num_images=2)
        assert not torch.allclose(new_image_label[0, 4], out[0, 4])
        assert torch.equal(new_image_label[:, :4], out[:, :4]) and torch.equal(
            new_image_label[:, 5], out[:, 5]
        )
        null = torch.full((2, 2), 5)
        all_null = model(x, t, torch.tensor([5, 5]), null, num_images=2)
    model.train()
    model.y_embedder.dropout_prob = 1.0  # label dropout hits the clip's label and every image's label
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, y_image, num_images=2), all_null, atol=0, rtol=0)


def test_joint_training_errors():
    conditional, x = tiny(num_classes=5), inputs(frames=6)[0]
    t, y = torch.tensor([1, 2]), torch.tensor([0, 1])
    with pytest.raises(AssertionError, match=r"needs y_image \(2, n\)"):
        conditional(x, t, y, num_images=2)
    with pytest.raises(AssertionError, match=r"y_image must hold one label per image, shape \(2, 2\)"):
        conditional(x, t, y, torch.zeros(2, 3, dtype=torch.long), num_images=2)
    with pytest.raises(AssertionError, match="model is unconditional"):
        tiny()(x, t, None, torch.zeros(2, 2, dtype=torch.long), num_images=2)
    with pytest.raises(ValueError, match=r"2 image frames .*patch_embed='compression'"):
        tiny(patch_embed="compression")(x, t, num_images=2)


@pytest.mark.parametrize(("variant", "at"), [(1, 1), (2, 2), (3, 0), (4, 0)])
def test_temp_embed_is_added_once_before_the_first_temporal_attention(variant, at):
    model = tiny(variant=variant)
    seen = {}
    model.x_embedder.register_forward_hook(lambda m, args, out: seen.update({-1: out}))
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: seen.update({f"in{i}": args[0]}))
        block.register_forward_hook(lambda m, args, out, i=i: seen.update({i: out}))
    x, t = inputs(frames=4 + 2)
    with torch.no_grad():
        model(x, t, num_images=2)
    before = seen[at - 1] + (model.pos_embed if at == 0 else 0)
    added = seen[f"in{at}"] - before  # (b, t, l, d)
    torch.testing.assert_close(added[:, :4], model.temp_embed[:, :, None].expand(2, 4, 16, HIDDEN))
    assert torch.equal(added[:, 4:], torch.zeros_like(added[:, 4:])), "images get no temporal embedding"
    for i in range(len(model.blocks)):
        if i != at:
            assert torch.equal(seen[f"in{i}"], seen[i - 1] + (model.pos_embed if i == 0 else 0))


#################################################################################
#                        Rotary Temporal Position (RoPE)                        #
#################################################################################


def test_rope_logits_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=32)
    q, k = torch.randn(1, 1, 1, 32).expand(1, 1, 6, 32), torch.randn(1, 1, 1, 32).expand(1, 1, 6, 32)
    rq, rk = rope(q), rope(k)
    logits = (rq @ rk.transpose(-1, -2))[0, 0]  # (6, 6): the same q and k placed at every position
    torch.testing.assert_close(logits[1:, 1:], logits[:-1, :-1])  # Toeplitz: only j - i matters
    assert (logits[0] - logits[0, 0]).abs().max() > 0.1, "but the offset does matter"
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # a rotation
    torch.testing.assert_close(rq[:, :, 0], q[:, :, 0], atol=0, rtol=0)  # position 0 is not rotated


def test_rope_makes_temporal_attention_order_aware():
    model = tiny(temporal_pos="rope")
    assert model.temp_embed is None and "temp_embed" not in model.state_dict()
    x, t = inputs()
    reverse = torch.arange(3, -1, -1)
    with torch.no_grad():
        out = model(x, t)
        assert not torch.allclose(model(x[:, reverse], t)[:, reverse], out, atol=1e-4)
        for block in model.blocks:  # without the rotation, attention over frames is order-blind
            block.attn.rope = None
        torch.testing.assert_close(model(x[:, reverse], t)[:, reverse], model(x, t))


#################################################################################
#                     Timestep and Class as Tokens (all_tokens)                 #
#################################################################################


def test_all_tokens_has_no_adaln_and_conditions_through_attention():
    model = tiny(conditioning="all_tokens", num_classes=5)
    names = list(model.state_dict())
    assert not [n for n in names if "adaLN" in n], "no adaLN modulation anywhere"
    assert "blocks.0.norm1.weight" in names and "final_layer.norm_final.bias" in names, "affine norms"
    x, t = inputs()
    with torch.no_grad():
        out = model(x, t, torch.tensor([1, 2]))
        assert not torch.allclose(model(x, t, torch.tensor([3, 2]))[0], out[0]), "the label changes sample 0"
        assert torch.equal(model(x, t, torch.tensor([3, 2]))[1], out[1])
        assert not torch.allclose(model(x, torch.tensor([8, 500]), torch.tensor([1, 2]))[0], out[0])
        for block in model.blocks:  # the tokens' keys/values are the only way in: make them irrelevant
            for attention in (getattr(block, name) for name in block.attentions):
                attention.qkv.weight[HIDDEN : 2 * HIDDEN] = 0  # every key is 0: uniform attention weights
                attention.qkv.bias[HIDDEN : 2 * HIDDEN] = 0
                attention.qkv.weight[2 * HIDDEN :] = 0  # and every value is the bias: no information
        assert torch.equal(
            model(x, t, torch.tensor([3, 2])), model(x, torch.tensor([9, 9]), torch.tensor([1, 2]))
        )


def test_all_tokens_lead_every_frame_through_every_block_and_are_updated_by_them():
    model = tiny(conditioning="all_tokens", num_classes=5)
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x, t = inputs()
    y = torch.tensor([1, 2])
    with torch.no_grad():
        out = model(x, t, y)
        first = [s.clone() for s in seen]
        seen.clear()
        model(x.flip(-1), t, y)  # other frame content, same t and y
    assert out.shape == (2, 4, 8, 8, 8), "the conditioning tokens are dropped before the final layer"
    assert all(s.shape == (2, 4, 2 + GRID * GRID, HIDDEN) for s in first), "[t_emb, y_emb] + l patch tokens"
    assert torch.equal(first[0][:, :, :2], seen[0][:, :, :2]), "block 0 receives the plain embeddings"
    assert not torch.allclose(first[1][:, :, :2], seen[1][:, :, :2]), "blocks update the tokens: not a prefix"


#################################################################################
#                       Compression Patch Embedding (tubelets)                  #
#################################################################################


def test_compression_runs_on_latent_frames_and_restores_them():
    model = tiny(patch_embed="compression", temporal_stride=2)
    assert model.x_embedder.proj.weight.shape == (HIDDEN, 4, 2, PATCH, PATCH)
    assert isinstance(model.frame_upsample.proj, nn.ConvTranspose3d)
    assert model.frame_upsample.proj.kernel_size == model.frame_upsample.proj.stride == (2, 1, 1)
    assert model.temp_embed.shape == (1, 2, HIDDEN), "temp_embed over num_frames / s latent frames"
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    x, t = inputs()
    out = model(x, t)
    assert seen == [(2, 2, 16, HIDDEN)], "the transformer sees 2 latent frames of 16 tokens"
    assert out.shape == (2, 4, 8, 8, 8), "the transposed convolution restores the 4 frames"
    fresh = tiny(perturb=False, patch_embed="compression")
    assert not fresh.frame_upsample.proj.weight.any() and fresh.final_layer.linear.weight.any(), (
        "the last layer starts at zero, the linear decoder before it does not (else both stay 0)"
    )


@pytest.mark.parametrize(("frames", "stride"), [(4, 3), (5, 2)])
def test_compression_needs_whole_tubelets(frames, stride):
    with pytest.raises(
        ValueError, match=rf"num_frames={frames} is not divisible by temporal_stride={stride}"
    ):
        Latte(
            size="tiny", patch_embed="compression", temporal_stride=stride, **{**TINY, "num_frames": frames}
        )
    Latte(size="tiny", patch_embed="uniform", temporal_stride=stride, **{**TINY, "num_frames": frames})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(variant=5), r"variant=5 is unknown; valid variants: 1 \(interleaved\)"),
        (dict(patch_embed="tubes"), r"patch_embed='tubes' is unknown; valid: uniform, compression"),
        (dict(conditioning="cross"), r"conditioning='cross' is unknown; valid: s_adaln, all_tokens"),
        (dict(temporal_pos="learned"), r"temporal_pos='learned' is unknown; valid: absolute, rope"),
        (dict(temporal_stride=0), r"temporal_stride=0 must be a positive integer"),
    ],
)
def test_invalid_axis_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Latte(size="tiny", **{**TINY, **kwargs})


def test_head_and_depth_constraints(monkeypatch):
    monkeypatch.setitem(LATTE_SIZES, "odd_heads", dict(depth=4, hidden_size=36, num_heads=3))
    with pytest.raises(ValueError, match=r"variant 4 splits the heads .*num_heads=3"):
        Latte(size="odd_heads", variant=4, **TINY)
    monkeypatch.setitem(LATTE_SIZES, "odd_head_dim", dict(depth=4, hidden_size=36, num_heads=4))
    with pytest.raises(ValueError, match=r"RoPE rotates channel pairs.*odd head dim 9"):
        Latte(size="odd_head_dim", temporal_pos="rope", **TINY)
    monkeypatch.setitem(LATTE_SIZES, "odd_depth", dict(depth=3, hidden_size=64, num_heads=4))
    with pytest.raises(ValueError, match=r"variant 2 splits the blocks in half: depth=3"):
        Latte(size="odd_depth", variant=2, **TINY)
    assert Latte(size="odd_depth", variant=3, **TINY).depth == 2  # round(3 * 18 / 22)


#################################################################################
#                                ImageNet DiT Init                              #
#################################################################################


def fake_dit(depth: int = 4, learn_sigma: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random DiT state dict in facebookresearch/DiT's layout for the tiny config (1000 classes).

    Weights at std 0.02, a trained DiT's scale: at std 1 a run trained from it overflows within a step or two,
    and whether it does then depends on the rounding of each kernel, not on the code under test.
    """
    generator = torch.Generator().manual_seed(seed)
    d, out = HIDDEN, 8 if learn_sigma else 4
    shapes = {
        "pos_embed": (1, GRID * GRID, d),
        "x_embedder.proj.weight": (d, 4, PATCH, PATCH),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (1001, d),
        "final_layer.linear.weight": (PATCH * PATCH * out, d),
        "final_layer.linear.bias": (PATCH * PATCH * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        for name, rows in {
            "attn.qkv": 3 * d,
            "attn.proj": d,
            "mlp.fc1": 4 * d,
            "adaLN_modulation.1": 6 * d,
        }.items():
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = (rows, d), (rows,)
        shapes[f"blocks.{i}.mlp.fc2.weight"], shapes[f"blocks.{i}.mlp.fc2.bias"] = (d, 4 * d), (d,)
    return {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def test_dit_init_loads_spatial_blocks_and_keeps_temporal_init():
    dit = fake_dit()
    fresh, model = tiny(perturb=False, seed=3), tiny(perturb=False, seed=3)
    report = init_from_dit(model, {"ema": dit})
    state, init = model.state_dict(), fresh.state_dict()
    for i in (0, 2):  # spatial blocks
        for name in ("attn.qkv.weight", "attn.proj.bias", "mlp.fc2.weight", "adaLN_modulation.1.weight"):
            assert torch.equal(state[f"blocks.{i}.{name}"], dit[f"blocks.{i}.{name}"])
    for key in state:
        if key.startswith(("blocks.1.", "blocks.3.", "temp_embed")):
            assert torch.equal(state[key], init[key]), f"{key} keeps its own init"
    for key in (
        "x_embedder.proj.weight",
        "t_embedder.mlp.2.weight",
        "final_layer.linear.weight",
        "pos_embed",
    ):
        assert torch.equal(state[key], dit[key]) and key in report["loaded"]
    assert "y_embedder.embedding_table.weight" in report["dropped"]
    assert "blocks.1.attn.qkv.weight" in report["dropped"] and "blocks.1.attn.qkv.weight" in report["kept"]
    assert not report["skipped"]
    assert len(report["loaded"]) + len(report["dropped"]) == len(dit)


def test_dit_init_variant3_compression_and_shape_mismatch():
    dit = fake_dit()
    model = tiny(perturb=False, seed=3, variant=3, patch_embed="compression", learn_sigma=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_dit(model, dit)
    state = model.state_dict()
    assert torch.equal(state["blocks.2.attn.qkv.weight"], dit["blocks.2.attn.qkv.weight"])
    assert torch.equal(state["blocks.2.adaLN_modulation.1.bias"], dit["blocks.2.adaLN_modulation.1.bias"])
    assert torch.equal(state["blocks.2.attn_temp.qkv.weight"], init["blocks.2.attn_temp.qkv.weight"])
    assert "blocks.3.mlp.fc1.weight" in report["dropped"], "DiT blocks beyond variant 3's depth of 3"
    assert report["skipped"] == {
        "final_layer.linear.weight": "checkpoint (32, 128) vs model (16, 128)",
        "final_layer.linear.bias": "checkpoint (32,) vs model (16,)",
    }
    # A tubelet of two equal frames embeds like DiT's patch embedding of one frame.
    frame = torch.randn(1, 1, 4, 8, 8)
    with torch.no_grad():
        tubelet = model.x_embedder(frame.expand(1, 2, 4, 8, 8))[0, 0]  # (l, d)
        dit_conv = torch.nn.functional.conv2d(frame[0], dit["x_embedder.proj.weight"], stride=PATCH)
    torch.testing.assert_close(tubelet, dit_conv[0].flatten(1).T + dit["x_embedder.proj.bias"])


def test_dit_init_variant4_loads_whole_blocks():
    dit = fake_dit()
    model = tiny(perturb=False, variant=4)
    report = init_from_dit(model, dit)
    assert torch.equal(model.blocks[1].attn.qkv.weight, dit["blocks.1.attn.qkv.weight"]), (
        "factorised-heads blocks have no temporal-only tensors: the whole block starts from DiT's"
    )
    assert not [key for key in report["kept"] if key.startswith("blocks.")]


def test_dit_init_from_a_file_and_all_tokens(tmp_path):
    path = tmp_path / "DiT-XL-2-256x256.pt"
    torch.save(fake_dit(), path)
    model = Latte(size="tiny", conditioning="all_tokens", **TINY)
    report = init_from_dit(model, path)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, fake_dit()["blocks.0.mlp.fc1.weight"])
    assert "blocks.0.adaLN_modulation.1.weight" in report["dropped"], "no adaLN here"
    assert "final_layer.adaLN_modulation.1.weight" in report["dropped"]


def test_dit_init_of_another_width_is_an_error_not_a_silent_partial_init():
    narrow = {k: v[..., : v.shape[-1] // 2] if k.startswith("blocks.") else v for k, v in fake_dit().items()}
    with pytest.raises(ValueError, match=r"does not fit this Latte: blocks\.0\..*hidden 128"):
        init_from_dit(tiny(perturb=False), narrow)


def test_dit_init_missing_file_says_where_to_get_it(tmp_path):
    missing = tmp_path / "nowhere" / "DiT-XL-2-256x256.pt"
    with pytest.raises(FileNotFoundError, match=rf"nowhere/DiT-XL-2-256x256.pt.*{re.escape(DIT_URL)}"):
        init_from_dit(Latte(size="tiny", **TINY), missing)
