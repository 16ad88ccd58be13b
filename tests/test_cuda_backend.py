"""The ``cuda`` backends (compiled extension ``spectformer_kernels._C``).

Anywhere: the CUDA sources that do not include torch compile with ``nvcc`` for sm_90 (cuFFT
headers from the ``nvidia-cufft`` wheel when the toolkit has none); the backends import and
say why they are unavailable; the algebra the cuFFT gate kernel implements matches the
oracle. On a GPU with the extension built: every path against the float64 oracle, with
poisoned outputs, strided inputs and bitwise-reproducible ``dK``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import spectformer_kernels as sk
import helpers
from helpers import assert_matches_oracle, fresh_seed, make_inputs, rel_err
from benchmarks.shapes import SHAPES
from spectformer_kernels import cuda_backend, oracle, spectral_gate
from spectformer_kernels.contract import half_spectrum_weights, self_conjugate_bins

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CUDA_BACKENDS = ["cuda", "cuda_cufftdx", "cuda_cufft"]


# ---- compile checks (no GPU, no CUDA torch needed) -------------------------------------------


def _cufft_paths():
    spec = importlib.util.spec_from_file_location("cufft_paths", CSRC / "cufft_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nvcc() -> str | None:
    return _cufft_paths().find_nvcc()


def _require_nvcc() -> str:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install a CUDA toolkit or set CUDA_HOME)")
    return nvcc


def _torch_build_flags() -> list:
    """The flags torch's extension tooling adds (its half-operator defines) and the project's
    undefines after them: the sources must compile as the extension build sees them."""
    paths = _cufft_paths()
    return [*paths.TORCH_NVCC_DEFINES, "--expt-relaxed-constexpr", *paths.HALF_UNDEFINES]


def _compile_for_sm90(nvcc: str, *arguments: str) -> None:
    """Compile as the per-file checks do (sm_90, every warning an error); fail with nvcc's
    output."""
    command = [nvcc, "-arch=sm_90", "-std=c++17", "-O1", "-Werror", "all-warnings",
               *_torch_build_flags(), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nvcc failed:\n{result.stdout}{result.stderr}"


def _cufft_include() -> Path | None:
    nvcc = _nvcc()
    location = _cufft_paths().find_cufft(str(Path(nvcc).resolve().parent.parent) if nvcc else None)
    return None if location is None else location.include_dir


def _includes(source: Path) -> list[str]:
    return re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', source.read_text(), re.M)


CUDA_SOURCES = sorted(CSRC.glob("*.cu"))


def test_kernel_sources_are_torch_free():
    """Kernels and launchers are plain CUDA C++; torch appears only in the binding."""
    assert CUDA_SOURCES, "no .cu files found in csrc/"
    for source in CUDA_SOURCES + sorted(CSRC.glob("*.cuh")) + sorted(CSRC.glob("*.h")):
        torch_headers = [h for h in _includes(source) if h.split("/")[0] in ("torch", "ATen", "c10")]
        assert not torch_headers, f"{source.name} includes torch headers {torch_headers}"


def _uses_cufftdx(source: Path) -> bool:
    return "thread_fft.cuh" in _includes(source)


# The cuFFTDx kernels compiled in the quick per-file check (each grid costs 10-60 s of nvcc);
# test_cufftdx_kernels_have_no_spills compiles the others.
CUFFTDX_QUICK_GRID = 7


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_for_sm90(source, tmp_path):
    nvcc = _require_nvcc()
    command = ["-I", str(CSRC), "-c", str(source), "-o", str(tmp_path / "out.o")]
    if _uses_cufftdx(source):
        includes = _cufft_paths().find_cufftdx()
        if includes is None:
            pytest.skip("cuFFTDx headers not found (the nvidia-mathdx wheel, 'test' extra)")
        # -isystem: the library's own headers are not held to this project's -Werror.
        command[:0] = [f"-DSPECTFORMER_CUFFTDX_ONLY_GRID={CUFFTDX_QUICK_GRID}",
                       *(arg for folder in includes for arg in ("-isystem", str(folder)))]
    if any(h.startswith("cufft") for h in _includes(source)):
        include = _cufft_include()
        if include is None:
            pytest.skip("cufft.h not found: the toolkit has none and the nvidia-cufft wheel "
                        "(the 'test' extra) is not installed")
        command[:0] = ["-I", str(include)]
    _compile_for_sm90(nvcc, *command)


# The whole cuFFTDx file, every grid, as the extension build compiles it (about 30 s of nvcc
# on one core): no kernel may spill.
def _ptxas_report(nvcc, tmp_path):
    includes = _cufft_paths().find_cufftdx()
    command = [nvcc, "-arch=sm_90a", "-std=c++17", "-O3", *_torch_build_flags(), "-Xptxas", "-v",
               "-I", str(CSRC),
               *(arg for folder in includes for arg in ("-isystem", str(folder))),
               "-c", str(CSRC / "cufftdx_gate.cu"), "-o", str(tmp_path / "cufftdx_gate.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"nvcc failed:\n{result.stdout}{result.stderr}"
    return result.stderr


def parse_ptxas(report: str) -> dict:
    """{kernel name: (registers, spill store bytes, spill load bytes)} from ptxas -v output."""
    kernels, name = {}, None
    for line in report.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)'", line)
        if entry:
            name = entry.group(1)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill and name:
            kernels[name] = [None, int(spill.group(1)), int(spill.group(2))]
        regs = re.search(r"Used (\d+) registers", line)
        if regs and name in kernels:
            kernels[name][0] = int(regs.group(1))
    return {k: tuple(v) for k, v in kernels.items()}


@pytest.mark.slow
def test_cufftdx_kernels_have_no_spills(tmp_path):
    nvcc = _require_nvcc()
    if _cufft_paths().find_cufftdx() is None:
        pytest.skip("cuFFTDx headers not found (the nvidia-mathdx wheel, 'test' extra)")
    kernels = parse_ptxas(_ptxas_report(nvcc, tmp_path))
    gate_kernels = {k: v for k, v in kernels.items()
                    if "cufftdx_forward_kernel" in k or "cufftdx_backward_kernel" in k}
    assert len(gate_kernels) == 2 * len(cuda_backend.SOURCE_CUFFTDX_GRIDS), kernels
    for name, (registers, stores, loads) in gate_kernels.items():
        assert stores == 0 and loads == 0, f"{name} spills ({stores} B / {loads} B)"


def test_cufft_lto_callbacks_compile(tmp_path):
    """The build's callback step: cufft_callbacks.cu to an LTO-IR fatbin for sm_80 and sm_90
    (embedded as a C array), then cufft_gate.cu with SPECTFORMER_CUFFT_LTO_CALLBACKS against it."""
    nvcc = _require_nvcc()
    include = _cufft_include()
    if include is None:
        pytest.skip("cufftXt.h not found (the nvidia-cufft wheel, 'test' extra)")
    paths = _cufft_paths()
    if not paths.has_jit_callbacks(include):
        pytest.skip("this cuFFT has no CUDA 13 cufftXtSetJITCallback")
    try:
        header = paths.build_callback_header(nvcc, CSRC, [include], paths.lto_archs("8.0;9.0"),
                                             tmp_path)
    except subprocess.CalledProcessError as error:
        pytest.fail(f"LTO-IR build of cufft_callbacks.cu failed:\n{error.stdout}{error.stderr}")
    assert header.stat().st_size > 1000
    _compile_for_sm90(nvcc, "-DSPECTFORMER_CUFFT_LTO_CALLBACKS=1", "-I", str(CSRC),
                      "-I", str(include), "-I", str(tmp_path), "-c", str(CSRC / "cufft_gate.cu"),
                      "-o", str(tmp_path / "g.o"))


def test_lto_arch_list():
    paths = _cufft_paths()
    assert paths.lto_archs("8.0;9.0+PTX") == ["80", "90"]
    assert paths.lto_archs("9.0") == ["90"]
    assert paths.lto_archs("") == ["90"]


# ---- without the extension or a GPU -----------------------------------------------------------


def test_cuda_path_rule():
    for n in (7, 12, 14, 24, 28, 48, 56):
        if (n, n) in cuda_backend.CUFFTDX_GRIDS:
            assert cuda_backend.cuda_path(n, n) == "cufftdx"
    assert cuda_backend.cuda_path(14, 12) == "cufft"
    assert cuda_backend.cuda_path(20, 20) == "cufft"
    assert cuda_backend.cuda_path(32, 33) == "cufft"
    assert cuda_backend.cuda_path(96, 96) == "cufft"


def test_cufftdx_tile_table_matches_the_source():
    """spectformer_kernels.cufftdx_tiles (for the GPU model) mirrors the kernel's table."""
    from spectformer_kernels import cufftdx_tiles

    source = (CSRC / "cufftdx_gate.cu").read_text()
    rows = re.findall(r"^SPECTFORMER_GRID\((\d+), (\d+), (\d+), (\d+), (\d+)\)", source, re.M)
    assert {int(r[0]): tuple(map(int, r[1:])) for r in rows} == cufftdx_tiles.GRID_TILES
    launch = cufftdx_tiles.tile_launch(56, "backward")
    assert (launch.channels_per_block, launch.threads, launch.shared_bytes) == (4, 128, 103936)
    assert cufftdx_tiles.tile_launch(14, "forward").max_registers == 128
    assert cufftdx_tiles.tile_launch(14, "backward").shared_bytes == 3 * 14 * 8 * 16 * 8


def test_cufftdx_grids_match_the_source():
    """The Python list mirrors the kernel's grid table (csrc/cufftdx_gate.cu)."""
    source = (CSRC / "cufftdx_gate.cu").read_text()
    grids = tuple((int(n), int(n)) for n in re.findall(r"^SPECTFORMER_GRID\((\d+),", source, re.M))
    assert grids == cuda_backend.SOURCE_CUFFTDX_GRIDS


def test_backends_registered_and_unavailability_explained():
    for name in CUDA_BACKENDS:
        assert name in sk.registered_backends()
    reason = cuda_backend.availability()
    if reason is None:
        pytest.skip("the cuda backend is available here")
    assert isinstance(reason, str) and reason
    for name in CUDA_BACKENDS:
        assert name not in sk.available_backends()
    x, weight, _ = make_inputs((1, 4, 4, 2))
    with pytest.raises(sk.BackendUnavailableError, match="cuda"):
        spectral_gate(x, weight, backend="cuda")
    assert spectral_gate(x, weight).shape == x.shape  # auto still works


def test_supports_explains_why_not():
    x, weight, _ = make_inputs((1, 4, 4, 2))
    assert "CUDA" in cuda_backend.supports(x, weight)
    meta = torch.empty(1, 80, 80, 2, device="meta")
    meta_weight = torch.empty(80, 41, 2, 2, device="meta")
    assert "CUDA" in cuda_backend.supports_cufftdx(meta, meta_weight)


def _hermitian_part_of_self_conjugate_columns(spec: torch.Tensor, w: int) -> torch.Tensor:
    """What the cuFFT gate writes before C2R: DC/Nyquist columns -> (Y[h] + conj(Y[-h])) / 2."""
    out = spec.clone()
    h = spec.shape[1]
    mirror = (-torch.arange(h)) % h
    for k in self_conjugate_bins(w):
        out[:, :, k] = (spec[:, :, k] + spec[:, mirror, k].conj()) / 2
    return out


def _exact_c2r(spec: torch.Tensor, w: int) -> torch.Tensor:
    """Any correct C2R on Hermitian input: real part of the inverse of the full spectrum."""
    b, h, wk, c = spec.shape
    full = torch.zeros(b, h, w, c, dtype=spec.dtype)
    full[:, :, :wk] = spec
    mirror = (-torch.arange(h)) % h
    for k in range(wk, w):
        full[:, :, k] = spec[:, mirror, w - k].conj()
    return torch.fft.ifft2(full, dim=(1, 2)).real * (h * w)  # unnormalised, like cuFFT


@pytest.mark.parametrize("shape", [(2, 5, 9, 3), (2, 6, 8, 2), (1, 7, 7, 4), (2, 4, 1, 3), (1, 1, 6, 2)],
                         ids=str)
def test_cufft_gate_algebra_matches_oracle(shape):
    """The formulas of csrc/cufft_gate.cu (unnormalised transforms, 1/(HW) in the gate,
    Hermitian part of the self-conjugate columns, dK = c_k/(HW) sum_b conj(X) D,
    G = D conj(K)/(HW)) in float64 torch, against the oracle's forward and gradients."""
    b, h, w, c = shape
    x, weight, grad = (t.double() for t in make_inputs(shape))
    k = torch.view_as_complex(weight.contiguous())
    scale = 1.0 / (h * w)
    X = torch.fft.rfft2(x, dim=(1, 2))
    y = _exact_c2r(_hermitian_part_of_self_conjugate_columns(X * k * scale, w), w)
    D = torch.fft.rfft2(grad, dim=(1, 2))
    ck = half_spectrum_weights(w)
    dk = (X.conj() * D).sum(0) * ck[:, None] * scale
    dx = _exact_c2r(_hermitian_part_of_self_conjugate_columns(D * k.conj() * scale, w), w)
    y64, gx64, gw64 = oracle(x, weight, grad)
    assert rel_err(y, y64) < 1e-12
    assert rel_err(dx, gx64) < 1e-12
    assert rel_err(torch.view_as_real(dk), gw64) < 1e-12


@pytest.mark.parametrize("shape", [(2, 5, 9, 3), (2, 6, 8, 2), (1, 7, 7, 4), (2, 4, 1, 3)], ids=str)
def test_cufft_callback_gate_algebra(shape):
    """The LTO store callback's gate (csrc/cufft_callbacks.cu): every bin on its own, with the
    Hermitian part of K along H in the DC/Nyquist columns, X * (K[h] + conj(K[-h])) / 2. As X
    is Hermitian there, that is the Hermitian part of X K, so the C2R input is Hermitian."""
    b, h, w, c = shape
    x, weight, grad = (t.double() for t in make_inputs(shape))
    k = torch.view_as_complex(weight.contiguous())
    mirror = (-torch.arange(h)) % h
    k_cb = k.clone()
    for col in self_conjugate_bins(w):
        k_cb[:, col] = (k[:, col] + k[mirror, col].conj()) / 2
    X = torch.fft.rfft2(x, dim=(1, 2))
    Y = X * k_cb / (h * w)
    for col in self_conjugate_bins(w):
        herm = torch.view_as_real(Y[:, mirror, col].conj().resolve_conj())
        assert rel_err(herm, torch.view_as_real(Y[:, :, col])) < 1e-13
    y64 = oracle(x, weight)
    assert rel_err(_exact_c2r(Y, w), y64) < 1e-12


# ---- on a GPU, with the extension built -------------------------------------------------------

needs_cuda_backend = pytest.mark.skipif(
    cuda_backend.availability() is not None,
    reason=f"cuda backend unavailable: {cuda_backend.availability()}",
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
AWKWARD_SHAPES = helpers.AWKWARD_SHAPES + [
    (1, 1, 17, 3),
    (1, 17, 1, 3),
    (3, 12, 12, 33),
    (2, 24, 24, 20),
    (1, 48, 48, 6),
    (2, 32, 32, 7),
    (1, 64, 64, 5),
    (1, 65, 33, 3),
]
# The benchmark grids at batch 8; one full batch-128 case is marked slow.
MODEL_SHAPES = [(8, *grid) for grid in SHAPES.values()]


def _usable(backend, shape):
    _, h, w, _ = shape
    if backend == "cuda_cufftdx" and (h, w) not in cuda_backend.CUFFTDX_GRIDS:
        pytest.skip(f"cuda_cufftdx has no kernel for {h}x{w}")


def _poison_allocator(*like: torch.Tensor):
    """Fill freed blocks of the outputs' sizes with NaN so that the caching allocator hands
    NaN memory to the op: an element a kernel forgets to write stays NaN."""
    blocks = [torch.full_like(t, float("nan"), memory_format=torch.contiguous_format) for t in like]
    del blocks


def _run(x, weight, grad, backend):
    x = x.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    _poison_allocator(x, x, weight)
    y = spectral_gate(x, weight, backend=backend)
    _poison_allocator(x, weight)
    y.backward(grad)
    torch.cuda.synchronize()
    return y.detach(), x.grad, weight.grad


def _check(shape, dtype, backend, seed, transform=lambda t: t):
    _usable(backend, shape)
    x, weight, grad = make_inputs(shape, dtype, device="cuda", seed=seed)
    x = transform(x)
    y, gx, gw = _run(x, weight, grad, backend)
    assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == torch.float32
    assert_matches_oracle(x, weight, grad, (y, gx, gw), f"{backend} {shape} {dtype} (seed {seed})")


@needs_cuda_backend
@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES + MODEL_SHAPES, ids=str)
def test_matches_float64_oracle(shape, dtype, backend):
    _check(shape, dtype, backend, fresh_seed())


@needs_cuda_backend
@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_full_batch_model_shape(backend):
    _check((128, 14, 14, 384), torch.bfloat16, backend, fresh_seed())


@needs_cuda_backend
@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 14, 14, 40), (2, 40, 36, 6), (2, 56, 56, 16)], ids=str)
def test_strided_inputs(shape, backend):
    """x as a permuted view (channels not innermost) and a sliced view."""
    b, h, w, c = shape

    def permuted(x):
        return x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)

    def sliced(x):
        wide = torch.cat([x, x], dim=3)
        return wide[..., ::2]

    _check(shape, torch.float32, backend, fresh_seed(), permuted)
    _check(shape, torch.bfloat16, backend, fresh_seed(), sliced)


@needs_cuda_backend
@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("shape", [(16, 14, 14, 384), (5, 56, 56, 64), (3, 7, 7, 3)], ids=str)
def test_grad_weight_is_bitwise_reproducible(shape, backend):
    _usable(backend, shape)
    x, weight, grad = make_inputs(shape, torch.float32, device="cuda")
    first = _run(x, weight, grad, backend)
    second = _run(x, weight, grad, backend)
    assert torch.equal(first[2], second[2]), "dK differs between identical runs"
    assert torch.equal(first[1], second[1]), "dx differs between identical runs"


@needs_cuda_backend
@pytest.mark.cuda
def test_expanded_grad_and_weight_dtype():
    """y.sum().backward() hands the backward a stride-0 gradient; a bf16 weight is cast."""
    for backend in CUDA_BACKENDS:
        shape = (2, 12, 12, 6) if backend == "cuda_cufftdx" else (2, 9, 10, 6)
        x, weight, _ = make_inputs(shape, torch.float32, device="cuda")
        xr = x.clone().requires_grad_(True)
        spectral_gate(xr, weight, backend=backend).sum().backward()
        _, gx64, _ = oracle(x, weight, torch.ones_like(x))
        assert rel_err(xr.grad, gx64) <= 1e-5
        wb = weight.to(torch.bfloat16).requires_grad_(True)
        spectral_gate(x, wb, backend=backend).sum().backward()
        assert wb.grad.dtype == torch.bfloat16


@needs_cuda_backend
@pytest.mark.cuda
def test_cufft_callbacks_and_their_fallback(monkeypatch):
    """Built with LTO callbacks, the callback plans must actually be made here (else the
    failure is reported); both the callback path and the gate-kernel fallback
    (SPECTFORMER_CUFFT_CALLBACKS=0) must match the oracle."""
    for shape in ((2, 7, 6, 5), (2, 33, 20, 35)):
        for dtype in (torch.float32, torch.bfloat16):
            _check(shape, dtype, "cuda_cufft", fresh_seed())
    if cuda_backend.CUFFT_LTO_CALLBACKS:
        failure = cuda_backend.cufft_callback_failure()
        assert failure == "", f"cuFFT callback plans could not be made: {failure}"
    monkeypatch.setenv("SPECTFORMER_CUFFT_CALLBACKS", "0")
    for shape in ((2, 7, 6, 5), (2, 33, 20, 35)):
        _check(shape, torch.float32, "cuda_cufft", fresh_seed())


@needs_cuda_backend
@pytest.mark.cuda
def test_opcheck_and_low_level_errors():
    x, weight, _ = make_inputs((2, 6, 6, 4), torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.spectformer.spectral_gate.default, (x, weight, "cuda"))
    forward = torch.ops.spectformer_cuda.spectral_gate_forward
    with pytest.raises(ValueError, match="path must be"):
        forward(x, weight, "nope")
    with pytest.raises(TypeError, match="weight must be float32"):
        forward(x, weight.double(), "cufft")
    with pytest.raises(ValueError, match="weight must have shape"):
        forward(x, weight[:, :-1], "cufft")
    with pytest.raises(ValueError, match="path 'cufftdx' has no kernel"):
        forward(x, weight, "cufftdx")  # 6x6: not a compiled grid


@needs_cuda_backend
@pytest.mark.cuda
def test_sanitizer_subset():
    """Small cases through every path and dtype, forward and backward: the selection the GPU
    session runs under compute-sanitizer (-k sanitizer), where every launch is slow."""
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((2, 7, 6, 5), (3, 14, 14, 40), (1, 33, 20, 3)):
            _check(shape, dtype, "cuda_cufft", fresh_seed())
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in ((2, 7, 7, 5), (3, 14, 14, 40), (2, 28, 28, 24), (1, 56, 56, 9)):
            _check(shape, dtype, "cuda_cufftdx", fresh_seed())
