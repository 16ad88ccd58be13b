"""The model zoo: exact official shapes and counts, official-code equivalence, every layer
type and backend, checkpoint resizing, FLOP figures, compile / autocast / memory formats.

Expected state-dict layouts and the reference forward passes below are written from the
published description of the official models, independently of ``spectformer.models``.
"""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

import spectformer
from helpers import check_bf16_autocast_and_channels_last, rel_err
from spectformer.models import SPECTRAL_LAYERS, flop_analysis, haar_dwt2, haar_idwt2
from spectformer_kernels import SpectralGatingNetwork

VANILLA = {  # name: (embed_dim, depth, heads, alpha, exact params)
    "spectformer_t": (256, 12, 4, 4, 9_158_376),
    "spectformer_xs": (384, 12, 6, 4, 20_028_520),
    "spectformer_s": (384, 19, 6, 4, 32_449_768),
    "spectformer_b": (512, 19, 8, 4, 57_159_656),
    "gfnet_ti": (256, 12, 4, 12, 7_511_784),
    "gfnet_xs": (384, 12, 6, 12, 15_985_768),
    "gfnet_s": (384, 19, 6, 19, 24_869_608),
    "gfnet_b": (512, 19, 8, 19, 43_120_616),
}
HIERARCHICAL = {  # name: (stem, dims, depths, heads, mlp ratios, params with aux, without)
    "spectformer_h_s": (32, (64, 128, 320, 448), (3, 4, 6, 3), (2, 4, 10, 14), (8, 8, 4, 4),
                        22_226_928, 21_777_928),
    "spectformer_h_b": (64, (64, 128, 320, 512), (3, 4, 12, 3), (2, 4, 10, 16), (8, 8, 4, 4),
                        33_052_880, 32_539_880),
    "spectformer_h_l": (64, (96, 192, 384, 512), (3, 6, 18, 3), (3, 6, 12, 16), (8, 8, 4, 4),
                        54_675_792, 54_162_792),
}
# The paper's / GFNet's figures (G, fvcore convention).
PAPER_GFLOPS = {"spectformer_t": 1.84, "spectformer_xs": 4.00, "spectformer_s": 6.63,
                "spectformer_b": 11.57}


def on_meta(name, **overrides):
    """Build without allocating or initialising weights: shapes and counts only."""
    with torch.device("meta"):
        return spectformer.create_model(name, **overrides)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# -- expected official layouts --------------------------------------------------------

def vanilla_layout(dim, depth, alpha, grid=(14, 14), classes=1000, in_chans=3, patch=16):
    h, w = grid
    layout = {"pos_embed": (1, h * w, dim), "patch_embed.proj.weight": (dim, in_chans, patch, patch),
              "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}."
        for name in ("norm1", "norm2"):
            layout[p + name + ".weight"] = layout[p + name + ".bias"] = (dim,)
        if i < alpha:
            layout[p + "filter.complex_weight"] = (h, w // 2 + 1, dim, 2)
        else:
            layout.update({p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                           p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,)})
        layout.update({p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
                       p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)})
    layout.update({"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim),
                   "head.bias": (classes,)})
    return layout


def hierarchical_layout(stem, dims, depths, ratios, img=224, classes=1000, aux=True):
    layout = {}
    for conv, bn, c_in, k in ((0, 1, 3, 7), (3, 4, stem, 3), (6, 7, stem, 3)):
        layout[f"patch_embed1.conv.{conv}.weight"] = (stem, c_in, k, k)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            layout[f"patch_embed1.conv.{bn}.{buf}"] = (stem,)
        layout[f"patch_embed1.conv.{bn}.num_batches_tracked"] = ()
    grid = img // 4
    for i, (dim, depth, ratio) in enumerate(zip(dims, depths, ratios)):
        pe = f"patch_embed{i + 1}."
        layout[pe + "proj.weight"] = (dim, stem if i == 0 else dims[i - 1], 3, 3)
        layout[pe + "proj.bias"] = layout[pe + "norm.weight"] = layout[pe + "norm.bias"] = (dim,)
        hidden = dim * ratio
        for j in range(depth):
            p = f"block{i + 1}.{j}."
            for name in ("norm1", "norm2"):
                layout[p + name + ".weight"] = layout[p + name + ".bias"] = (dim,)
            if i < 2:
                layout[p + "attn.complex_weight"] = (grid, grid // 2 + 1, dim, 2)
            else:
                layout.update({p + "attn.q.weight": (dim, dim), p + "attn.q.bias": (dim,),
                               p + "attn.kv.weight": (2 * dim, dim), p + "attn.kv.bias": (2 * dim,),
                               p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,)})
            layout.update({p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
                           p + "mlp.dwconv.dwconv.weight": (hidden, 1, 3, 3),
                           p + "mlp.dwconv.dwconv.bias": (hidden,),
                           p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,)})
        layout[f"norm{i + 1}.weight"] = layout[f"norm{i + 1}.bias"] = (dim,)
        grid //= 2
    d, p = dims[-1], "post_network.0."
    layout.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "norm2.weight": (d,),
                   p + "norm2.bias": (d,), p + "attn.kv.weight": (2 * d, d), p + "attn.kv.bias": (2 * d,),
                   p + "attn.q.weight": (d, d), p + "attn.q.bias": (d,), p + "attn.proj.weight": (d, d),
                   p + "attn.proj.bias": (d,), p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                   p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,),
                   "head.weight": (classes, d), "head.bias": (classes,)})
    if aux:
        layout.update({"aux_head.weight": (classes, d), "aux_head.bias": (classes,)})
    return layout


def random_checkpoint(layout, seed=0):
    """An official-layout state dict with random values (positive BN variances)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("norm1.weight", "norm2.weight", "norm.weight")) or ".conv.1.weight" in key:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


# -- registry, counts, key names -------------------------------------------------------

def test_registry_lists_every_model():
    gfnet_h = {"gfnet_h_ti", "gfnet_h_s", "gfnet_h_b"}  # tested in test_gfnet_h.py
    expected = set(VANILLA) | set(HIERARCHICAL) | gfnet_h | {"spectformer_digits"}
    assert set(spectformer.list_models()) == expected
    assert spectformer.list_models("spectformer_h_*") == sorted(HIERARCHICAL)


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match="unknown model 'spectformer_tt'.*spectformer_t"):
        spectformer.create_model("spectformer_tt")


@pytest.mark.parametrize("name", sorted(VANILLA))
def test_vanilla_params_and_official_keys(name):
    dim, depth, _, alpha, params = VANILLA[name]
    model = on_meta(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert shapes(model) == vanilla_layout(dim, depth, alpha)
    assert not list(model.buffers())
    if name == "spectformer_s":
        assert len(model.state_dict()) == 223


@pytest.mark.parametrize("name", sorted(HIERARCHICAL))
def test_hierarchical_params_and_official_keys(name):
    stem, dims, depths, _, ratios, with_aux, without_aux = HIERARCHICAL[name]
    model = on_meta(name)
    assert sum(p.numel() for p in model.parameters()) == with_aux
    assert shapes(model) == hierarchical_layout(stem, dims, depths, ratios)
    no_aux = on_meta(name, token_label=False)
    assert sum(p.numel() for p in no_aux.parameters()) == without_aux


def test_digits_model_config():
    model = spectformer.create_model("spectformer_digits")
    assert shapes(model) == vanilla_layout(96, 6, 2, grid=(8, 8), classes=10, in_chans=1, patch=4)
    assert [b.attn.num_heads for b in model.blocks[2:]] == [3] * 4
    assert model.default_cfg["input_size"] == (1, 32, 32)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    rgb = spectformer.create_model("spectformer_digits", in_chans=3, num_classes=4, depth=3)
    assert rgb.default_cfg["input_size"] == (3, 32, 32) and rgb.default_cfg["num_classes"] == 4
    assert len(rgb.blocks) == 3 and rgb(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_default_cfg_follows_overrides():
    cfg = on_meta("spectformer_xs", img_size=384, num_classes=10).default_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["num_classes"] == 10
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["classifier"] == "head"
    assert on_meta("spectformer_h_b").default_cfg["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("alpha", [0, 4, 12])
def test_alpha_sets_the_block_order(alpha):
    model = spectformer.create_model("spectformer_t", alpha=alpha, img_size=32, num_classes=5)
    kinds = ["filter" if hasattr(b, "filter") else "attn" for b in model.blocks]
    assert kinds == ["filter"] * alpha + ["attn"] * (12 - alpha)
    assert shapes(model) == vanilla_layout(256, 12, alpha, grid=(2, 2), classes=5)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gfnet_stays_all_spectral_at_other_depths():
    assert on_meta("gfnet_ti", depth=5).alpha == 5


def test_bad_configurations_fail_clearly():
    with pytest.raises(ValueError, match="alpha"):
        on_meta("spectformer_t", alpha=13)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        on_meta("spectformer_t", img_size=100)
    with pytest.raises(ValueError, match="num_heads"):
        on_meta("spectformer_t", num_heads=7)
    with pytest.raises(ValueError, match="spectral_layer"):
        on_meta("spectformer_t", spectral_layer="fourier")
    with pytest.raises(TypeError, match="unexpected keyword"):
        spectformer.create_model("spectformer_t", embed_dims=3)
    model = spectformer.create_model("spectformer_digits")
    with pytest.raises(ValueError, match=r"expected images \(B, 1, 32, 32\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 64, 64\)"):
        tiny_hierarchical()(torch.randn(1, 3, 96, 96))
    for name, arg in (("gfnet_h_ti", "depths"), ("spectformer_h_s", "num_heads")):
        with pytest.raises(ValueError, match=f"{arg} must give one value for each of the 4 stages"):
            on_meta(name, **{arg: (1, 2, 3)})


@pytest.mark.parametrize("name", ["spectformer_digits", "gfnet_h_ti", "spectformer_h_s"])
def test_reset_classifier_gives_a_fresh_head_or_none(name):
    model = spectformer.create_model(name, img_size=32 if name == "spectformer_digits" else 64)
    images = torch.randn(2, *model.default_cfg["input_size"])
    model.reset_classifier(5)
    heads = [model.head] + ([model.aux_head] if getattr(model, "token_label", False) else [])
    for head in heads:
        assert head.out_features == 5 and torch.count_nonzero(head.bias) == 0
        assert 0 < head.weight.std().item() < 0.03  # trunc-normal, std 0.02
    assert model.eval()(images).shape == (2, 5)
    model.reset_classifier(0)
    assert isinstance(model.head, torch.nn.Identity) and model.num_classes == 0
    assert model(images).shape == (2, model.num_features)


# -- forward / backward everywhere -----------------------------------------------------

@pytest.mark.parametrize("name", sorted(VANILLA) + sorted(HIERARCHICAL) + ["spectformer_digits"])
def test_every_model_trains_on_a_small_input(name):
    torch.manual_seed(0)
    size = 32 if name == "spectformer_digits" else 64
    chans = 1 if name == "spectformer_digits" else 3
    model = spectformer.create_model(name, img_size=size, num_classes=7).train()
    logits = model(torch.randn(2, chans, size, size))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def tiny_hierarchical(**overrides):
    config = dict(img_size=64, stem_hidden_dim=8, embed_dims=(16, 24, 32, 40), num_heads=(1, 2, 2, 4),
                  depths=(1, 1, 1, 1), num_classes=6)
    return spectformer.create_model("spectformer_h_s", **{**config, **overrides})


@pytest.mark.parametrize("layer", SPECTRAL_LAYERS)
@pytest.mark.parametrize("img_size", [32, 28])  # 8x8 and odd 7x7 token grids
def test_every_spectral_layer_vanilla(layer, img_size):
    torch.manual_seed(0)
    model = spectformer.create_model("spectformer_digits", spectral_layer=layer, img_size=img_size)
    out = model(torch.randn(2, 1, img_size, img_size))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is not None for p in model.parameters())
    mixer = type(model.blocks[0].filter)
    assert (mixer is SpectralGatingNetwork) == (layer == "fgn")


@pytest.mark.parametrize("layer", SPECTRAL_LAYERS)
def test_every_spectral_layer_hierarchical(layer):
    torch.manual_seed(0)
    model = tiny_hierarchical(spectral_layer=layer)
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert out.shape == (2, 6) and torch.isfinite(out).all()
    assert all(p.grad is not None for p in model.parameters())


def test_haar_is_orthonormal_and_inverts():
    x = torch.randn(2, 6, 10, 3, dtype=torch.float64)
    bands = haar_dwt2(x)
    assert bands.shape == (4, 2, 3, 5, 3)
    assert torch.allclose(bands.square().sum(), x.square().sum())
    assert torch.allclose(haar_idwt2(bands), x)
    cell = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).reshape(1, 2, 2, 1)
    # LL = mean * 2, LH = (left - right) / 2, HL = (top - bottom) / 2, HH = diagonal difference / 2.
    assert haar_dwt2(cell).flatten().tolist() == [5.0, -1.0, -2.0, 0.0]


def test_wavelet_gating_scales_subbands():
    model = spectformer.create_model("spectformer_digits", spectral_layer="wgn", img_size=28)
    layer = model.blocks[0].filter
    x = torch.randn(2, 49, 96, dtype=torch.float64)
    layer.double()
    assert torch.allclose(layer(x, (7, 7)), x)  # unit weights: the identity, odd grid included
    with torch.no_grad():
        layer.subband_weight[1:] = 0  # keep the LL band only: 2x2 cell means
    grid = x.reshape(2, 7, 7, 96)
    padded = F.pad(grid, (0, 0, 0, 1, 0, 1))
    means = F.avg_pool2d(padded.permute(0, 3, 1, 2), 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    expected = means.permute(0, 2, 3, 1)[:, :7, :7].reshape(2, 49, 96)
    assert torch.allclose(layer(x, (7, 7)), expected)


def test_fourier_mixing_is_real_part_of_fft2():
    model = spectformer.create_model("spectformer_digits", spectral_layer="fn")
    x = torch.randn(2, 64, 96)
    expected = torch.fft.fft2(x.reshape(2, 8, 8, 96).double(), dim=(1, 2), norm="ortho").real
    assert rel_err(model.blocks[0].filter(x, (8, 8)), expected.reshape(2, 64, 96)) < 1e-6


def test_afno_skip_and_block_diagonal_mixing():
    model = spectformer.create_model("spectformer_digits", spectral_layer="afno")
    layer = model.blocks[0].filter.double()
    x = torch.randn(2, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    assert torch.allclose(layer(x, (8, 8)), x)  # zero MLP: only the skip connection remains
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    y = layer(x, (8, 8))
    x2 = x.clone()
    x2[..., 12:] += 1.0  # channels outside block 0 (12 channels per block) must not affect it
    assert torch.allclose(layer(x2, (8, 8))[..., :12], y[..., :12])
    assert not torch.allclose(y, x)


# -- official-code equivalence ---------------------------------------------------------

def _ln(state, z, prefix, eps=1e-6):
    return F.layer_norm(z, z.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps)


def _lin(state, z, prefix):
    return F.linear(z, state[prefix + ".weight"], state[prefix + ".bias"])


def _global_filter(z, weight, h, w):
    b, n, c = z.shape
    spec = torch.fft.rfft2(z.reshape(b, h, w, c), dim=(1, 2), norm="ortho") * torch.view_as_complex(weight)
    return torch.fft.irfft2(spec, s=(h, w), dim=(1, 2), norm="ortho").reshape(b, n, c)


def _softmax_attention(q, k, v):
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v


def official_vanilla(state, x, depth, alpha, heads, patch):
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    h, w = t.shape[2:]
    t = t.flatten(2).transpose(1, 2) + state["pos_embed"]
    b, n, c = t.shape
    for i in range(depth):
        p = f"blocks.{i}."
        if i < alpha:
            z = _global_filter(_ln(state, t, p + "norm1"), state[p + "filter.complex_weight"], h, w)
            t = t + _lin(state, F.gelu(_lin(state, _ln(state, z, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
        else:
            qkv = _lin(state, _ln(state, t, p + "norm1"), p + "attn.qkv")
            q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            t = t + _lin(state, _softmax_attention(q, k, v).transpose(1, 2).reshape(b, n, c), p + "attn.proj")
            t = t + _lin(state, F.gelu(_lin(state, _ln(state, t, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
    return _lin(state, _ln(state, t, "norm").mean(1), "head")


def official_hierarchical(state, x, depths, heads):
    def bn(z, p):
        return F.batch_norm(z, state[p + ".running_mean"], state[p + ".running_var"],
                            state[p + ".weight"], state[p + ".bias"], False, 0.0, 1e-5)
    z = x
    for conv, stride, pad in ((0, 2, 3), (3, 1, 1), (6, 1, 1)):
        z = F.relu(bn(F.conv2d(z, state[f"patch_embed1.conv.{conv}.weight"], stride=stride, padding=pad),
                      f"patch_embed1.conv.{conv + 1}"))
    b = x.shape[0]
    for i in range(4):
        pe = f"patch_embed{i + 1}"
        z = F.conv2d(z, state[pe + ".proj.weight"], state[pe + ".proj.bias"], stride=2, padding=1)
        h, w = z.shape[2:]
        t = _ln(state, z.flatten(2).transpose(1, 2), pe + ".norm", eps=1e-5)
        n, c = t.shape[1:]
        for j in range(depths[i]):
            p = f"block{i + 1}.{j}."
            y = _ln(state, t, p + "norm1")
            if i < 2:
                y = _global_filter(y, state[p + "attn.complex_weight"], h, w)
            else:
                q = _lin(state, y, p + "attn.q").reshape(b, n, heads[i], -1).transpose(1, 2)
                k, v = _lin(state, y, p + "attn.kv").reshape(b, n, 2, heads[i], -1).permute(2, 0, 3, 1, 4)
                y = _lin(state, _softmax_attention(q, k, v).transpose(1, 2).reshape(b, n, c), p + "attn.proj")
            t = t + y
            y = _lin(state, _ln(state, t, p + "norm2"), p + "mlp.fc1")
            hid = y.shape[-1]
            y = F.conv2d(y.transpose(1, 2).reshape(b, hid, h, w), state[p + "mlp.dwconv.dwconv.weight"],
                         state[p + "mlp.dwconv.dwconv.bias"], padding=1, groups=hid)
            t = t + _lin(state, F.gelu(y.flatten(2).transpose(1, 2)), p + "mlp.fc2")
        if i < 3:
            z = _ln(state, t, f"norm{i + 1}").reshape(b, h, w, c).permute(0, 3, 1, 2)
    t = torch.cat((t.mean(1, keepdim=True), t), dim=1)
    p, hd = "post_network.0.", heads[-1]
    y = _ln(state, t, p + "norm1")
    k, v = _lin(state, y, p + "attn.kv").reshape(b, n + 1, 2, hd, -1).permute(2, 0, 3, 1, 4)
    q = _lin(state, y[:, :1], p + "attn.q").reshape(b, hd, 1, -1)
    cls = t[:, :1] + _lin(state, _softmax_attention(q, k, v).transpose(1, 2).reshape(b, 1, c), p + "attn.proj")
    cls = cls + _lin(state, F.gelu(_lin(state, _ln(state, cls, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
    t = _ln(state, torch.cat((cls, t[:, 1:]), dim=1), "norm4")
    return _lin(state, t[:, 0], "head") + 0.5 * _lin(state, t[:, 1:], "aux_head").max(1).values


@pytest.mark.parametrize("backend", ["reference", "dft"])
def test_official_vanilla_checkpoint_gives_official_logits(backend):
    state = {k: v.double() for k, v in random_checkpoint(vanilla_layout(256, 12, 4, grid=(4, 4))).items()}
    model = spectformer.create_model("spectformer_t", img_size=64, backend=backend).double().eval()
    result = spectformer.load_checkpoint(model, {"model": {"module." + k: v for k, v in state.items()},
                                                 "epoch": 3})
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    assert rel_err(model(x), official_vanilla(state, x, 12, 4, heads=4, patch=16)) < 1e-10


def test_official_hierarchical_checkpoint_gives_official_logits():
    _, dims, depths, heads, ratios, _, _ = HIERARCHICAL["spectformer_h_s"]
    layout = hierarchical_layout(32, dims, depths, ratios, img=64)
    state = random_checkpoint(layout)
    model = spectformer.create_model("spectformer_h_s", img_size=64).double().eval()
    spectformer.load_checkpoint(model, {"state_dict": state})  # strict
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    assert rel_err(model(x), official_hierarchical(state, x, depths, heads)) < 1e-10
    cls_logits, token_logits = model.forward_dense(x)
    assert cls_logits.shape == (2, 1000) and token_logits.shape == (2, 4, 1000)


# -- checkpoints and resolution --------------------------------------------------------

def test_load_checkpoint_resizes_to_a_new_resolution(tmp_path):
    state = random_checkpoint(vanilla_layout(96, 6, 2, grid=(8, 8), classes=10, in_chans=1, patch=4))
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=5e-4), "epoch": 299}, path)
    model = spectformer.create_model("spectformer_digits", img_size=48)  # 12x12 grid
    spectformer.load_checkpoint(model, path)
    # Positions: bicubic over the 8x8 grid -> 12x12.
    pos = state["pos_embed"].reshape(1, 8, 8, 96).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(12, 12), mode="bicubic", align_corners=False)
    assert torch.allclose(model.pos_embed, pos.permute(0, 2, 3, 1).reshape(1, 144, 96))
    # Filters: 2C channels on the (8, 5) grid, bicubic with aligned corners -> (12, 7).
    for i in range(2):
        old = state[f"blocks.{i}.filter.complex_weight"]
        expected = torch.stack([
            F.interpolate(old[None, None, :, :, ch, part], size=(12, 7), mode="bicubic",
                          align_corners=True)[0, 0]
            for ch in range(96) for part in range(2)], dim=-1).reshape(12, 7, 96, 2)
        assert torch.allclose(model.blocks[i].filter.complex_weight, expected, atol=1e-6)
    assert torch.equal(model.head.weight, state["head.weight"])
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, 10)
    wide = spectformer.create_model("spectformer_digits", img_size=(32, 48))  # 8x12 grid
    spectformer.load_checkpoint(wide, state)
    assert wide.pos_embed.shape == (1, 96, 96)
    assert wide.blocks[1].filter.complex_weight.shape == (8, 7, 96, 2)
    assert wide(torch.randn(1, 1, 32, 48)).shape == (1, 10)


def test_load_checkpoint_same_grid_is_exact_and_rejects_bad_input():
    model = tiny_hierarchical(img_size=96)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    other = tiny_hierarchical(img_size=64)
    spectformer.load_checkpoint(other, state)  # hierarchical filters resize 24x13 -> 16x9
    assert other.block1[0].attn.complex_weight.shape == (16, 9, 16, 2)
    again = tiny_hierarchical(img_size=96)
    spectformer.load_checkpoint(again, {"state_dict": state})
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())
    with pytest.raises(TypeError, match="path_or_state_dict"):
        spectformer.load_checkpoint(again, 3)
    with pytest.raises(ValueError, match="state dict of tensors"):
        spectformer.load_checkpoint(again, {"epoch": 3})
    with pytest.raises(RuntimeError, match="size mismatch"):
        spectformer.load_checkpoint(tiny_hierarchical(num_classes=3), state)


# -- backends, compile, autocast, memory formats ---------------------------------------

def test_set_backend_switches_every_layer_and_keeps_weights():
    model = spectformer.create_model("spectformer_h_s", img_size=64, backend="reference")
    layers = [m for m in model.modules() if isinstance(m, SpectralGatingNetwork)]
    assert len(layers) == 7 and all(m.backend == "reference" for m in layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.set_backend("dft") is model
    assert all(m.backend == "dft" for m in layers)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="unknown backend"):
        model.set_backend("nope")


@pytest.mark.slow
def test_reference_and_dft_backends_agree_end_to_end_at_224():
    torch.manual_seed(0)
    model = spectformer.create_model("spectformer_t", num_classes=10)
    x = torch.randn(2, 3, 224, 224)
    results = {}
    for backend in ("reference", "dft"):
        model.set_backend(backend)
        model.zero_grad()
        logits = model(x)
        logits.square().sum().backward()
        results[backend] = (logits, model.blocks[0].filter.complex_weight.grad.clone(),
                            model.patch_embed.proj.weight.grad.clone())
    for ref, dft in zip(results["reference"], results["dft"]):
        assert rel_err(dft, ref) < 1e-5


def test_torch_compile_matches_eager_vanilla():
    torch.manual_seed(0)
    model = spectformer.create_model("spectformer_digits")
    x = torch.randn(2, 1, 32, 32)
    eager = model(x)
    compiled = torch.compile(model)(x)
    compiled.sum().backward()
    assert rel_err(compiled, eager) < 1e-5
    assert model.blocks[0].filter.complex_weight.grad is not None


def test_torch_compile_matches_eager_hierarchical():
    torch.manual_seed(0)
    model = tiny_hierarchical(img_size=32).eval()  # eval: no stochastic depth to compare
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(torch.compile(model)(x), model(x)) < 1e-5


@pytest.mark.parametrize("build,size", [
    (lambda: spectformer.create_model("spectformer_digits", in_chans=3), 32),
    (lambda: tiny_hierarchical(img_size=32), 32),
    (lambda: spectformer.create_model("gfnet_h_ti", img_size=64, embed_dims=(8, 16, 24, 32),
                                      depths=(1, 2, 1, 1), num_classes=5), 64),
], ids=["vanilla", "hierarchical", "gfnet_h"])
def test_bf16_autocast_and_channels_last(build, size):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, size, size)
    check_bf16_autocast_and_channels_last(model, x)


# -- FLOPs -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_GFLOPS))
def test_flops_match_the_paper(name):
    model = spectformer.create_model(name)
    gflops = spectformer.count_flops(model) / 1e9
    assert abs(gflops - PAPER_GFLOPS[name]) / PAPER_GFLOPS[name] < 0.02


@pytest.mark.slow
def test_hierarchical_flops_match_the_paper_without_attention_products():
    # The SpectFormer-H figure (3.9 G) leaves out the attention matrix products.
    gflops = spectformer.count_flops(spectformer.create_model("spectformer_h_s"), attention_products=False)
    assert abs(gflops / 1e9 - 3.9) / 3.9 < 0.02


@pytest.mark.parametrize("layer", SPECTRAL_LAYERS)
@pytest.mark.parametrize("backend", ["reference", "dft"])
def test_flop_count_has_no_unsupported_operators(layer, backend):
    model = spectformer.create_model("spectformer_digits", spectral_layer=layer, backend=backend)
    analysis = flop_analysis(model, (1, 1, 32, 32))  # train mode: drop path traced too
    assert analysis.total() > 0 and not analysis.unsupported_ops()
    hier = tiny_hierarchical(img_size=32, spectral_layer=layer, backend=backend)
    analysis = flop_analysis(hier, (1, 3, 32, 32))
    assert analysis.total() > 0 and not analysis.unsupported_ops()


def test_flop_count_formula_on_the_digits_model():
    model = spectformer.create_model("spectformer_digits").train()
    n, d, blocks = 64, 96, 6
    linear = blocks * n * (8 * d * d) + 4 * n * (4 * d * d)  # MLPs, then qkv + proj
    attention = 4 * 2 * n * n * d
    filters = 2 * 2 * n * d * math.ceil(math.log2(n))
    norms = (2 * blocks + 1) * n * d * 5  # fvcore: 5 per element for affine LayerNorm
    expected = linear + attention + filters + norms + n * d * 16 + d * 10
    assert spectformer.count_flops(model, (1, 1, 32, 32)) == expected
    assert spectformer.count_flops(model, (1, 1, 32, 32), attention_products=False) == expected - attention
    assert model.training  # the mode is restored


# -- GPU -------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("build", [lambda: spectformer.create_model("spectformer_t", img_size=64),
                                   lambda: tiny_hierarchical(img_size=64)], ids=["vanilla", "hierarchical"])
def test_cuda_matches_cpu_and_runs_bf16(build):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    model.cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        assert rel_err(model(x.cuda()).cpu(), expected) < 1e-4
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x.cuda().to(memory_format=torch.channels_last))
    out.float().sum().backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
