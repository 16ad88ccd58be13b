"""The ``dft`` backend: the spectral gate as small matrix products in plain PyTorch ops.

No FFT op anywhere, so it runs wherever matmul runs (CPU, GPU, ``torch.compile``, ONNX
export) and in every dtype (bf16/fp16 inputs are computed in fp32, fp64 in fp64). It is the
fast CPU path.

Two forms, chosen per grid (``_matrices``):

* **Dense map** (``H * W <= DENSE_MAX_TOKENS``, e.g. 7x7): the whole rfft2 and the whole
  inverse are one real matrix each, so a transform is a single GEMM whose inner dimension
  is H*W or 2*H*Wk; the spectrum is complex ``(B, C, H*Wk)`` (``_DenseMap``).
* **Separable** (larger grids, ``_Separable``), below.

Layout. The half spectrum is one complex tensor ``(B, H, C, Wk)``, channels before
frequencies, so that the gate is a single complex multiply, ``dK`` one multiply and one
reduction, and every transform a GEMM on views (transposed views included) of the previous
result, never a permuted copy:

    x (B*H, W, C)^T @ Fw            W axis: real (W, 2*Wk) matrix, (re, im) interleaved
    Fh @ (B, H, C*Wk)               H axis: complex (H, H) matrix
    * K                             the gate, K laid out like the spectrum once per call
    conj(Fh) @ ...,  Gw @ (...)^T   the inverse stages, CPU ``irfft2`` semantics

Factored H axis. A dense DFT along H costs O(H) per element, which loses to the FFT at 28
and 56. For composite ``H = N1 * N2`` (``H_FACTORS``) the H transform is two GEMMs instead,
Cooley-Tukey with the twiddles folded into the second stage's matrices, O(N1 + N2) per
element. The spectrum then comes out permuted (position ``k1 * N2 + k2`` holds frequency
``k1 + N1 * k2``); the gate is diagonal, so ``K`` is permuted the same way, and the inverse
(the conjugate-transposed stages in reverse order) returns to natural order.

Inverse along W. ``Gw = Fw^H diag(c_k)`` with ``c_k`` = 1 for DC and Nyquist, 2 otherwise:
the real inverse is the real transpose of the forward matrix with ``c_k`` folded in, which
drops the imaginary part of the DC and Nyquist bins as CPU ``irfft`` does. Backward: ``dx``
is the forward map with ``conj(K)`` (the map is self-adjoint up to conjugating ``K``,
``docs/design.md``, "Derivatives") and ``dK = sum_b conj(X) * c * D`` with ``D`` the spectrum of ``dy``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .backends import Backend, register_backend
from .contract import compute_dtype, half_spectrum_size, half_spectrum_weights, self_conjugate_bins
from .dft_matrices import dense_maps

# H-axis length -> (N1, N2) for the factored transform; other lengths use one dense DFT.
# Chosen from CPU measurements (1 thread, batch 16, 28x28x192 and 56x56x64): factoring H
# cut the forward by 20-25% there, and cost 15-20% at 14x14 (14 = 2 * 7).
H_FACTORS = {28: (4, 7), 56: (8, 7), 48: (8, 6), 96: (8, 12)}

# Factoring the real W axis the same way (56 = 4 * 14 or 8 * 7: a real N1-point DFT, then
# per conjugate-paired group a small matrix onto its frequencies) measured 27% faster at
# 56x56x64 in one run and 0-7% slower in five others on the same machine (2 threads, batch
# 16, interleaved), and no faster at 28x28: W always uses the dense matrix.

# Grids of at most this many tokens use one dense real matrix per transform (_DenseMap).
# From CPU measurements (2 threads, batch 16, interleaved with the separable form; forward,
# forward+backward): dense 1.56x / 1.59x faster at 7x7x768, 1.62x / 1.49x at 8x8x512,
# 1.31x / 1.15x at 9x9x512; slower at 10x10x384 (0.88x / 0.72x) and 12x12x384 (0.63x / 0.83x).
DENSE_MAX_TOKENS = 81

# On the CPU the batch is processed in chunks of about this many spectrum bytes, so that a
# chunk stays in cache from the first transform to the last (CPU measurements, 2 threads,
# batch 16, forward, chunk sizes interleaved: 4 MB took 12.8 / 4.0 / 12.5 ms at 56x56x64 /
# 14x14x384 / 28x28x192, against 17.1 / 5.7 / 13.8 with 2 MB and 16.1 / 5.0 / 12.5 with 8 MB;
# whole-batch passes were slower still).
CPU_CHUNK_BYTES = 4 << 20

# The CPU path keeps its intermediates in a per-thread workspace of three buffers, kept
# between calls while they total at most this many bytes (larger needs get buffers for the
# call, still reused across its chunks). Measured on the 2-core development VM (2 threads,
# batch 16, interleaved with a fresh allocation per stage, ms with / without): forward
# 5.68 / 6.02 at 14x14x384 fp32, 3.18 / 3.57 in bf16 (the conversions land in the
# workspace too), 16.1 / 17.1 at 56x56x64 fp32; forward+backward 4.96 / 5.34 at 7x7x768,
# but no faster in some runs (14x14x384 fp32 16.70 / 16.68, 56x56x96 fp32 forward 25.9 / 25.5).
# The page faults per forward at 14x14x384 fell from about 390 to 290 (the output is still
# fresh memory).
WORKSPACE_MAX_BYTES = 32 << 20
_WORKSPACE_BUFFERS = 3  # the backward's peak: the spectra of dy and x, and one stage output


class _Scratch:
    """Buffers for one call's intermediates: ``take`` hands out a free one viewed as the
    requested shape and dtype (an ``out=`` argument), ``give`` returns it once its contents
    are dead. Without a pool (export, autograd recording the ops, other devices) ``take``
    gives None, so every op allocates its result as usual, and ``give`` does nothing.
    ``recording``: autograd records the ops, so nothing may be written with ``out=``."""

    def __init__(self, pool: Optional[list] = None, recording: bool = False):
        self._free = list(pool or ())
        self._used: dict[int, torch.Tensor] = {}
        self._pooled = pool is not None
        self.recording = recording

    def take(self, shape, dtype: torch.dtype) -> Optional[torch.Tensor]:
        if not self._pooled:
            return None
        buffer = self._free.pop()
        view = buffer[:math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
        self._used[view.data_ptr()] = buffer
        return view

    def give(self, tensor: torch.Tensor) -> None:
        """Return ``tensor``'s buffer (nothing if it is not a scratch buffer, e.g. an input
        that needed no conversion)."""
        if self._pooled and tensor.data_ptr() in self._used:
            self._free.append(self._used.pop(tensor.data_ptr()))

    def converted(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x`` in ``dtype``: itself, or a converted copy in a scratch buffer."""
        buffer = self.take(x.shape, dtype) if x.dtype != dtype else None
        return x.to(dtype) if buffer is None else buffer.copy_(x)


_workspace = threading.local()


def _cpu_pool(nbytes: int) -> list:
    """Byte buffers of at least ``nbytes`` each: this thread's workspace (grown when too
    small) if it stays within WORKSPACE_MAX_BYTES, else fresh ones."""
    if _WORKSPACE_BUFFERS * nbytes > WORKSPACE_MAX_BYTES:
        return [torch.empty(nbytes, dtype=torch.uint8) for _ in range(_WORKSPACE_BUFFERS)]
    kept = getattr(_workspace, "buffers", None)
    if kept is None or kept[0].numel() < nbytes:
        kept = [torch.empty(nbytes, dtype=torch.uint8) for _ in range(_WORKSPACE_BUFFERS)]
        _workspace.buffers = kept
    return kept


def _twiddle(rows: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """``exp(-2i pi rows*cols / n)`` in complex128, the angle reduced exactly mod ``n``."""
    turns = torch.remainder(rows.to(torch.int64) * cols.to(torch.int64), n).to(torch.float64)
    angle = (-2.0 * math.pi / n) * turns
    return torch.polar(torch.ones_like(angle), angle)


def _matmul_into(matrix: torch.Tensor, operand: torch.Tensor, out: torch.Tensor,
                 scratch: _Scratch) -> torch.Tensor:
    """``matrix @ operand`` (batched over ``operand``'s first axis) written into ``out``:
    straight into it when the dtypes match, else through a scratch buffer, converted on the
    copy."""
    shape = (operand.shape[0], matrix.shape[0], operand.shape[-1])
    if out.dtype == matrix.dtype and not scratch.recording:
        torch.matmul(matrix, operand, out=out.view(shape))
    else:
        result = torch.matmul(matrix, operand, out=scratch.take(shape, matrix.dtype))
        out.view(shape).copy_(result)
        scratch.give(result)
    return out


@dataclass(frozen=True)
class _Separable:
    """One grid's transforms in one dtype on one device; the spectrum is complex
    ``(B, H, C*Wk)``."""

    w_forward: torch.Tensor  # (W, 2*Wk) real, (re, im) interleaved columns
    w_inverse: torch.Tensor  # (W, 2*Wk) real, c_k folded in
    h_factors: Optional[tuple[int, int]]
    h_forward: tuple[torch.Tensor, ...]  # (Fh,) or (F1 (N1, N1), G (N1, N2, N2))
    h_inverse: tuple[torch.Tensor, ...]  # (conj Fh,) or (G^H per k1, F1^H)
    c_weights: torch.Tensor  # (Wk,) c_k

    def spectrum_bytes(self, h: int, c: int) -> int:
        return h * c * self.c_weights.numel() * 2 * self.c_weights.dtype.itemsize

    def spectrum(self, x: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
        """Forward ortho ``rfft2`` of real ``x (B, H, W, C)`` as complex ``(B, H, C*Wk)``."""
        b, h, w, c = x.shape
        dtype = self.w_forward.dtype
        x = scratch.converted(x, dtype)
        along_w = torch.matmul(x.reshape(b * h, w, c).transpose(1, 2), self.w_forward,
                               out=scratch.take((b * h, c, self.w_forward.shape[1]), dtype))
        scratch.give(x)
        return _along_h(torch.view_as_complex(along_w.view(b, h, -1, 2)), self.h_forward,
                        self.h_factors, False, scratch)

    def inverse(self, spec: torch.Tensor, out: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
        """Ortho ``irfft2`` (CPU semantics) of complex ``(B, H, C*Wk)`` into ``out (B, H, W,
        C)`` (converted to ``out``'s dtype); ``spec``'s buffer is reused."""
        b, h, _, c = out.shape
        along_h = torch.view_as_real(_along_h(spec, self.h_inverse, self.h_factors, True, scratch))
        cols = along_h.view(b * h, c, -1).transpose(1, 2)  # (BH, 2Wk, C) view
        _matmul_into(self.w_inverse, cols, out, scratch)
        scratch.give(along_h)
        return out

    # The factored H axis leaves position k1 * N2 + k2 holding frequency k1 + N1 * k2: the
    # natural axis split as (N2, N1) and transposed, so the filter and its gradient move
    # between the two orders by views, with one copy each.

    def filter_layout(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``K (H, Wk, C, 2)`` -> complex ``(H, C*Wk)`` in the spectrum's order."""
        h = weight.shape[0]
        k = weight.to(dtype)
        if self.h_factors is not None:
            n1, n2 = self.h_factors
            k = k.unflatten(0, (n2, n1)).transpose(0, 1)  # (N1, N2, Wk, C, 2)
        # Permuted as real (..., 2) pairs, made complex last: one weight-sized copy.
        k = k.transpose(-3, -2).contiguous()  # (..., C, Wk, 2)
        return torch.view_as_complex(k).reshape(h, -1)

    def filter_gradient(self, grad: torch.Tensor, wk: int, c: int) -> torch.Tensor:
        """``sum_b conj(X) * d_spec``, complex ``(H, C*Wk)`` in the spectrum's order -> dK,
        real ``(H, Wk, C, 2)`` (the c_k weights applied in place)."""
        h = grad.shape[0]
        grad = grad.view(h, c, wk).mul_(self.c_weights)
        g = torch.view_as_real(grad).transpose(1, 2)  # (H, Wk, C, 2)
        if self.h_factors is not None:
            n1, n2 = self.h_factors
            g = g.unflatten(0, (n1, n2)).transpose(0, 1)  # (N2, N1, Wk, C, 2): natural order
        return g.contiguous().view(h, wk, c, 2)


@dataclass(frozen=True)
class _DenseMap:
    """A small grid (``H * W <= DENSE_MAX_TOKENS``): the whole rfft2 and the whole inverse as
    one real matrix each (``dft_matrices.dense_maps``, CPU ``irfft2`` semantics), so each
    transform is one GEMM with a long inner dimension (H*W or 2*H*Wk) instead of two with
    inner dimensions W and H. The spectrum is complex ``(B, C, H*Wk)``."""

    forward: torch.Tensor  # (H*W, 2*H*Wk), columns (h, k, re/im)
    inverse_t: torch.Tensor  # (H*W, 2*H*Wk): the inverse map, transposed to apply from the left
    c_weights: torch.Tensor  # (H*Wk,): c_k of each spectrum column

    def spectrum_bytes(self, h: int, c: int) -> int:
        return c * self.c_weights.numel() * 2 * self.c_weights.dtype.itemsize

    def spectrum(self, x: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
        b, h, w, c = x.shape
        x = scratch.converted(x, self.forward.dtype)
        s = torch.matmul(x.reshape(b, h * w, c).transpose(1, 2), self.forward,  # (B, C, 2HWk)
                         out=scratch.take((b, c, self.forward.shape[1]), self.forward.dtype))
        scratch.give(x)
        return torch.view_as_complex(s.view(b, c, -1, 2))

    def inverse(self, spec: torch.Tensor, out: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
        b, c = out.shape[0], out.shape[-1]
        cols = torch.view_as_real(spec).view(b, c, -1).transpose(1, 2)  # (B, 2HWk, C) view
        _matmul_into(self.inverse_t, cols, out, scratch)
        scratch.give(spec)
        return out

    def filter_layout(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h, wk, c, _ = weight.shape
        k = weight.to(dtype).permute(2, 0, 1, 3).contiguous()  # (C, H, Wk, 2)
        return torch.view_as_complex(k).view(c, h * wk)

    def filter_gradient(self, grad: torch.Tensor, wk: int, c: int) -> torch.Tensor:
        h = grad.shape[-1] // wk
        g = torch.view_as_real(grad.mul_(self.c_weights)).view(c, h, wk, 2)
        return g.permute(1, 2, 0, 3).contiguous()


@lru_cache(maxsize=None)
def _float64_matrices(h: int, w: int) -> _Separable:
    wk = half_spectrum_size(w)
    forward = _twiddle(torch.arange(w)[:, None], torch.arange(wk)[None, :], w) / math.sqrt(w)
    forward = torch.view_as_real(forward).flatten(1)  # (W, 2*Wk)
    # Im of DC and Nyquist: exactly zero, not 1e-17.
    forward.view(w, wk, 2)[:, list(self_conjugate_bins(w)), 1] = 0.0
    c = half_spectrum_weights(w)
    w_inverse = forward * c.repeat_interleave(2)

    h_factors = H_FACTORS.get(h)
    if h_factors is None:
        fh = _twiddle(torch.arange(h)[:, None], torch.arange(h)[None, :], h) / math.sqrt(h)
        h_forward, h_inverse = (fh,), (fh.conj(),)  # symmetric: F^H = conj(F)
    else:
        n1, n2 = h_factors
        k1, k2 = torch.arange(n1), torch.arange(n2)
        f1 = _twiddle(k1[:, None], k1[None, :], n1) / math.sqrt(n1)  # (k1, n1)
        # per k1: (k2, n2) = twiddle W_H^(n2 k1) times the size-N2 DFT W_N2^(n2 k2)
        g = (_twiddle(k1[:, None, None], k2[None, None, :], h)
             * _twiddle(k2[None, :, None], k2[None, None, :], n2)) / math.sqrt(n2)
        h_forward = (f1, g)
        h_inverse = (g.conj().transpose(-1, -2), f1.conj().T)
    return _Separable(forward, w_inverse, h_factors, h_forward, h_inverse, c)


_cache: dict[tuple, object] = {}


def _matrices(h: int, w: int, dtype: torch.dtype, device: torch.device):
    """The grid's transforms in ``dtype`` on ``device``: a ``_DenseMap`` for small grids,
    else a ``_Separable``."""
    dense = h * w <= DENSE_MAX_TOKENS
    key = (h, w, dtype, device, dense)
    found = _cache.get(key)
    if found is None:
        # Constants, built for real even while torch.export / ONNX export traces the
        # caller (traced, their complex casts would land in the exported graph).
        with _disable_current_modes():
            found = _dense_map(h, w, dtype, device) if dense else _separable(h, w, dtype, device)
        _cache[key] = found
    return found


def _dense_map(h: int, w: int, dtype: torch.dtype, device: torch.device) -> _DenseMap:
    forward, inverse = dense_maps(h, w, dtype, device)
    c = half_spectrum_weights(w).repeat(h).to(device=device, dtype=dtype)
    return _DenseMap(forward, inverse.T.contiguous(), c)


def _separable(h: int, w: int, dtype: torch.dtype, device: torch.device) -> _Separable:
    base = _float64_matrices(h, w)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64

    def move(t, to):
        return t.to(device=device, dtype=to).contiguous()

    return _Separable(
        move(base.w_forward, dtype), move(base.w_inverse, dtype), base.h_factors,
        tuple(move(t, cdtype) for t in base.h_forward),
        tuple(move(t, cdtype) for t in base.h_inverse),
        move(base.c_weights, dtype),
    )


# -- the two transforms ------------------------------------------------------------------------

def _along_h(spec: torch.Tensor, mats: tuple[torch.Tensor, ...], factors, inverse: bool,
             scratch: _Scratch) -> torch.Tensor:
    """The H-axis transform (dense or factored, forward or inverse) of ``(B, H, M)``, each
    stage into a scratch buffer, its input's buffer given back."""
    b, h, cols = spec.shape
    if factors is None:
        shapes = [(b, h, cols)]
    else:
        # forward: F1 over n1, then the twiddled G per k1 over n2; inverse: the
        # conjugate-transposed stages in reverse (G^H per k1 over k2, then F1^H over k1)
        n1, n2 = factors
        shapes = [(b, n1, n2 * cols), (b, n1, n2, cols)][::-1 if inverse else 1]
    for matrix, shape in zip(mats, shapes):
        out = torch.matmul(matrix, spec.view(shape),
                           out=scratch.take(shape, spec.dtype))
        scratch.give(spec)
        spec = out
    return spec.view(b, h, cols)


def _image_chunks(m, chunked: bool, x: torch.Tensor, *others: torch.Tensor) -> tuple:
    """Slices of the batch processed one after another, and the scratch for their
    intermediates. On the CPU each chunk's spectrum stays in cache through all the stages,
    and the scratch buffers come from the workspace unless autograd records the ops (a
    caller differentiating through this function). Elsewhere, and when the caller traces the
    op for export (``chunked=False``), one slice and intermediates allocated as usual."""
    b, h, w, c = x.shape
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *others))
    if not chunked or x.device.type != "cpu":
        return [slice(0, b)], _Scratch(recording=recording)
    per_image = m.spectrum_bytes(h, c)
    step = max(1, CPU_CHUNK_BYTES // (2 * per_image))  # with headroom for the matrices
    chunks = [slice(i, min(i + step, b)) for i in range(0, b, step)]
    if recording:
        return chunks, _Scratch(recording=True)
    return chunks, _Scratch(_cpu_pool(min(step, b) * per_image))


def spectral_gate_dft(x: torch.Tensor, weight: torch.Tensor, *, chunked: bool = True) -> torch.Tensor:
    _, h, w, c = x.shape
    dtype = compute_dtype(x.dtype)
    m = _matrices(h, w, dtype, x.device)
    k = m.filter_layout(weight, dtype)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    chunks, scratch = _image_chunks(m, chunked, x, weight)
    for images in chunks:
        spec = m.spectrum(x[images], scratch)
        m.inverse(spec.mul_(k), y[images], scratch)
    return y


def spectral_gate_dft_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of the forward map: returns ``(grad_x, grad_weight)``."""
    _, h, w, c = x.shape
    wk = half_spectrum_size(w)
    dtype = compute_dtype(x.dtype)
    m = _matrices(h, w, dtype, x.device)
    k_conj = m.filter_layout(weight, dtype).conj_physical()
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grad_k = None
    chunks, scratch = _image_chunks(m, True, x, grad_out, weight)
    for images in chunks:
        d_spec = m.spectrum(grad_out[images], scratch)  # the spectrum of dy: D = c * d_spec
        spec = m.spectrum(x[images], scratch)
        # sum_b conj(X) * d_spec, in X's buffer; conj_physical_, not conj() or linalg.vecdot:
        # their lazy conjugate bit is lost inside an AOTAutograd graph.
        partial = spec.conj_physical_().mul_(d_spec).sum(0)
        scratch.give(spec)
        grad_k = partial if grad_k is None else grad_k.add_(partial)  # chunks in order
        # dx = the forward map with conj(K): the inverse of D * conj(K) / c = d_spec * conj(K).
        m.inverse(d_spec.mul_(k_conj), grad_x[images], scratch)
    return grad_x, m.filter_gradient(grad_k, wk, c)  # dK = sum_b conj(X) * c * d_spec


register_backend(Backend(
    "dft", spectral_gate_dft, spectral_gate_dft_backward,
    "the DFT as matrix products in plain PyTorch (one dense map for small grids, else separable)",
    widens_16bit=True,
))
