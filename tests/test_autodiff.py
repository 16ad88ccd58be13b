"""The op under every PyTorch autodiff tool, against plain torch.fft code in float64.

Forward mode (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``), reverse mode of
any order (``grad``, ``jacrev``, ``hessian``, ``gradgradcheck``), ``vmap`` of ``grad``
(per-sample gradients), meta and fake tensors, inference-mode inputs and non-finite values.
Every backend that runs on the CPU is checked: ``reference`` and ``dft`` in float64, and
``triton`` (through its interpreter) in float32, which it computes to about 1e-7.
"""

import pytest
import torch
from torch.autograd import forward_ad
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import spectformer_kernels as sk
from helpers import fresh_seed, rel_err
from spectformer_kernels import SpectralGatingNetwork, spectral_gate

# (backend, dtype it is checked in, relative tolerance against the float64 torch.fft result)
CASES = [("reference", torch.float64, 1e-12), ("dft", torch.float64, 1e-12)]
if "triton" in sk.available_backends():
    CASES.append(("triton", torch.float32, 1e-5))
CASE_IDS = [case[0] for case in CASES]

SHAPE = (2, 5, 6, 3)  # odd H, even W (a Nyquist column), B > 1 and C > 1


def torch_fft_gate(x, weight):
    """The layer as GFNet writes it, in float64: the ground truth for every derivative."""
    h, w = x.shape[1:3]
    spectrum = torch.fft.rfft2(x.double(), dim=(1, 2), norm="ortho")
    gated = spectrum * torch.view_as_complex(weight.double())
    return torch.fft.irfft2(gated, s=(h, w), dim=(1, 2), norm="ortho")


def inputs(dtype, shape=SHAPE):
    b, h, w, c = shape
    gen = torch.Generator().manual_seed(fresh_seed())
    def draw(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64).to(dtype)
    x, tangent_x, probe = draw(b, h, w, c), draw(b, h, w, c), draw(b, h, w, c)
    weight, tangent_w = draw(h, w // 2 + 1, c, 2), draw(h, w // 2 + 1, c, 2)
    return x, weight, tangent_x, tangent_w, probe


def close(got, want, tol):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.isfinite(g).all()
        assert w.abs().max() > 0, "the check would be vacuous"
        err = rel_err(g, w)
        assert err <= tol, f"relative error {err:.2e} > {tol}"


def as64(*tensors):
    return tuple(t.double() for t in tensors)


def ours(backend):
    return lambda x, weight: spectral_gate(x, weight, backend=backend)


def loss_of(gate, probe):
    """A scalar loss that is not linear in the output, so Hessians are not zero."""
    return lambda x, weight: (gate(x, weight).square() * probe).sum()


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_jvp(backend, dtype, tol):
    x, weight, tx, tw, _ = inputs(dtype)
    y, ty = jvp(ours(backend), (x, weight), (tx, tw))
    y_ref, ty_ref = jvp(torch_fft_gate, as64(x, weight), as64(tx, tw))
    close((y, ty), (y_ref, ty_ref), tol)
    # A tangent in one argument only.
    _, ty_x = jvp(lambda a: spectral_gate(a, weight, backend=backend), (x,), (tx,))
    _, ty_x_ref = jvp(lambda a: torch_fft_gate(a, weight.double()), as64(x), as64(tx))
    close(ty_x, ty_x_ref, tol)


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_forward_ad_dual_numbers(backend, dtype, tol):
    x, weight, tx, tw, _ = inputs(dtype)
    with forward_ad.dual_level():
        y = spectral_gate(forward_ad.make_dual(x, tx), forward_ad.make_dual(weight, tw), backend=backend)
        tangent = forward_ad.unpack_dual(y).tangent
    _, tangent_ref = jvp(torch_fft_gate, as64(x, weight), as64(tx, tw))
    close(tangent, tangent_ref, tol)


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_jacfwd_and_jacrev(backend, dtype, tol):
    x, weight, *_ = inputs(dtype, (1, 3, 4, 2))
    want = jacrev(torch_fft_gate, argnums=(0, 1))(*as64(x, weight))
    close(jacfwd(ours(backend), argnums=(0, 1))(x, weight), want, tol)
    close(jacrev(ours(backend), argnums=(0, 1))(x, weight), want, tol)


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_grad(backend, dtype, tol):
    x, weight, _, _, probe = inputs(dtype)
    got = grad(loss_of(ours(backend), probe), argnums=(0, 1))(x, weight)
    want = grad(loss_of(torch_fft_gate, probe.double()), argnums=(0, 1))(*as64(x, weight))
    close(got, want, tol)


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_hessian(backend, dtype, tol):
    x, weight, _, _, probe = inputs(dtype, (2, 3, 4, 2))
    got = hessian(loss_of(ours(backend), probe), argnums=(0, 1))(x, weight)
    want = hessian(loss_of(torch_fft_gate, probe.double()), argnums=(0, 1))(*as64(x, weight))
    for got_row, want_row in zip(got, want):
        close(got_row, want_row, tol)


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_per_sample_gradients_with_vmap_of_grad(backend, dtype, tol):
    x, weight, _, _, probe = inputs(dtype, (4, 5, 6, 3))

    def per_sample(gate):
        def loss(w, sample, sample_probe):
            return (gate(sample[None], w).square() * sample_probe).sum()
        return vmap(grad(loss), in_dims=(None, 0, 0))

    got = per_sample(ours(backend))(weight, x, probe)
    want = per_sample(torch_fft_gate)(weight.double(), x.double(), probe.double())
    assert got.shape == (4, *weight.shape)
    close(got, want, tol)
    # The per-sample gradients sum to the batch gradient.
    batch = grad(loss_of(ours(backend), probe), argnums=1)(x, weight)
    close(got.sum(0), batch, max(tol, 1e-6))


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_vmap_over_filters_and_vjp(backend, dtype, tol):
    """vmap with a batched filter (one gate per filter) and vjp with its cotangent."""
    x, weight, _, tw, probe = inputs(dtype)
    filters = torch.stack((weight, tw, weight - tw))
    got = vmap(ours(backend), in_dims=(None, 0))(x, filters)
    want = torch.stack([torch_fft_gate(x.double(), f.double()) for f in filters])
    close(got, want, tol)
    _, pullback = vjp(ours(backend), x, weight)
    _, pullback_ref = vjp(torch_fft_gate, *as64(x, weight))
    close(pullback(probe), pullback_ref(probe.double()), tol)


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_double_backward(backend, dtype, tol):
    x, weight, _, _, probe = inputs(dtype)

    def grad_of_grad_norm(gate, x, weight):
        x = x.clone().requires_grad_(True)
        weight = weight.clone().requires_grad_(True)
        loss = (gate(x, weight) * probe.to(x.dtype)).sum()
        gx, gw = torch.autograd.grad(loss, (x, weight), create_graph=True)
        return torch.autograd.grad(gx.square().sum() + (gw * weight).sum(), (x, weight))

    close(grad_of_grad_norm(ours(backend), x, weight),
          grad_of_grad_norm(torch_fft_gate, *as64(x, weight)), tol)


@pytest.mark.parametrize("backend", ["reference", "dft"])
def test_gradcheck_and_gradgradcheck_float64(backend):
    x, weight, *_ = inputs(torch.float64, (2, 3, 4, 2))
    args = (x.requires_grad_(True), weight.requires_grad_(True))
    assert torch.autograd.gradcheck(ours(backend), args)
    assert torch.autograd.gradgradcheck(ours(backend), args)
    assert torch.autograd.gradcheck(ours(backend), args, check_forward_ad=True, check_backward_ad=False)


@pytest.mark.parametrize("backend", ["reference", "dft"])
def test_opcheck_both_ops(backend):
    x, weight, *_ = inputs(torch.float32, (2, 7, 6, 5))
    g = torch.randn_like(x)
    torch.library.opcheck(torch.ops.spectformer.spectral_gate.default,
                          (x.requires_grad_(True), weight.requires_grad_(True), backend))
    torch.library.opcheck(torch.ops.spectformer.spectral_gate_backward.default,
                          (g.requires_grad_(True), x, weight, backend))


def test_torch_export_runs_the_op():
    layer = SpectralGatingNetwork(6, h=5, w=4, backend="dft")
    tokens = torch.randn(2, 30, 6)
    program = torch.export.export(layer, (tokens,), kwargs={"spatial_size": (5, 6)})
    assert "spectformer.spectral_gate" in str(program.graph)
    torch.testing.assert_close(program.module()(tokens, spatial_size=(5, 6)),
                               layer(tokens, spatial_size=(5, 6)))


# -- meta, fake and inference tensors -----------------------------------------------------------

def test_meta_tensors_through_the_function_and_the_module():
    x = torch.empty(2, 5, 6, 3, device="meta")
    weight = torch.empty(5, 4, 3, 2, device="meta", requires_grad=True)
    y = spectral_gate(x, weight)
    assert y.device.type == "meta" and y.shape == x.shape
    y.sum().backward()
    assert weight.grad.shape == weight.shape and weight.grad.device.type == "meta"
    with torch.device("meta"):
        layer = SpectralGatingNetwork(8, h=4, w=3)
        out = layer(torch.empty(3, 16, 8))
    assert out.shape == (3, 16, 8) and out.device.type == "meta"
    with pytest.raises(ValueError, match="weight must have shape"):
        spectral_gate(x, torch.empty(5, 3, 3, 2, device="meta"))


def test_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 5, 6, 3, dtype=torch.bfloat16)
        layer = SpectralGatingNetwork(3, h=5, w=4)
        y = layer(x)
        y.float().sum().backward()
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert layer.complex_weight.grad.shape == layer.complex_weight.shape


@pytest.mark.parametrize("backend, dtype, tol", CASES, ids=CASE_IDS)
def test_inference_mode_input_with_a_trainable_filter(backend, dtype, tol):
    x, weight, _, _, probe = inputs(dtype)
    with torch.inference_mode():
        x_inference = x.clone()
    assert x_inference.is_inference()
    weight = weight.clone().requires_grad_(True)
    (spectral_gate(x_inference, weight, backend=backend) * probe).sum().backward()
    w64 = weight.detach().double().requires_grad_(True)
    (torch_fft_gate(x.double(), w64) * probe.double()).sum().backward()
    close(weight.grad, w64.grad, tol)
    with torch.inference_mode():  # wholly inside inference mode, as torch.fft code runs
        y = spectral_gate(x_inference, weight, backend=backend)
    close(y, torch_fft_gate(x.double(), weight.detach().double()), tol)


# -- non-finite values: the stated contract (README) -------------------------------------------

NON_FINITE_CASES = [
    (backend, dtype, "cpu")
    for backend in CASE_IDS
    for dtype in (torch.float64, torch.float32, torch.bfloat16)
    if not (backend == "triton" and dtype == torch.float64)
] + [  # the GPU kernels, where there is a GPU
    pytest.param(backend, dtype, "cuda", marks=pytest.mark.cuda)
    for backend in ("cuda", "cuda_cufftdx", "cuda_cufft", "triton", "reference")
    for dtype in (torch.float32, torch.bfloat16)
    if torch.cuda.is_available() and backend in sk.available_backends()
]


@pytest.mark.parametrize("backend, dtype, device", NON_FINITE_CASES, ids=str)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=str)
def test_non_finite_values_stay_in_their_image_and_channel(backend, dtype, device, bad):
    """A non-finite x[b, h, w, c] makes every element of y[b, :, :, c] non-finite; a
    non-finite filter entry for channel c makes channel c of every image non-finite. Every
    other element equals the result without the bad value: nothing leaks across images or
    channels, and no affected element is a finite wrong number."""
    b, h, w, c = 3, 6, 5, 4
    gen = torch.Generator().manual_seed(fresh_seed())
    x = torch.randn(b, h, w, c, generator=gen).to(device, dtype)
    weight = torch.randn(h, w // 2 + 1, c, 2, generator=gen).to(device)
    clean = spectral_gate(x, weight, backend=backend)
    assert torch.isfinite(clean).all()

    x_bad = x.clone()
    x_bad[1, 2, 3, 1] = bad
    weight_bad = weight.clone()
    weight_bad[4, 1, 2, 1] = bad  # imaginary part of one bin of channel 2
    for got, affected in (
        (spectral_gate(x_bad, weight, backend=backend), (slice(1, 2), 1)),
        (spectral_gate(x, weight_bad, backend=backend), (slice(None), 2)),
    ):
        mask = torch.zeros(b, h, w, c, dtype=torch.bool, device=device)
        mask[affected[0], :, :, affected[1]] = True
        assert not torch.isfinite(got[mask]).any(), "an affected element is finite"
        torch.testing.assert_close(got[~mask], clean[~mask], rtol=0, atol=0)
