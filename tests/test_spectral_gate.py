"""The op against the float64 oracle, for the portable backends (reference, dft).

Kernel backends have their own test files with the same checks at sizes their execution
mode affords (Triton's interpreter on CPU, the GPU where there is one).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import helpers
from helpers import assert_matches_oracle, fresh_seed, make_inputs, rel_err
from spectformer_kernels import oracle, spectral_gate

PORTABLE = ["reference", "dft"]
AWKWARD_SHAPES = helpers.AWKWARD_SHAPES + [
    (2, 1, 13, 4),  # 1xN and Nx1, prime N
    (2, 13, 1, 4),
    (1, 48, 7, 5),  # factored H axes (dft): 48 = 8*6, 96 = 8*12, with odd W
    (1, 96, 3, 2),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def run_forward_backward(x, weight, grad, backend):
    x = x.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    y = spectral_gate(x, weight, backend=backend)
    y.backward(grad)
    return y, x.grad, weight.grad


def check_against_oracle(shape, dtype, backend, seed):
    x, weight, grad = make_inputs(shape, dtype, seed=seed)
    y, gx, gw = run_forward_backward(x, weight, grad, backend)
    assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == torch.float32
    assert y.shape == x.shape and gw.shape == weight.shape
    assert_matches_oracle(x, weight, grad, (y, gx, gw), f"{backend} {shape} {dtype} (seed {seed})")


@pytest.mark.parametrize("backend", PORTABLE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
def test_matches_float64_oracle(shape, dtype, backend):
    check_against_oracle(shape, dtype, backend, fresh_seed())


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20), c=st.integers(1, 40),
    backend=st.sampled_from(PORTABLE), seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_match_oracle(b, h, w, c, backend, seed):
    check_against_oracle((b, h, w, c), torch.float32, backend, seed)


@pytest.mark.parametrize("backend", PORTABLE)
def test_float64_gradcheck(backend):
    x, weight, _ = make_inputs((2, 5, 6, 3), torch.float64)
    weight = weight.double()
    x.requires_grad_(True)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, k: spectral_gate(a, k, backend=backend), (x, weight), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("backend", PORTABLE)
def test_opcheck(backend):
    x, weight, _ = make_inputs((2, 7, 6, 5))
    x.requires_grad_(True)
    weight.requires_grad_(True)
    torch.library.opcheck(torch.ops.spectformer.spectral_gate.default, (x, weight, backend))


@pytest.mark.parametrize("backend", PORTABLE)
def test_non_contiguous_inputs(backend):
    base, weight, grad = make_inputs((3, 9, 14, 10))
    x = base.permute(0, 2, 1, 3)[:, ::2]  # (3, 7, 9, 10), strided
    weight = torch.randn(7, 9 // 2 + 1, 10, 2).transpose(0, 0)
    assert not x.is_contiguous()
    y, gx, gw = run_forward_backward(x, weight, grad[:, :7, :9], backend)
    y64, gx64, gw64 = oracle(x, weight, grad[:, :7, :9])
    assert rel_err(y, y64) < 1e-5 and rel_err(gx, gx64) < 1e-5 and rel_err(gw, gw64) < 1e-5


def test_empty_batch():
    x, weight, _ = make_inputs((0, 5, 6, 3))
    for backend in PORTABLE:
        assert spectral_gate(x, weight, backend=backend).shape == (0, 5, 6, 3)


def test_backends_agree_on_non_hermitian_dc_and_nyquist_columns():
    """K makes the DC/Nyquist columns non-Hermitian; both follow CPU irfft2 semantics."""
    x, _, _ = make_inputs((2, 6, 8, 3))
    weight = torch.zeros(6, 5, 3, 2)
    weight[:, 0] = torch.randn(6, 3, 2)  # complex gate on the DC column only...
    weight[:, 4] = torch.randn(6, 3, 2)  # ...and on the Nyquist column
    want = oracle(x, weight)
    assert want.norm() > 0.1
    for backend in PORTABLE:
        assert rel_err(spectral_gate(x, weight, backend=backend), want) < 1e-6


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 5 * 6 * 2 * 8 * 2])
def test_dft_batch_chunks_match_the_oracle(monkeypatch, chunk_bytes):
    """The CPU path runs the batch in cache-sized chunks: one image, or two, at a time."""
    from spectformer_kernels import dft

    monkeypatch.setattr(dft, "CPU_CHUNK_BYTES", chunk_bytes)
    check_against_oracle((5, 5, 10, 3), torch.float32, "dft", fresh_seed())
    check_against_oracle((3, 28, 9, 2), torch.bfloat16, "dft", fresh_seed())


def test_dft_workspace_is_reused_without_touching_earlier_results(monkeypatch):
    """The CPU path keeps its intermediates in a per-thread workspace between calls. Later
    calls (other shapes and forms, bf16, the backward, a workspace that must grow) may not
    change an earlier call's results, and no result may live in the workspace."""
    from spectformer_kernels import dft

    monkeypatch.setattr(dft, "CPU_CHUNK_BYTES", 2 * 14 * 6 * 8 * 8 * 2)  # two images a chunk
    cases = [((5, 14, 14, 6), torch.float32), ((3, 28, 9, 2), torch.bfloat16),
             ((4, 7, 7, 5), torch.float32), ((5, 20, 21, 9), torch.float32)]
    kept = []
    for shape, dtype in cases:
        x, weight, grad = make_inputs(shape, dtype, seed=fresh_seed())
        outputs = (dft.spectral_gate_dft(x, weight),
                   *dft.spectral_gate_dft_backward(grad, x, weight))
        kept.append((x, weight, grad, outputs, [t.clone() for t in outputs]))
    workspace = [(b.data_ptr(), b.data_ptr() + b.numel()) for b in dft._workspace.buffers]
    for x, weight, grad, outputs, copies in kept:
        for got, copy in zip(outputs, copies):
            assert torch.equal(got, copy)
            assert not any(lo <= got.data_ptr() < hi for lo, hi in workspace)
        assert_matches_oracle(x, weight, grad, outputs, f"dft {tuple(x.shape)} {x.dtype}")


def test_dft_workspace_per_thread_and_size_bound(monkeypatch):
    """Threads running the CPU path at once each get their own workspace; a need above
    WORKSPACE_MAX_BYTES gets buffers for the call, and the kept workspace is left alone."""
    import threading

    from spectformer_kernels import dft

    shapes = [(6, 14, 14, 8), (4, 12, 10, 7), (5, 9, 16, 3)]
    errors = []

    def run(shape):
        try:
            for _ in range(3):
                x, weight, grad = make_inputs(shape, seed=fresh_seed())
                outputs = (dft.spectral_gate_dft(x, weight),
                           *dft.spectral_gate_dft_backward(grad, x, weight))
                assert_matches_oracle(x, weight, grad, outputs, f"thread {shape}")
        except AssertionError as failure:
            errors.append(failure)

    threads = [threading.Thread(target=run, args=(shape,)) for shape in shapes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

    dft.spectral_gate_dft(*make_inputs((2, 5, 6, 3))[:2])
    before = [b.data_ptr() for b in dft._workspace.buffers]
    monkeypatch.setattr(dft, "WORKSPACE_MAX_BYTES", 0)
    check_against_oracle((3, 14, 15, 4), torch.float32, "dft", fresh_seed())
    assert [b.data_ptr() for b in dft._workspace.buffers] == before


def test_dft_called_directly_stays_differentiable():
    """``spectral_gate_dft`` is plain PyTorch ops: called directly with inputs that require
    grad, autograd differentiates through it (the workspace, written with out=, is not used
    then)."""
    from spectformer_kernels import dft

    x, weight, grad = make_inputs((3, 14, 9, 4), seed=fresh_seed())
    x.requires_grad_(True)
    weight.requires_grad_(True)
    y = dft.spectral_gate_dft(x, weight)
    y.backward(grad)
    assert_matches_oracle(x.detach(), weight.detach(), grad, (y, x.grad, weight.grad),
                          "dft called directly")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dft_small_grids_match_the_oracle_in_both_forms(monkeypatch, dtype):
    """Grids up to DENSE_MAX_TOKENS tokens take one dense matrix per transform; the separable
    form must agree there too (it is what larger grids run). The matrix cache is keyed by
    the form, so switching the threshold needs no cache reset."""
    from spectformer_kernels import dft

    dense_max = dft.DENSE_MAX_TOKENS
    shapes = [(3, 7, 7, 5), (2, 1, 13, 4), (2, 13, 1, 4), (2, 8, 8, 3), (1, 5, 6, 33)]
    assert all(h * w <= dense_max for _, h, w, _ in shapes)
    monkeypatch.setattr(dft, "DENSE_MAX_TOKENS", 0)  # the separable form everywhere
    for shape in shapes:
        check_against_oracle(shape, dtype, "dft", fresh_seed())
        assert isinstance(dft._matrices(*shape[1:3], torch.float32, torch.device("cpu")),
                          dft._Separable)
    monkeypatch.setattr(dft, "DENSE_MAX_TOKENS", dense_max)
    for shape in shapes:
        check_against_oracle(shape, dtype, "dft", fresh_seed())
        assert isinstance(dft._matrices(*shape[1:3], torch.float32, torch.device("cpu")),
                          dft._DenseMap)
