"""GFNet-H (the official ``GFNetPyramid``): layouts, counts, FLOPs, official-code equivalence,
checkpoint resizing, compile / autocast / memory formats.

The expected state-dict layout and the float64 reference forward below are written from the
published description of the official model, independently of ``spectformer.models``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import spectformer
from helpers import rel_err
from spectformer_kernels import SpectralGatingNetwork

# name: (dims, depths, layer-scale init, drop path, exact params, paper params (M), paper GFLOPs)
GFNET_H = {
    "gfnet_h_ti": ((64, 128, 256, 512), (3, 3, 10, 3), 1e-3, 0.1, 15_085_096, 15, 2.1),
    "gfnet_h_s": ((96, 192, 384, 768), (3, 3, 10, 3), 1e-5, 0.2, 32_162_632, 32, 4.5),
    "gfnet_h_b": ((96, 192, 384, 768), (3, 3, 27, 3), 1e-6, 0.4, 53_744_200, 54, 8.6),
}
TINY = dict(img_size=64, embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_classes=5)


def on_meta(name, **overrides):
    with torch.device("meta"):
        return spectformer.create_model(name, **overrides)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def gfnet_h_layout(dims, depths, img=224, classes=1000, layer_scale=True):
    """The official GFNetPyramid state dict: shapes by key."""
    grid = img // 4
    layout = {"pos_embed": (1, grid * grid, dims[0]),
              "patch_embed.0.proj.weight": (dims[0], 3, 4, 4), "patch_embed.0.proj.bias": (dims[0],)}
    for i in range(1, 4):
        layout[f"patch_embed.{i}.proj.weight"] = (dims[i], dims[i - 1], 2, 2)
        layout[f"patch_embed.{i}.proj.bias"] = (dims[i],)
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        for j in range(depth):
            p = f"blocks.{i}.{j}."
            for name in ("norm1", "norm2"):
                layout[p + name + ".weight"] = layout[p + name + ".bias"] = (dim,)
            layout[p + "filter.complex_weight"] = (grid, grid // 2 + 1, dim, 2)
            layout.update({p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
                           p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)})
            if layer_scale:
                layout[p + "gamma"] = (dim,)
        grid //= 2
    layout.update({"norm.weight": (dims[-1],), "norm.bias": (dims[-1],),
                   "head.weight": (classes, dims[-1]), "head.bias": (classes,)})
    return layout


def random_checkpoint(layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif key.endswith("gamma"):
            state[key] = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    return state


def official_gfnet_h(state, x, depths):
    """The official forward in float64 from the raw state dict."""
    def ln(z, prefix):
        return F.layer_norm(z, z.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], 1e-6)

    def lin(z, prefix):
        return F.linear(z, state[prefix + ".weight"], state[prefix + ".bias"])

    z = F.conv2d(x, state["patch_embed.0.proj.weight"], state["patch_embed.0.proj.bias"], stride=4)
    h, w = z.shape[2:]
    t = z.flatten(2).transpose(1, 2) + state["pos_embed"]
    for i in range(4):
        if i > 0:  # tokens -> (B, C, h, w) -> 2x2/2 conv -> tokens
            b, _, c = t.shape
            z = t.reshape(b, h, w, c).permute(0, 3, 1, 2)
            z = F.conv2d(z, state[f"patch_embed.{i}.proj.weight"], state[f"patch_embed.{i}.proj.bias"], stride=2)
            h, w = z.shape[2:]
            t = z.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        for j in range(depths[i]):
            p = f"blocks.{i}.{j}."
            b, n, c = t.shape
            y = ln(t, p + "norm1").reshape(b, h, w, c)
            spec = torch.fft.rfft2(y, dim=(1, 2), norm="ortho")
            spec = spec * torch.view_as_complex(state[p + "filter.complex_weight"])
            y = torch.fft.irfft2(spec, s=(h, w), dim=(1, 2), norm="ortho").reshape(b, n, c)
            y = lin(F.gelu(lin(ln(y, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
            t = t + state[p + "gamma"] * y
    return lin(ln(t, "norm").mean(1), "head")


# -- registry, counts, key names -------------------------------------------------------

def test_registered():
    assert spectformer.list_models("gfnet_h_*") == sorted(GFNET_H)


@pytest.mark.parametrize("name", sorted(GFNET_H))
def test_params_and_official_keys(name):
    dims, depths, init, rate, params, paper_m, _ = GFNET_H[name]
    model = on_meta(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == params and round(count / 1e6) == paper_m
    assert shapes(model) == gfnet_h_layout(dims, depths)
    assert not list(model.buffers())
    assert model.grid_sizes == [(56, 56), (28, 28), (14, 14), (7, 7)]
    # Stochastic depth rises linearly over all blocks; the last block gets the full rate.
    last = model.blocks[3][-1].drop_path
    assert math.isclose(last.p, rate, rel_tol=1e-6)


def test_layer_scale_init_and_no_layerscale_variant():
    model = spectformer.create_model("gfnet_h_s", **TINY)
    assert all(torch.equal(b.gamma, torch.full_like(b.gamma, 1e-5)) for s in model.blocks for b in s)
    plain = on_meta("gfnet_h_ti", layer_scale=False)
    assert shapes(plain) == gfnet_h_layout((64, 128, 256, 512), (3, 3, 10, 3), layer_scale=False)


def test_default_cfg_and_bad_configurations():
    cfg = on_meta("gfnet_h_b", img_size=384, num_classes=10).default_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["num_classes"] == 10
    assert cfg["first_conv"] == "patch_embed.0.proj" and cfg["classifier"] == "head"
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    with pytest.raises(ValueError, match="multiple of patch_size"):
        on_meta("gfnet_h_ti", img_size=66)
    with pytest.raises(ValueError, match="too small"):
        on_meta("gfnet_h_ti", img_size=16)
    with pytest.raises(ValueError, match="depths"):
        on_meta("gfnet_h_ti", depths=(1, 1, 1))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 64, 64\)"):
        spectformer.create_model("gfnet_h_ti", **TINY)(torch.randn(1, 3, 96, 96))


# -- forward / backward, official equivalence -------------------------------------------

@pytest.mark.parametrize("name", sorted(GFNET_H))
def test_trains_on_a_small_input(name):
    torch.manual_seed(0)
    # Full widths, one block per stage: every builder, in seconds.
    model = spectformer.create_model(name, img_size=64, num_classes=7, depths=(1, 1, 1, 1)).train()
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    bad = [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad


@pytest.mark.parametrize("backend", ["reference", "dft"])
def test_official_checkpoint_gives_official_logits(backend):
    dims, depths = GFNET_H["gfnet_h_ti"][0], (2, 1, 3, 1)  # fewer blocks keep it fast
    state = random_checkpoint(gfnet_h_layout(dims, depths, img=64))
    model = spectformer.create_model("gfnet_h_ti", img_size=64, depths=depths,
                                     backend=backend).double().eval()
    # Official training checkpoints: {"model": ...}, DDP "module." prefix.
    result = spectformer.load_checkpoint(model, {"model": {"module." + k: v for k, v in state.items()},
                                                 "epoch": 299})
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    assert rel_err(model(x), official_gfnet_h(state, x, depths)) < 1e-10


def test_checkpoint_resizes_to_a_new_resolution():
    small = spectformer.create_model("gfnet_h_ti", **TINY)
    state = {k: v.clone() for k, v in small.state_dict().items()}
    big = spectformer.create_model("gfnet_h_ti", **{**TINY, "img_size": 96})
    spectformer.load_checkpoint(big, state)
    # Positions: bicubic over the stage-1 grid 16x16 -> 24x24.
    pos = state["pos_embed"].reshape(1, 16, 16, 8).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(24, 24), mode="bicubic", align_corners=False)
    assert torch.allclose(big.pos_embed, pos.permute(0, 2, 3, 1).reshape(1, 576, 8))
    # Every stage's filters: 2C channels on (h, h//2+1), bicubic with aligned corners.
    for stage, (old_h, new_h) in enumerate(((16, 24), (8, 12), (4, 6), (2, 3))):
        old = state[f"blocks.{stage}.0.filter.complex_weight"]
        c = old.shape[2]
        grid = old.reshape(1, old_h, old_h // 2 + 1, 2 * c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new_h, new_h // 2 + 1), mode="bicubic", align_corners=True)
        expected = grid.permute(0, 2, 3, 1).reshape(new_h, new_h // 2 + 1, c, 2)
        assert torch.allclose(big.blocks[stage][0].filter.complex_weight, expected, atol=1e-6)
    assert torch.equal(big.blocks[1][1].gamma, state["blocks.1.1.gamma"])
    assert big(torch.randn(1, 3, 96, 96)).shape == (1, 5)


def test_set_backend_switches_every_stage():
    model = spectformer.create_model("gfnet_h_ti", **TINY, backend="reference")
    layers = [m for m in model.modules() if isinstance(m, SpectralGatingNetwork)]
    assert len(layers) == 5
    model.set_backend("dft")
    assert all(m.backend == "dft" for m in layers)
    assert [tuple(m.complex_weight.shape[:2]) for m in layers] == [(16, 9), (8, 5), (8, 5), (4, 3), (2, 2)]


@pytest.mark.parametrize("layer", ["fn", "afno", "wgn"])
def test_other_spectral_layers(layer):
    model = spectformer.create_model("gfnet_h_ti", **TINY, spectral_layer=layer)
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert out.shape == (2, 5) and torch.isfinite(out).all()


# -- compile and FLOPs (autocast and memory formats: test_models.py) --------------------------------------------

def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = spectformer.create_model("gfnet_h_ti", **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(torch.compile(model)(x), model(x)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GFNET_H))
def test_flops_match_the_paper(name):
    # Measured in GFNet's convention: 2.08 / 4.65 / 8.61 G against the paper's 2.1 / 4.5 / 8.6.
    model = spectformer.create_model(name)
    gflops = spectformer.count_flops(model) / 1e9
    paper = GFNET_H[name][-1]
    assert abs(gflops - paper) / paper < 0.035
