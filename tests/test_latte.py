"""Tests for backbones/latte.py against the facts of the official Latte code (its models/latte.py).

The reference forward below is written independently from the formulas (explicit softmax attention,
numpy sin-cos tables, reshape/einsum unpatchify) and reads weights by their official names.
"""

import math

import numpy as np
import pytest
import torch

from backbones.latte import LATTE_SIZES, Latte
from backbones.pretrained import load_official_latte

# Tiny config for CPU checks: size "tiny" = depth 4, hidden 128, heads 4.
TINY = dict(patch_size=2, input_size=8, in_channels=4, num_frames=4)
TINY_DEPTH, TINY_HIDDEN, TINY_HEADS = 4, 128, 4

# The official Latte_models (models/latte.py), built and counted: (trainable, trainable + frozen pos/temp)
# for learn_sigma, F=16, input 32, unconditional.
PAPER_PARAM_COUNTS = {
    ("S", 2): (32_480_672, 32_585_120),
    ("S", 4): (32_536_064, 32_566_784),
    ("S", 8): (32_757_632, 32_769_920),
    ("B", 2): (129_547_040, 129_755_936),
    ("B", 4): (129_657_728, 129_719_168),
    ("B", 8): (130_100_480, 130_125_056),
    ("L", 2): (456_815_648, 457_094_176),
    ("L", 4): (456_963_200, 457_045_120),
    ("L", 8): (457_553_408, 457_586_176),
    ("XL", 2): (673_681_568, 673_994_912),
    ("XL", 4): (673_847_552, 673_939_712),
    ("XL", 8): (674_511_488, 674_548_352),
}


def official_layout(
    depth: int, hidden: int, patch: int, input_size: int, in_channels: int, frames: int, classes: int
) -> dict[str, tuple[int, ...]]:
    """Official state_dict names and shapes (models/latte.py, Latte), learn_sigma=True, mlp_ratio 4."""
    d, out = hidden, 2 * in_channels
    layout = {
        "pos_embed": (1, (input_size // patch) ** 2, d),
        "temp_embed": (1, frames, d),
        "x_embedder.proj.weight": (d, in_channels, patch, patch),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "final_layer.linear.weight": (patch * patch * out, d),
        "final_layer.linear.bias": (patch * patch * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    if classes:
        layout["y_embedder.embedding_table.weight"] = (classes + 1, d)
    for i in range(depth):
        for name, (rows, cols) in {
            "attn.qkv": (3 * d, d),
            "attn.proj": (d, d),
            "mlp.fc1": (4 * d, d),
            "mlp.fc2": (d, 4 * d),
            "adaLN_modulation.1": (6 * d, d),
        }.items():
            layout[f"blocks.{i}.{name}.weight"] = (rows, cols)
            layout[f"blocks.{i}.{name}.bias"] = (rows,)
    return layout


#################################################################################
#                      Independent Reference Implementation                     #
#################################################################################


def ref_sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """Official get_1d_sincos_pos_embed_from_grid: [sin(pos*w), cos(pos*w)], w_k = 1 / 10000^(k / (dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    angles = np.outer(positions, omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def ref_sincos_2d(dim: int, grid: int) -> np.ndarray:
    """Official get_2d_sincos_pos_embed: row-major tokens; first half = column, second half = row."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    return np.concatenate([ref_sincos_1d(dim // 2, cols), ref_sincos_1d(dim // 2, rows)], axis=1)


def reference_forward(
    sd: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, heads: int, patch: int
) -> torch.Tensor:
    """Latte forward in float64 from the official state dict (as the official Latte.forward), b f c h w."""
    w = {k: v.double() for k, v in sd.items()}
    b, f, c, h, _ = x.shape
    d, grid, depth = (
        w["pos_embed"].shape[-1],
        h // patch,
        1 + max(int(k.split(".")[1]) for k in w if "blocks" in k),
    )
    n_tok, hd = grid * grid, d // heads

    def linear(z, name):
        return z @ w[name + ".weight"].T + w[name + ".bias"]

    def layer_norm(z):
        mu = z.mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + 1e-6)

    def silu(z):
        return z * torch.sigmoid(z)

    def gelu_tanh(z):
        return 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

    def block(z, cvec, i):
        m = linear(silu(cvec), f"blocks.{i}.adaLN_modulation.1")
        sh1, sc1, g1, sh2, sc2, g2 = (m[:, k * d : (k + 1) * d, None].transpose(1, 2) for k in range(6))
        a = layer_norm(z) * (1 + sc1) + sh1
        qkv = linear(a, f"blocks.{i}.attn.qkv").reshape(z.shape[0], z.shape[1], 3, heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (n, L, heads, hd)
        logits = torch.einsum("nlhe,nmhe->nhlm", q, k) / math.sqrt(hd)
        att = torch.exp(logits - logits.amax(-1, keepdim=True))
        att = att / att.sum(-1, keepdim=True)
        o = torch.einsum("nhlm,nmhe->nlhe", att, v).reshape(z.shape)
        z = z + g1 * linear(o, f"blocks.{i}.attn.proj")
        m2 = layer_norm(z) * (1 + sc2) + sh2
        return z + g2 * linear(gelu_tanh(linear(m2, f"blocks.{i}.mlp.fc1")), f"blocks.{i}.mlp.fc2")

    # Patch embedding as a linear map on (c, p_row, p_col)-flattened patches, plus the 2-D table.
    patches = x.double().reshape(b * f, c, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b * f, n_tok, c * patch * patch)
    z = patches @ w["x_embedder.proj.weight"].reshape(d, -1).T + w["x_embedder.proj.bias"]
    z = z + torch.from_numpy(ref_sincos_2d(d, grid))
    # Timestep: cos-first 256-dim frequencies (in float32, as the official code), then Linear-SiLU-Linear.
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    angles = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).double()
    cond = linear(silu(linear(temb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    if y is not None:
        cond = cond + w["y_embedder.embedding_table.weight"][y]
    cond_frames, cond_tokens = cond.repeat_interleave(f, 0), cond.repeat_interleave(n_tok, 0)
    for i in range(depth):
        if i % 2 == 0:
            z = block(z, cond_frames, i)
        else:
            z = z.reshape(b, f, n_tok, d).permute(0, 2, 1, 3).reshape(b * n_tok, f, d)
            if i == 1:
                z = z + torch.from_numpy(ref_sincos_1d(d, np.arange(f)))
            z = block(z, cond_tokens, i)
            z = z.reshape(b, n_tok, f, d).permute(0, 2, 1, 3).reshape(b * f, n_tok, d)
    mf = linear(silu(cond_frames), "final_layer.adaLN_modulation.1")
    z = layer_norm(z) * (1 + mf[:, None, d:]) + mf[:, None, :d]
    z = linear(z, "final_layer.linear")
    c_out = z.shape[-1] // (patch * patch)
    z = torch.einsum("nhwpqc->nchpwq", z.reshape(b * f, grid, grid, patch, patch, c_out))
    return z.reshape(b, f, c_out, h, h)


def random_official_state_dict(classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tiny official-layout state dict with non-zero random values everywhere and true sin-cos tables."""
    generator = torch.Generator().manual_seed(seed)
    layout = official_layout(TINY_DEPTH, TINY_HIDDEN, 2, 8, 4, 4, classes)
    sd = {}
    for key, shape in layout.items():
        noise = torch.randn(shape, generator=generator)
        if key == "pos_embed":
            sd[key] = torch.from_numpy(ref_sincos_2d(TINY_HIDDEN, 4)).float()[None]
        elif key == "temp_embed":
            sd[key] = torch.from_numpy(ref_sincos_1d(TINY_HIDDEN, np.arange(4))).float()[None]
        elif key.endswith("embedding_table.weight"):
            sd[key] = noise
        elif len(shape) == 1:
            sd[key] = 0.1 * noise
        else:
            sd[key] = noise / math.sqrt(math.prod(shape[1:]))
    return sd


def tiny_inputs(classes: int, seed: int = 1):
    """Random latents (2, 4, 4, 8, 8), timesteps and labels (None when unconditional)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 4, 8, 8, generator=generator)
    t = torch.tensor([3, 999])
    y = torch.tensor([1, classes - 1]) if classes else None
    return x, t, y


#################################################################################
#                                     Tests                                     #
#################################################################################


@pytest.mark.parametrize(("size", "patch"), list(PAPER_PARAM_COUNTS))
def test_parameter_counts_match_paper_table(size, patch):
    with torch.device("meta"):
        model = Latte(size=size, patch_size=patch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert (trainable, total) == PAPER_PARAM_COUNTS[(size, patch)]


def test_parameter_count_xl2_ucf101():
    with torch.device("meta"):
        model = Latte(size="XL", patch_size=2, num_classes=101)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 673_799_072


@pytest.mark.parametrize(("classes", "n_keys"), [(0, 292), (101, 293)])
def test_state_dict_layout_is_official(classes, n_keys):
    with torch.device("meta"):
        model = Latte(size="XL", patch_size=2, num_classes=classes)
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert layout == official_layout(28, 1152, 2, 32, 4, 16, classes)
    assert len(layout) == n_keys
    assert not list(model.buffers()), "the official model has no buffers"
    assert not model.pos_embed.requires_grad and not model.temp_embed.requires_grad


@pytest.mark.parametrize("classes", [0, 5])
def test_fresh_model_outputs_zeros_and_checks_labels(classes):
    torch.manual_seed(0)
    model = Latte(size="tiny", num_classes=classes, **TINY)
    x, t, y = tiny_inputs(classes)
    out = model(x, t, y)
    assert out.shape == (2, 4, 8, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))
    wrong_y = None if classes else torch.tensor([0, 1])
    with pytest.raises(AssertionError, match="y must be given iff"):
        model(x, t, wrong_y)


def test_learn_sigma_false_keeps_channels():
    model = Latte(size="tiny", learn_sigma=False, **TINY)
    assert model.out_channels == 4
    assert model(torch.randn(1, 4, 4, 8, 8), torch.tensor([10])).shape == (1, 4, 4, 8, 8)


def test_fixed_embeddings_follow_formulas():
    model = Latte(size="tiny", **TINY)
    pos, temp = model.pos_embed[0].double(), model.temp_embed[0].double()
    torch.testing.assert_close(pos, torch.from_numpy(ref_sincos_2d(TINY_HIDDEN, 4)), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        temp, torch.from_numpy(ref_sincos_1d(TINY_HIDDEN, np.arange(4))), atol=1e-6, rtol=0
    )
    half = TINY_HIDDEN // 2
    # Token 1 = (row 0, col 1): the first half encodes the column.
    assert pos[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)  # 0.8415
    assert pos[1, half].item() == 0.0
    # Token 4 = (row 1, col 0) on the 4x4 grid: the second half encodes the row.
    assert pos[4, 0].item() == 0.0
    assert pos[4, half].item() == pytest.approx(math.sin(1.0), abs=1e-6)


@pytest.mark.parametrize("classes", [0, 5])
def test_official_checkpoint_matches_reference_forward(tmp_path, classes):
    sd = random_official_state_dict(classes)
    path = tmp_path / "latte.pt"
    torch.save({"ema": sd}, path)
    model = load_official_latte(path, model="Latte-tiny/2", input_size=8, num_frames=4)
    assert not model.training and model.num_classes == classes
    x, t, y = tiny_inputs(classes)
    with torch.no_grad():
        out = model(x, t, y)
        out_float_t = model(x, t.float(), y)
    ref = reference_forward(sd, x, t, y, heads=TINY_HEADS, patch=2)
    assert ref.abs().max() > 0.1, "the check is only meaningful on non-trivial outputs"
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_float_t, out, atol=0, rtol=0)


def test_label_dropout_uses_null_class():
    sd = random_official_state_dict(5)
    model = load_official_latte({"ema": sd}, model="Latte-tiny/2", input_size=8, num_frames=4)
    x, t, y = tiny_inputs(5)
    model.train()
    model.y_embedder.dropout_prob = 1.0  # every label dropped in training mode
    with torch.no_grad():
        out = model(x, t, y)
    ref_null = reference_forward(sd, x, t, torch.tensor([5, 5]), heads=TINY_HEADS, patch=2)
    torch.testing.assert_close(out.double(), ref_null, atol=1e-5, rtol=1e-5)
    model.eval()
    table = model.y_embedder.embedding_table.weight
    forced = model.y_embedder(y, force_drop_ids=torch.tensor([1, 0]))
    assert torch.equal(forced, torch.stack([table[5], table[y[1]]]))


def test_loader_accepts_model_key_module_prefix_and_img_names():
    sd = random_official_state_dict(5)
    ema = load_official_latte({"ema": sd}, model="Latte-tiny/2", input_size=8, num_frames=4)
    wrapped = {"model": {f"module.{k}": v for k, v in sd.items()}}
    other = load_official_latte(wrapped, model="LatteIMG-tiny/2", input_size=8, num_frames=4)
    x, t, y = tiny_inputs(5)
    with torch.no_grad():
        assert torch.equal(ema(x, t, y), other(x, t, y))
    assert all(v.device.type == "cpu" for v in other.state_dict().values())
    assert other.x_embedder.proj.weight.data_ptr() != sd["x_embedder.proj.weight"].data_ptr(), "no aliasing"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(size="XXL"), r"size='XXL' is unknown; valid sizes: S, B, L, XL, tiny"),
        (dict(size="tiny", input_size=30, patch_size=4), r"input_size=30 .*patch_size=4.*whole patches"),
        (dict(size="tiny", patch_size=0), r"patch_size=0"),
        (dict(size="tiny", num_frames=0), r"num_frames=0"),
        (dict(size="tiny", num_classes=-1), r"num_classes=-1"),
        (dict(size="tiny", class_dropout_prob=1.5), r"class_dropout_prob=1.5"),
    ],
)
def test_invalid_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Latte(**kwargs)


def test_odd_depth_raises(monkeypatch):
    monkeypatch.setitem(LATTE_SIZES, "odd", dict(depth=3, hidden_size=64, num_heads=4))
    with pytest.raises(ValueError, match=r"depth=3, but depth must be even"):
        Latte(size="odd", **TINY)


def test_forward_rejects_wrong_layout():
    model = Latte(size="tiny", **TINY)
    with pytest.raises(AssertionError, match="got 3 frames, fewer than num_frames=4"):
        model(torch.randn(1, 3, 4, 8, 8), torch.tensor([1]))  # more frames = clip + images; fewer is wrong
    with pytest.raises(AssertionError, match="in_channels=4"):
        model(torch.randn(1, 4, 8, 4, 4), torch.tensor([1]))  # b c f h w is refused
    with pytest.raises(AssertionError, match=r"\(b, f, c, h, w\)"):
        model(torch.randn(4, 4, 8, 8), torch.tensor([1]))


def test_loader_errors():
    sd = random_official_state_dict(0)
    tiny = dict(model="Latte-tiny/2", input_size=8, num_frames=4)
    with pytest.raises(ValueError, match=r"neither an 'ema' nor a 'model' entry.*'state_dict'"):
        load_official_latte({"state_dict": sd}, **tiny)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        load_official_latte({"ema": {**sd, "extra.weight": torch.zeros(1)}}, **tiny)
    missing = {k: v for k, v in sd.items() if k != "final_layer.linear.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['final_layer.linear.bias'\]"):
        load_official_latte({"ema": missing}, **tiny)
    with pytest.raises(ValueError, match=r"temp_embed: checkpoint \(1, 4, 128\) vs model \(1, 8, 128\)"):
        load_official_latte({"ema": sd}, model="Latte-tiny/2", input_size=8, num_frames=8)
    with pytest.raises(
        ValueError, match=r"model='Latte-XXL/2' is not a Latte model name; valid names: .*Latte-XL/2"
    ):
        load_official_latte({"ema": sd}, model="Latte-XXL/2")


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = load_official_latte(
        {"ema": random_official_state_dict(5)}, model="Latte-tiny/2", input_size=8, num_frames=4
    )
    model.train()
    x, t, y = tiny_inputs(5)
    model(x, t, y).square().mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert param.grad is None, f"frozen {name} received a gradient"


def test_the_attention_across_frames_takes_the_math_kernel_only_in_compiled_bf16_training_of_whole_clips():
    """Where measured faster (compiled bf16 fwd + bwd, 16 frames), the math kernel; else torch's choice."""
    from torch.nn.attention import SDPBackend

    from backbones.latte import across_frames_kernels

    clip = torch.zeros(2, 4, 16, 8, dtype=torch.bfloat16)  # (b*l, h, f, e)
    cached = torch.zeros(2, 4, 20, 8, dtype=torch.bfloat16)  # keys of 4 cached frames + the 16 new ones
    assert across_frames_kernels(clip, clip) is None, "eager keeps torch's kernel order"

    @torch.compile(fullgraph=True, backend="eager")
    def math_chosen(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.tensor(across_frames_kernels(q, k) == (SDPBackend.MATH,))

    assert math_chosen(clip, clip), "compiled bf16 training of a 16-frame clip: the math kernel"
    assert not math_chosen(clip.float(), clip.float()), "fp32 runs were not measured"
    assert not math_chosen(clip, cached), "KV-cached streaming was not measured"
    with torch.no_grad():
        assert not math_chosen(clip, clip), "sampling (no autograd) was not measured"


@pytest.mark.parametrize(
    "kwargs, num_images",
    [({}, 0), ({"patch_embed": "compression"}, 0), ({"variant": 3}, 2), ({"conditioning": "all_tokens"}, 0)],
)
def test_every_block_gets_its_tokens_contiguous(kwargs, num_images):
    """A convolution's output viewed as tokens has d slowest in memory; every block must see its tokens
    (b, t, l, d) contiguous, or each LayerNorm copies them and each residual add runs strided."""
    torch.manual_seed(0)
    model = Latte(size="tiny", input_size=8, num_frames=4, **kwargs)
    layouts = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda _, args: layouts.append(args[0].is_contiguous()))
    model(torch.randn(2, 4 + num_images, 4, 8, 8), torch.tensor([3, 7]), num_images=num_images)
    assert len(layouts) == len(model.blocks) and all(layouts), f"blocks saw strided tokens: {layouts}"
