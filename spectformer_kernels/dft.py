"""The ``dft`` backend: the spectral gate as small matrix products in plain PyTorch ops.

No FFT op anywhere, so it runs wherever matmul runs (CPU, GPU, ``torch.compile``, ONNX
export) and in every dtype (bf16/fp16 inputs are computed in fp32, fp64 in fp64). It is the
fast CPU path.

Layout. The half spectrum is held as one complex tensor ``(B, H, C, Wk)``, channels before
frequencies, so that the gate is a single complex multiply and every transform is a GEMM
whose operands are views (transposed views included) of the previous result, never a
permuted copy:

    x (B*H, W, C)  --W-->  (B*H, C, Wk) complex  --H-->  X (B, H, C*Wk) complex
    X * K          one complex multiply (K laid out like X once per call, a weight-sized copy)
    inverse        the transposes of the two stages, CPU ``irfft2`` semantics

Factored transforms. A dense DFT along an axis of length N costs O(N) per element, which
loses to the FFT at 28 and 56. For composite N = N1 * N2 an axis can instead be two GEMMs
(Cooley-Tukey with the twiddles folded into the second stage's matrices), O(N1 + N2) per
element. The spectrum then comes out in a permuted order (position ``k1 * N2 + k2`` holds
frequency ``k1 + N1 * k2``); the gate is diagonal, so ``K`` is permuted the same way, and
the inverse (the transposed stages) returns to natural order. Along the real W axis the
first stage makes all N1 complex outputs and the second keeps the ``K2 = (W//2)//N1 + 1``
values of ``k2`` that reach the half spectrum; the few extra bins (``k >= W//2+1``) carry a
zero filter and a zero inverse weight. Which axes are factored, and how, is ``FACTORS``,
chosen from CPU measurements (README, ``benchmarks/results/spectral_gate_cpu.csv``).

Inverse along W. ``Gw = Fw^H diag(c_k)`` (``c_k`` = 2 for interior bins, 1 for DC and
Nyquist, 0 for the extra bins): the real inverse is the real transpose of the forward
stages with ``c_k`` folded in, which also drops the imaginary part of the DC and Nyquist
bins as CPU ``irfft`` does. Backward: ``dx`` is the forward map with ``conj(K)`` (the map is
self-adjoint up to conjugating ``K``, DESIGN section 1) and ``dK = sum_b conj(X) * c * D``
with ``D`` the spectrum of ``dy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch.utils._python_dispatch import _disable_current_modes

# Axis length -> (N1, N2) for the factored transforms; other lengths use one dense DFT.
# From CPU measurements (2 threads, batch 16; see the module docstring). H is the complex
# axis, W the real one.
FACTORS = {
    "H": {28: (4, 7), 56: (8, 7), 48: (8, 6), 96: (8, 12)},
    "W": {56: (8, 7), 96: (8, 12)},
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (gradcheck); every other input is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _twiddle(rows: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """``exp(-2i pi rows*cols / n)`` in complex128, the angle reduced exactly mod ``n``."""
    turns = torch.remainder(rows.to(torch.int64) * cols.to(torch.int64), n).to(torch.float64)
    angle = (-2.0 * math.pi / n) * turns
    return torch.polar(torch.ones_like(angle), angle)


def _as_real_columns(m: torch.Tensor) -> torch.Tensor:
    """Complex ``(..., n_in, n_out)`` acting on real inputs -> real ``(..., n_in, 2*n_out)``
    with (re, im) interleaved columns: ``x @ result`` is the complex result viewed as real."""
    return torch.view_as_real(m).flatten(-2)


def _as_real_block(m: torch.Tensor) -> torch.Tensor:
    """Complex ``(..., n_out, n_in)`` -> real ``(..., 2*n_in, 2*n_out)``. For a real block
    ``T (2*n_in, C)`` holding [Re; Im] of a complex ``(n_in, C)``, ``T^T @ result`` is
    ``(m @ T)^T`` with (re, im) interleaved columns."""
    n_out, n_in = m.shape[-2:]
    re, im = m.real.transpose(-1, -2), m.imag.transpose(-1, -2)
    out = torch.empty(*m.shape[:-2], 2, n_in, n_out, 2, dtype=re.dtype)
    out[..., 0, :, :, 0], out[..., 0, :, :, 1] = re, im  # rows multiplying Re T
    out[..., 1, :, :, 0], out[..., 1, :, :, 1] = -im, re  # rows multiplying Im T
    return out.reshape(*m.shape[:-2], 2 * n_in, 2 * n_out)


@dataclass(frozen=True)
class _Plan:
    """Float64 matrices and layout maps for one (H, W) grid (cast per dtype/device)."""

    # W axis, dense: forward (W, 2*Wk) interleaved; inverse (W, 2*Wk) with c_k folded in.
    w_forward: Optional[torch.Tensor]
    w_inverse: Optional[torch.Tensor]
    # W axis, factored (N1, N2, K2): stage 1 (2*N1, N1) real rows (k1, part); stage 2
    # (N1, 2*N2, 2*K2) per k1; inverse stage 2 with c_k folded in; inverse stage 1 (N1, 2*N1).
    w_factors: Optional[tuple[int, int, int]]
    w_stage1: Optional[torch.Tensor]
    w_stage2: Optional[torch.Tensor]
    w_stage2_inverse: Optional[torch.Tensor]
    # H axis, complex: dense (H, H), or factored (N1, N1) and (N1, N2, N2) per k1.
    h_factors: Optional[tuple[int, int]]
    h_forward: tuple[torch.Tensor, ...]
    h_inverse: tuple[torch.Tensor, ...]
    # Frequency held at each layout position along H (length H) and along W (length Wk',
    # in (k1, k2) order when factored; values >= Wk mark the extra bins).
    h_frequency: torch.Tensor
    w_frequency: torch.Tensor
    c_weights: torch.Tensor  # (Wk',) c_k per W layout position, 0 for extra bins


def _half_spectrum_weights(w: int, frequencies: torch.Tensor) -> torch.Tensor:
    wk = w // 2 + 1
    c = torch.full(frequencies.shape, 2.0, dtype=torch.float64)
    c[frequencies == 0] = 1.0
    if w % 2 == 0:
        c[frequencies == w // 2] = 1.0
    c[frequencies >= wk] = 0.0
    return c


@lru_cache(maxsize=None)
def _plan(h: int, w: int) -> _Plan:
    wk = w // 2 + 1
    # -- W axis (real input, half spectrum) --
    w_factors = FACTORS["W"].get(w)
    if w_factors is None:
        freq_w = torch.arange(wk)
        forward = _twiddle(torch.arange(w)[:, None], freq_w[None, :], w) / math.sqrt(w)
        forward = _as_real_columns(forward)  # (W, 2*Wk)
        forward.view(w, wk, 2)[:, 0, 1] = 0.0  # Im of DC: exactly zero, not 1e-17
        if w % 2 == 0:
            forward.view(w, wk, 2)[:, -1, 1] = 0.0  # Im of Nyquist
        c = _half_spectrum_weights(w, freq_w)
        w_inverse = forward * c.repeat_interleave(2)
        w_parts = dict(w_forward=forward, w_inverse=w_inverse, w_factors=None, w_stage1=None,
                       w_stage2=None, w_stage2_inverse=None)
    else:
        n1, n2 = w_factors
        k2_count = (w // 2) // n1 + 1
        k1 = torch.arange(n1)
        stage1 = _twiddle(k1[:, None], k1[None, :], n1) / math.sqrt(n1)  # (k1, n1)
        stage1 = torch.view_as_real(stage1).permute(0, 2, 1).reshape(2 * n1, n1)
        n2_idx = torch.arange(n2)
        k2 = torch.arange(k2_count)
        # per k1: (k2, n2) complex = twiddle W_N^(n2 k1) * W_N2^(n2 k2), ortho scale 1/sqrt(N2)
        per_k1 = (_twiddle(k1[:, None, None], n2_idx[None, None, :], w)
                  * _twiddle(k2[None, :, None], n2_idx[None, None, :], n2)) / math.sqrt(n2)
        stage2 = _as_real_block(per_k1)  # (N1, 2*N2, 2*K2)
        freq_w = (k1[:, None] + n1 * k2[None, :]).reshape(-1)  # layout (k1, k2)
        c = _half_spectrum_weights(w, freq_w).view(n1, k2_count)
        stage2_inverse = stage2 * c.repeat_interleave(2, dim=1)[:, None, :]
        w_parts = dict(w_forward=None, w_inverse=None, w_factors=(n1, n2, k2_count),
                       w_stage1=stage1, w_stage2=stage2, w_stage2_inverse=stage2_inverse)
        c = c.reshape(-1)
    # -- H axis (complex) --
    h_factors = FACTORS["H"].get(h)
    if h_factors is None:
        fh = _twiddle(torch.arange(h)[:, None], torch.arange(h)[None, :], h) / math.sqrt(h)
        h_forward, h_inverse = (fh,), (fh.conj(),)  # symmetric: F^H = conj(F)
        freq_h = torch.arange(h)
    else:
        n1, n2 = h_factors
        k1, n2_idx = torch.arange(n1), torch.arange(n2)
        f1 = _twiddle(k1[:, None], k1[None, :], n1) / math.sqrt(n1)
        g = (_twiddle(k1[:, None, None], n2_idx[None, None, :], h)
             * _twiddle(n2_idx[None, :, None], n2_idx[None, None, :], n2)) / math.sqrt(n2)
        h_forward = (f1, g)
        h_inverse = (g.conj().transpose(-1, -2).contiguous(), f1.conj().T.contiguous())
        freq_h = (k1[:, None] + n1 * n2_idx[None, :]).reshape(-1)
    return _Plan(**w_parts, h_factors=h_factors, h_forward=h_forward, h_inverse=h_inverse,
                 h_frequency=freq_h, w_frequency=freq_w, c_weights=c)


@dataclass(frozen=True)
class _DevicePlan:
    plan: _Plan
    w_forward: Optional[torch.Tensor]
    w_inverse: Optional[torch.Tensor]
    w_stage1: Optional[torch.Tensor]
    w_stage1_inverse: Optional[torch.Tensor]
    w_stage2: Optional[torch.Tensor]
    w_stage2_inverse: Optional[torch.Tensor]
    h_forward: tuple[torch.Tensor, ...]
    h_inverse: tuple[torch.Tensor, ...]
    c_weights: torch.Tensor
    h_index: torch.Tensor  # gather K's H axis into layout order
    w_index: torch.Tensor  # gather K's (padded) W axis into layout order
    w_inverse_index: torch.Tensor  # layout positions of frequencies 0..Wk-1


_device_plans: dict[tuple, _DevicePlan] = {}


def _device_plan(h: int, w: int, dtype: torch.dtype, device: torch.device) -> _DevicePlan:
    key = (h, w, dtype, device)
    found = _device_plans.get(key)
    if found is not None:
        return found
    # Constants, built for real even while torch.export / ONNX export traces the caller
    # (traced, their complex casts would land in the exported graph).
    with _disable_current_modes():
        found = _build_device_plan(h, w, dtype, device)
    _device_plans[key] = found
    return found


def _build_device_plan(h: int, w: int, dtype: torch.dtype, device: torch.device) -> _DevicePlan:
    plan = _plan(h, w)
    cdtype = _complex_dtype(dtype)

    def real(t):
        return None if t is None else t.to(device=device, dtype=dtype).contiguous()

    def cplx(ts):
        return tuple(t.to(device=device, dtype=cdtype).contiguous() for t in ts)

    wk = w // 2 + 1
    position_of = torch.empty(wk, dtype=torch.int64)
    valid = plan.w_frequency < wk
    position_of[plan.w_frequency[valid]] = torch.arange(len(plan.w_frequency))[valid]
    return _DevicePlan(
        plan=plan,
        w_forward=real(plan.w_forward), w_inverse=real(plan.w_inverse),
        w_stage1=real(plan.w_stage1),
        w_stage1_inverse=None if plan.w_stage1 is None else real(plan.w_stage1.T),
        w_stage2=real(plan.w_stage2), w_stage2_inverse=real(plan.w_stage2_inverse),
        h_forward=cplx(plan.h_forward), h_inverse=cplx(plan.h_inverse),
        c_weights=real(plan.c_weights),
        h_index=plan.h_frequency.to(device),
        w_index=torch.clamp(plan.w_frequency, max=wk).to(device),  # wk -> a zero pad column
        w_inverse_index=position_of.to(device),
    )


# -- the two transforms --------------------------------------------------------------------------

def _spectrum(x: torch.Tensor, p: _DevicePlan) -> torch.Tensor:
    """Forward ortho ``rfft2`` of real ``x (B, H, W, C)`` in the layout ``(B, H, C*Wk')``."""
    b, h, w, c = x.shape
    rows = x.reshape(b * h, w, c)
    if p.w_forward is not None:
        along_w = torch.matmul(rows.transpose(1, 2), p.w_forward)  # (BH, C, 2Wk)
    else:
        n1, n2, _ = p.plan.w_factors
        t = torch.matmul(p.w_stage1, rows.reshape(b * h, n1, n2 * c))  # (BH, 2*N1, N2*C)
        t = t.view(b * h, n1, 2 * n2, c).transpose(-1, -2)  # (BH, N1, C, 2*N2) view
        along_w = torch.matmul(t, p.w_stage2)  # (BH, N1, C, 2*K2)
    spec = torch.view_as_complex(along_w.view(b, h, -1, 2))  # (B, H, M)
    return _along_h(spec, p.h_forward, p.plan.h_factors, inverse=False)


def _along_h(spec: torch.Tensor, mats: tuple[torch.Tensor, ...], factors, inverse: bool):
    """The H-axis transform (dense or factored, forward or inverse) of ``(B, H, M)``."""
    if factors is None:
        return torch.matmul(mats[0], spec)
    b, h, m = spec.shape
    n1, n2 = factors
    if not inverse:  # F1 over n1, then the twiddled G per k1 over n2
        t = torch.matmul(mats[0], spec.view(b, n1, n2 * m))
        return torch.matmul(mats[1], t.view(b, n1, n2, m)).view(b, h, m)
    # the transposed stages: G^H per k1 over k2, then F1^H over k1
    t = torch.matmul(mats[0], spec.view(b, n1, n2, m))
    return torch.matmul(mats[1], t.view(b, n1, n2 * m)).view(b, h, m)


def _inverse(spec: torch.Tensor, p: _DevicePlan, w: int, c: int) -> torch.Tensor:
    """Ortho ``irfft2`` (CPU semantics) of the layout ``(B, H, C*Wk')`` -> ``(B, H, W, C)``."""
    b, h, _ = spec.shape
    along_h = torch.view_as_real(_along_h(spec, p.h_inverse, p.plan.h_factors, inverse=True))
    if p.w_inverse is not None:
        cols = along_h.view(b * h, c, -1).transpose(1, 2)  # (BH, 2Wk, C) view
        y = torch.matmul(p.w_inverse, cols)  # (BH, W, C)
    else:
        n1, n2, k2 = p.plan.w_factors
        cols = along_h.view(b * h, n1, c, 2 * k2).transpose(-1, -2)  # (BH, N1, 2*K2, C)
        t = torch.matmul(p.w_stage2_inverse, cols)  # (BH, N1, 2*N2, C)
        y = torch.matmul(p.w_stage1_inverse, t.view(b * h, 2 * n1, n2 * c))  # (BH, N1, N2*C)
    return y.view(b, h, w, c)


def _filter_layout(weight: torch.Tensor, p: _DevicePlan, dtype: torch.dtype) -> torch.Tensor:
    """``K (H, Wk, C, 2)`` -> complex ``(H, C*Wk')`` in the spectrum's layout order."""
    h, wk, c, _ = weight.shape
    # Gathered and padded as real (..., 2) pairs: ONNX export has no complex new_zeros.
    k = weight.to(dtype)
    k = torch.cat((k, k.new_zeros(h, 1, c, 2)), dim=1)  # a zero column for the extra bins
    k = k.index_select(0, p.h_index).index_select(1, p.w_index)  # (H, Wk', C, 2)
    if p.plan.w_factors is not None:
        n1, _, k2 = p.plan.w_factors
        k = k.view(h, n1, k2, c, 2).transpose(2, 3)  # (H, N1, C, K2, 2)
    else:
        k = k.transpose(1, 2)  # (H, C, Wk, 2)
    return torch.view_as_complex(k.contiguous()).reshape(h, -1)


def _filter_gradient(grad: torch.Tensor, p: _DevicePlan, wk: int, c: int) -> torch.Tensor:
    """Complex ``(H, C*Wk')`` in layout order -> real ``(H, Wk, C, 2)``: the inverse of
    ``_filter_layout`` (extra bins dropped)."""
    h = grad.shape[0]
    if p.plan.w_factors is not None:
        n1, _, k2 = p.plan.w_factors
        grad = grad.view(h, n1, c, k2).transpose(2, 3).reshape(h, n1 * k2, c)
    else:
        grad = grad.view(h, c, wk).transpose(1, 2)
    natural = torch.empty(h, wk, c, dtype=grad.dtype, device=grad.device)
    natural[p.h_index] = grad.index_select(1, p.w_inverse_index)
    return torch.view_as_real(natural)


def spectral_gate_dft(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    _, h, w, c = x.shape
    dtype = compute_dtype(x.dtype)
    p = _device_plan(h, w, dtype, x.device)
    spec = _spectrum(x.to(dtype), p)
    spec.mul_(_filter_layout(weight, p, dtype))
    return _inverse(spec, p, w, c).to(x.dtype)


def spectral_gate_dft_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of the forward map: returns ``(grad_x, grad_weight)``."""
    _, h, w, c = x.shape
    dtype = compute_dtype(x.dtype)
    p = _device_plan(h, w, dtype, x.device)
    d_spec = _spectrum(grad_out.to(dtype), p)  # the spectrum of dy; D = c * d_spec
    spec = _spectrum(x.to(dtype), p)
    # dK = sum_b conj(X) * c * D, in place in X's buffer. conj_physical_, not conj() or
    # linalg.vecdot: their lazy conjugate bit is lost inside an AOTAutograd graph.
    grad_k = spec.conj_physical_().mul_(d_spec).sum(0).mul_(_c_layout(p, c))
    grad_weight = _filter_gradient(grad_k, p, w // 2 + 1, c).to(weight.dtype)
    # dx = the forward map with conj(K): the inverse of D * conj(K) / c = d_spec * conj(K).
    d_spec.mul_(_filter_layout(weight, p, dtype).conj_physical())
    return _inverse(d_spec, p, w, c).to(x.dtype), grad_weight


def _c_layout(p: _DevicePlan, c: int) -> torch.Tensor:
    """``c_k`` broadcast over the ``(C*Wk')`` columns of one H row."""
    if p.plan.w_factors is not None:
        n1, _, k2 = p.plan.w_factors
        return p.c_weights.view(n1, 1, k2).expand(n1, c, k2).reshape(-1)
    return p.c_weights.view(1, -1).expand(c, -1).reshape(-1)
