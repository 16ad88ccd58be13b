"""Public API: backend selection, input validation, the module, compile, ONNX, FLOPs."""

import math

import pytest
import torch
from torch import nn

import spectformer_kernels as sk
from helpers import make_inputs, rel_err
from spectformer_kernels import SpectralGatingNetwork, oracle, spectral_gate
from spectformer_kernels.backends import Backend, BackendUnavailableError, resolve_backend


# -- backend selection -------------------------------------------------------------------

def test_available_backends_always_has_the_portable_ones():
    names = sk.available_backends()
    assert names[0] == "auto"
    assert {"reference", "dft"} <= set(names)


def test_unknown_backend_lists_the_valid_ones():
    x, weight, _ = make_inputs((1, 4, 4, 2))
    with pytest.raises(ValueError, match=r"unknown backend 'fftw'.*'auto'.*'reference'.*'dft'"):
        spectral_gate(x, weight, backend="fftw")
    with pytest.raises(ValueError, match="unknown backend"):
        SpectralGatingNetwork(8, backend="fftw")


@pytest.fixture
def unavailable_backend():
    name = "test_unavailable"
    sk.register_backend(Backend(
        name, sk.spectral_gate_dft, sk.spectral_gate_dft_backward, "never runs",
        availability=lambda: "it needs hardware this machine lacks",
    ))
    yield name
    sk.unregister_backend(name)


def test_explicit_unavailable_backend_is_a_clear_error(unavailable_backend):
    x, weight, _ = make_inputs((1, 4, 4, 2))
    assert unavailable_backend not in sk.available_backends()
    with pytest.raises(BackendUnavailableError, match="needs hardware this machine lacks"):
        spectral_gate(x, weight, backend=unavailable_backend)


def test_environment_variable_selects_backend(monkeypatch):
    x, weight, _ = make_inputs((1, 4, 4, 2))
    monkeypatch.setenv("SPECTFORMER_BACKEND", "reference")
    assert resolve_backend(None, x, weight) == "reference"
    assert resolve_backend("dft", x, weight) == "dft"  # an explicit argument wins
    monkeypatch.setenv("SPECTFORMER_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        spectral_gate(x, weight)


def test_auto_on_cpu_follows_the_measured_rule(monkeypatch):
    monkeypatch.delenv("SPECTFORMER_BACKEND", raising=False)
    small, w_small, _ = make_inputs((1, 14, 14, 4))
    large, w_large, _ = make_inputs((1, 56, 56, 4))
    huge, w_huge, _ = make_inputs((1, 96, 96, 1))
    assert resolve_backend("auto", small, w_small) == "dft"
    assert resolve_backend("auto", large, w_large) == "dft"
    assert resolve_backend("auto", huge, w_huge) == "reference"
    assert rel_err(spectral_gate(small, w_small), oracle(small, w_small)) < 1e-5


# -- input validation ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "x, weight, error, message",
    [
        (torch.randn(4, 4, 2), torch.randn(4, 3, 2, 2), ValueError, r"x must have shape \(B, H, W, C\).*\(4, 4, 2\)"),
        (torch.randn(1, 4, 6, 2), torch.randn(4, 3, 3, 2), ValueError, r"weight must have shape .*\(4, 4, 2, 2\).*got shape \(4, 3, 3, 2\)"),
        (torch.randn(1, 4, 6, 2), torch.randn(4, 4, 2), ValueError, r"weight must have shape"),
        (torch.randn(1, 4, 4, 2, dtype=torch.complex64), torch.randn(4, 3, 2, 2), TypeError, r"x must be a real floating tensor.*complex64"),
        (torch.ones(1, 4, 4, 2, dtype=torch.int64), torch.randn(4, 3, 2, 2), TypeError, r"x must be a real floating.*int64"),
        (torch.randn(1, 4, 4, 2), torch.ones(4, 3, 2, 2, dtype=torch.int32), TypeError, r"weight must be a real floating.*int32"),
        (torch.randn(1, 4, 4, 2), torch.randn(4, 3, 2, dtype=torch.complex64), TypeError, r"weight must be a real floating"),
        ([[1.0]], torch.randn(4, 3, 2, 2), TypeError, r"x must be a torch.Tensor, got list"),
        (torch.randn(1, 4, 4, 2), torch.randn(4, 3, 2, 2, device="meta"), ValueError, r"same device.*cpu.*meta"),
        (torch.randn(1, 0, 4, 2), torch.randn(0, 3, 2, 2), ValueError, r"H, W, C >= 1"),
    ],
)
def test_bad_inputs_name_the_argument(x, weight, error, message):
    with pytest.raises(error, match=message):
        spectral_gate(x, weight)


def test_module_validates_token_layout():
    layer = SpectralGatingNetwork(6, h=4, w=3)
    with pytest.raises(ValueError, match=r"N=15 tokens, which is not a square grid; pass spatial_size"):
        layer(torch.randn(2, 15, 6))
    with pytest.raises(ValueError, match=r"spatial_size=\(3, 4\) holds 12 tokens but x has N=16"):
        layer(torch.randn(2, 16, 6), spatial_size=(3, 4))
    with pytest.raises(ValueError, match=r"tokens \(B, N, C\) or a grid \(B, H, W, C\)"):
        layer(torch.randn(16, 6))
    with pytest.raises(ValueError, match=r"weight must have shape .*\(4, 3, 5, 2\)"):
        layer(torch.randn(2, 16, 5))  # wrong channel count
    with pytest.raises(ValueError, match="dim must be a positive int"):
        SpectralGatingNetwork(0)


# -- the module ------------------------------------------------------------------------------

class GFNetGlobalFilter(nn.Module):
    """GFNet's layer as its authors write it: the state-dict layout and semantics to match."""

    def __init__(self, dim, h=14, w=8):
        super().__init__()
        self.complex_weight = nn.Parameter(torch.randn(h, w, dim, 2, dtype=torch.float32) * 0.02)

    def forward(self, x):
        b, n, c = x.shape
        a = b_ = int(math.sqrt(n))
        x = x.view(b, a, b_, c).to(torch.float32)
        x = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        x = x * torch.view_as_complex(self.complex_weight)
        x = torch.fft.irfft2(x, s=(a, b_), dim=(1, 2), norm="ortho")
        return x.reshape(b, n, c)


@pytest.mark.parametrize("backend", ["reference", "dft"])
def test_gfnet_state_dict_loads_and_matches(backend):
    gfnet = GFNetGlobalFilter(24)
    layer = SpectralGatingNetwork(24, backend=backend)
    assert layer.complex_weight.shape == (14, 8, 24, 2)
    assert list(layer.state_dict()) == ["complex_weight"]
    layer.load_state_dict(gfnet.state_dict(), strict=True)
    tokens = torch.randn(3, 196, 24)
    assert rel_err(layer(tokens), gfnet(tokens)) < 1e-5


def test_module_init_and_layouts():
    torch.manual_seed(0)
    layer = SpectralGatingNetwork(64, h=12, w=9)
    assert 0.015 < layer.complex_weight.std().item() < 0.025  # randn * 0.02
    grid = torch.randn(2, 12, 16, 64)
    tokens = grid.reshape(2, 192, 64)
    out_grid = layer(grid)
    out_tokens = layer(tokens, spatial_size=(12, 16))
    assert out_grid.shape == grid.shape and out_tokens.shape == tokens.shape
    torch.testing.assert_close(out_tokens, out_grid.reshape(2, 192, 64))
    assert "backend=auto" in repr(layer)
    layer.backend = "reference"
    torch.testing.assert_close(layer(grid), out_grid, rtol=1e-5, atol=1e-6)


def test_module_half_precision_output_dtype():
    layer = SpectralGatingNetwork(16, h=7, w=4)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(2, 49, 16, dtype=dtype)
        y = layer(x)
        assert y.dtype == dtype
        assert rel_err(y, oracle(x.view(2, 7, 7, 16), layer.complex_weight).view(2, 49, 16)) < 1e-2


# -- torch.compile and ONNX --------------------------------------------------------------------

class TinyMixer(nn.Module):
    def __init__(self, dim=16, side=6, backend=None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.filter = SpectralGatingNetwork(dim, h=side, w=side // 2 + 1, backend=backend)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.proj(self.filter(self.norm(x)))


@pytest.mark.parametrize("backend", ["dft", "reference"])
def test_torch_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    model = TinyMixer(backend=backend)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 36, 16, requires_grad=True)
    x_c = x.detach().clone().requires_grad_(True)
    y, y_c = model(x), compiled(x_c)
    torch.testing.assert_close(y_c, y)
    y.square().sum().backward()
    y_c.square().sum().backward()
    torch.testing.assert_close(x_c.grad, x.grad)


def test_torch_compile_inductor():
    torch._dynamo.reset()
    model = TinyMixer(backend="dft")
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 36, 16)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_onnx_export_round_trip(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = TinyMixer(dim=12, side=7, backend="dft").eval()
    x = torch.randn(3, 49, 12)
    path = tmp_path / "mixer.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        y = model(x)
    assert rel_err(torch.from_numpy(y_onnx), y) < 1e-5


# -- FLOPs --------------------------------------------------------------------------------------

def test_flops_follow_gfnet_convention_for_every_backend():
    pytest.importorskip("fvcore")
    from spectformer_kernels.flops import flop_count_analysis, spectral_gate_flops

    b, h, w, c = 2, 14, 14, 32
    expected = 2 * b * h * w * c * math.ceil(math.log2(h * w))
    assert spectral_gate_flops((b, h, w, c)) == expected
    x = torch.randn(b, h * w, c)
    for backend in ["reference", "dft"]:
        layer = SpectralGatingNetwork(c, h, w // 2 + 1, backend=backend)
        analysis = flop_count_analysis(layer, (x,))
        assert analysis.total() == expected
        assert not analysis.unsupported_ops()
    gfnet = GFNetGlobalFilter(c)  # the raw torch.fft ops count the same
    analysis = flop_count_analysis(gfnet, (x,))
    assert analysis.total() == expected


def test_torch_flop_counter_knows_the_op():
    from torch.utils.flop_counter import FlopCounterMode

    from spectformer_kernels.flops import spectral_gate_flops

    x, weight, _ = make_inputs((2, 7, 7, 8))
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        spectral_gate(x, weight, backend="dft").sum().backward()
    fvcore_style = spectral_gate_flops(x.shape)
    assert counter.get_total_flops() == 2 * fvcore_style + 4 * fvcore_style


@pytest.mark.parametrize("backend", ["reference", "dft"])
def test_autocast_rounds_only_the_result_of_an_fp32_backend(backend):
    x, weight, grad = make_inputs((2, 7, 7, 16))
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = spectral_gate(x, weight, backend=backend)
    assert y.dtype == torch.bfloat16
    # The backend computes in fp32 anyway, so it gets the fp32 input: the result is the fp32
    # result rounded once, not that of an input rounded to bf16 first.
    assert torch.equal(y, spectral_gate(x, weight, backend=backend).to(torch.bfloat16))
    (gx,) = torch.autograd.grad(y, x, grad.to(torch.bfloat16))
    assert gx.dtype == torch.float32
    assert rel_err(gx, oracle(x, weight, grad.to(torch.bfloat16).float())[1]) < 1e-5

    # Detail below bf16's resolution at 1.0 would vanish if x were rounded: with the DC bin
    # of the filter zeroed, only that detail reaches the output.
    detail = 1.0 + 5e-4 * torch.randn(2, 7, 7, 16).clamp(-3, 3)  # within 2**-9 of 1
    assert torch.equal(detail.to(torch.bfloat16), torch.ones_like(detail, dtype=torch.bfloat16))
    no_dc = weight.clone()
    no_dc[0, 0] = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = spectral_gate(detail, no_dc, backend=backend)
    assert rel_err(y, oracle(detail, no_dc)) < 1e-2  # only the final bf16 rounding of y


@pytest.fixture
def recording_backends():
    """Two backends that record the dtype of the ``x`` they get: one that computes from
    16-bit inputs as they are, one that widens them to fp32 first."""
    seen = {}

    def recorder(name):
        def forward(x, weight):
            seen[name] = x.dtype
            return sk.spectral_gate_dft(x, weight)
        return forward

    for name, widens in (("test_16bit_io", False), ("test_widening", True)):
        sk.register_backend(Backend(name, recorder(name), sk.spectral_gate_dft_backward,
                                    "records its input dtype", widens_16bit=widens))
    yield seen
    for name in seen:
        sk.unregister_backend(name)


def test_autocast_rounds_the_input_only_for_a_16bit_kernel(recording_backends):
    x, weight, _ = make_inputs((2, 5, 6, 3))
    for name in ("test_16bit_io", "test_widening"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert spectral_gate(x, weight, backend=name).dtype == torch.bfloat16
    assert recording_backends == {"test_16bit_io": torch.bfloat16, "test_widening": torch.float32}
