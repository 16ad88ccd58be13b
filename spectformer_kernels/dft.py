"""The ``dft`` backend: the spectral gate as small matrix products in plain PyTorch ops.

No FFT op anywhere, so it runs wherever matmul runs (CPU, GPU, ``torch.compile``, ONNX
export) and in every dtype (bf16/fp16 inputs are computed in fp32, fp64 in fp64). It is the
fast CPU path.

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

Factored W axis. For ``W = N1 * N2`` in ``W_FACTORS`` the real W transform is two GEMMs as
well: a real ``N1``-point DFT, then per group of conjugate-paired ``N1`` frequencies a small
real matrix onto that group's frequencies (``_w_stages``). The frequencies then sit in
``G`` groups of ``S`` slots, a few of them zero padding, and the spectrum is ``(B, H, G, C,
S)``; ``K`` is gathered into the same slots and ``dK`` gathered back.

Inverse along W. ``Gw = Fw^H diag(c_k)`` with ``c_k`` = 1 for DC and Nyquist, 2 otherwise:
the real inverse is the real transpose of the forward matrix with ``c_k`` folded in, which
drops the imaginary part of the DC and Nyquist bins as CPU ``irfft`` does. Backward: ``dx``
is the forward map with ``conj(K)`` (the map is self-adjoint up to conjugating ``K``,
``docs/design.md``, "Derivatives") and ``dK = sum_b conj(X) * c * D`` with ``D`` the spectrum of ``dy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .backends import Backend, register_backend
from .contract import compute_dtype, half_spectrum_size, half_spectrum_weights, self_conjugate_bins

# H-axis length -> (N1, N2) for the factored transform; other lengths use one dense DFT.
# Chosen from CPU measurements (1 thread, batch 16, 28x28x192 and 56x56x64): factoring H
# cut the forward by 20-25% there, and cost 15-20% at 14x14 (14 = 2 * 7).
H_FACTORS = {28: (4, 7), 56: (8, 7), 48: (8, 6), 96: (8, 12)}

# W-axis length -> (N1, N2), N1 even, for the factored real transform (see _w_stages);
# other lengths use one dense real matrix. From CPU measurements (2 threads, batch 16,
# forward, interleaved with the dense form): at 56x56x64 (4, 14) and (8, 7) both took
# about 27% less time than dense W (15.9 and 16.2 ms against 21.9); (4, 14) has fewer
# padding slots (30 for 29 frequencies). At 28x28x192 (4, 7) was no faster than dense.
W_FACTORS = {56: (4, 14)}

# On the CPU the batch is processed in chunks of about this many spectrum bytes, so that a
# chunk stays in cache from the first transform to the last (CPU measurements, 2 threads,
# batch 16, forward, chunk sizes interleaved: 4 MB was best or within noise of the best
# at 14x14, 28x28 and 56x56; one-image chunks at 56x56 and whole-batch passes were slower
# by 10-60%).
CPU_CHUNK_BYTES = 4 << 20


def _twiddle(rows: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """``exp(-2i pi rows*cols / n)`` in complex128, the angle reduced exactly mod ``n``."""
    turns = torch.remainder(rows.to(torch.int64) * cols.to(torch.int64), n).to(torch.float64)
    angle = (-2.0 * math.pi / n) * turns
    return torch.polar(torch.ones_like(angle), angle)


@dataclass(frozen=True)
class _Matrices:
    """One grid's transforms in one dtype on one device.

    The spectrum is complex ``(B, H, G, C, S)``: W-axis frequencies sit in ``G`` groups of
    ``S`` slots (dense W: one group, slot = frequency; factored W: see ``_w_stages``)."""

    w_factors: Optional[tuple[int, int]]
    w_forward: tuple[torch.Tensor, ...]  # dense: (W, 2S); factored: (A1 (N1, N1), A2^T (G, 2 N2, 2S))
    w_inverse: tuple[torch.Tensor, ...]  # the transposes with c_k folded in, applied in reverse
    h_factors: Optional[tuple[int, int]]
    h_forward: tuple[torch.Tensor, ...]  # (Fh,) or (F1 (N1, N1), G (N1, N2, N2))
    h_inverse: tuple[torch.Tensor, ...]  # (conj Fh,) or (G^H per k1, F1^H)
    slot_of_frequency: torch.Tensor  # (Wk,) int64: where frequency k sits among the G*S slots
    frequency_of_slot: torch.Tensor  # (G*S,) int64: the inverse map, Wk at padding slots
    c_slots: torch.Tensor  # (G, 1, S): c_k at each slot, 0 at padding slots

    @property
    def groups_slots(self) -> tuple[int, int]:
        return self.c_slots.shape[0], self.c_slots.shape[2]


def _w_stages(w: int, dense: torch.Tensor, n1: int, n2: int):
    """Factor the dense real forward matrix ``dense (W, 2Wk)`` of a length ``W = N1 * N2``
    as two stages, Cooley-Tukey on a real input with ``w = a * N2 + b``:

    1. a real ``N1``-point DFT over ``a`` for every ``b``: ``A1 (N1, N1)``, whose rows are the
       non-redundant parts of the ``N1`` frequencies ``k1`` in pairs, one pair per group
       (``Re k1=0, Re k1=N1/2`` in group 0; ``Re k1, Im k1`` in group ``k1``);
    2. per group, the twiddled ``N2``-point sums: frequency ``k`` only needs the group of
       ``k mod N1`` (or ``N1 - k mod N1``: a real input's conjugate symmetry), so each group
       maps its ``2 N2`` stage-1 values to its own ``S`` frequency slots, a ``(2 N2, 2S)``
       matrix; groups with fewer frequencies than ``S`` have zero padding slots.

    Stage 2 is solved from ``dense = A1-stage then A2-stage`` in float64 rather than written
    out, and its block structure is checked. Returns ``(A1, A2T (G, 2 N2, 2S), slots)`` with
    ``slots[k]`` the flat ``g * S + s`` slot of frequency ``k``."""
    if n1 % 2 or n1 * n2 != w:
        raise ValueError(f"W factors must be (even N1, N2) with N1 * N2 = {w}, got {(n1, n2)}")
    wk, groups = half_spectrum_size(w), n1 // 2
    a = torch.arange(n1)
    k1_of_row = torch.tensor([0, n1 // 2] + [g for g in range(1, groups) for _ in range(2)])
    imag_row = torch.tensor([False, False] + [r == 1 for _ in range(1, groups) for r in range(2)])
    f1 = _twiddle(k1_of_row[:, None], a[None, :], n1)
    a1 = torch.where(imag_row[:, None], f1.imag, f1.real)  # (N1 rows (g, r), N1 a)
    # dense[a N2 + b, o] = sum_rows A1[row, a] stage2[(row, b), o]
    # -> stage2[(row, b), o] = sum_a inv(A1)[a, row] dense[a N2 + b, o]
    full = torch.einsum("ar,abo->rbo", torch.linalg.inv(a1), dense.view(n1, n2, 2 * wk))
    full = full.reshape(groups, 2 * n2, wk, 2)  # (g, (r, b), k, re/im)
    k = torch.arange(wk)
    group_of_k = torch.minimum(k % n1, n1 - k % n1)
    group_of_k = torch.where(group_of_k == n1 // 2, 0, group_of_k)
    slots_per_group = torch.bincount(group_of_k, minlength=groups)
    s = int(slots_per_group.max())
    a2t = torch.zeros(groups, 2 * n2, s, 2, dtype=torch.float64)
    slot = torch.empty(wk, dtype=torch.int64)
    used = [0] * groups
    for freq in range(wk):
        g = int(group_of_k[freq])
        outside = torch.cat([full[:g, :, freq], full[g + 1:, :, freq]])
        if outside.numel() and outside.abs().max() > 1e-9:
            raise AssertionError(f"W = {n1} * {n2}: frequency {freq} is not confined to group {g}")
        a2t[g, :, used[g]] = full[g, :, freq]
        slot[freq] = g * s + used[g]
        used[g] += 1
    return a1, a2t.view(groups, 2 * n2, 2 * s), slot


@lru_cache(maxsize=None)
def _float64_matrices(h: int, w: int) -> _Matrices:
    wk = half_spectrum_size(w)
    dense = _twiddle(torch.arange(w)[:, None], torch.arange(wk)[None, :], w) / math.sqrt(w)
    dense = torch.view_as_real(dense).flatten(1)  # (W, 2*Wk), (re, im) interleaved columns
    # Im of DC and Nyquist: exactly zero, not 1e-17.
    dense.view(w, wk, 2)[:, list(self_conjugate_bins(w)), 1] = 0.0
    c = half_spectrum_weights(w)

    w_factors = W_FACTORS.get(w)
    if w_factors is None:
        w_forward, w_inverse = (dense,), (dense * c.repeat_interleave(2),)
        slot, groups, slots = torch.arange(wk), 1, wk
    else:
        a1, a2t, slot = _w_stages(w, dense, *w_factors)
        groups, slots = a2t.shape[0], a2t.shape[2] // 2
        c_flat = torch.zeros(groups * slots, dtype=torch.float64)
        c_flat[slot] = c
        # inverse = forward^T diag(c): stage 2 transposed with c on its slots, then A1^T
        w_forward = (a1, a2t)
        w_inverse = (a2t * c_flat.view(groups, 1, slots).repeat_interleave(2, dim=-1), a1.T)
    c_slots = torch.zeros(groups * slots, dtype=torch.float64)
    c_slots[slot] = c
    frequency_of_slot = torch.full((groups * slots,), wk, dtype=torch.int64)
    frequency_of_slot[slot] = torch.arange(wk)

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
    return _Matrices(w_factors, w_forward, w_inverse, h_factors, h_forward, h_inverse, slot,
                     frequency_of_slot, c_slots.view(groups, 1, slots))


_cache: dict[tuple, _Matrices] = {}


def _matrices(h: int, w: int, dtype: torch.dtype, device: torch.device) -> _Matrices:
    key = (h, w, dtype, device)
    found = _cache.get(key)
    if found is None:
        # Constants, built for real even while torch.export / ONNX export traces the
        # caller (traced, their complex casts would land in the exported graph).
        with _disable_current_modes():
            base = _float64_matrices(h, w)
            cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64

            def move(t, to):
                return t.to(device=device, dtype=to).contiguous()

            found = _Matrices(
                base.w_factors,
                tuple(move(t, dtype) for t in base.w_forward),
                tuple(move(t, dtype) for t in base.w_inverse),
                base.h_factors,
                tuple(move(t, cdtype) for t in base.h_forward),
                tuple(move(t, cdtype) for t in base.h_inverse),
                move(base.slot_of_frequency, torch.int64),
                move(base.frequency_of_slot, torch.int64), move(base.c_slots, dtype),
            )
        _cache[key] = found
    return found


# -- the two transforms ------------------------------------------------------------------------

def _spectrum(x: torch.Tensor, m: _Matrices) -> torch.Tensor:
    """Forward ortho ``rfft2`` of real ``x (B, H, W, C)`` as complex ``(B, H, G*C*S)``."""
    b, h, w, c = x.shape
    rows = x.reshape(b * h, w, c)
    if m.w_factors is None:
        along_w = torch.matmul(rows.transpose(1, 2), m.w_forward[0])  # (BH, C, 2S)
    else:
        n1, n2 = m.w_factors
        stage1 = torch.matmul(m.w_forward[0], rows.view(b * h, n1, n2 * c))  # (BH, N1, N2 C)
        stage1 = stage1.view(b * h, n1 // 2, 2 * n2, c).transpose(-1, -2)  # (BH, G, C, 2 N2)
        along_w = torch.matmul(stage1, m.w_forward[1])  # (BH, G, C, 2S)
    return _along_h(torch.view_as_complex(along_w.view(b, h, -1, 2)), m.h_forward,
                    m.h_factors, inverse=False)


def _along_h(spec: torch.Tensor, mats: tuple[torch.Tensor, ...], factors, inverse: bool):
    """The H-axis transform (dense or factored, forward or inverse) of ``(B, H, M)``."""
    if factors is None:
        return torch.matmul(mats[0], spec)
    b, h, cols = spec.shape
    n1, n2 = factors
    if not inverse:  # F1 over n1, then the twiddled G per k1 over n2
        t = torch.matmul(mats[0], spec.view(b, n1, n2 * cols))
        return torch.matmul(mats[1], t.view(b, n1, n2, cols)).view(b, h, cols)
    # the conjugate-transposed stages in reverse: G^H per k1 over k2, then F1^H over k1
    t = torch.matmul(mats[0], spec.view(b, n1, n2, cols))
    return torch.matmul(mats[1], t.view(b, n1, n2 * cols)).view(b, h, cols)


def _inverse(spec: torch.Tensor, m: _Matrices, out: torch.Tensor) -> torch.Tensor:
    """Ortho ``irfft2`` (CPU semantics) of complex ``(B, H, G*C*S)`` into ``out (B, H, W, C)``
    (converted to ``out``'s dtype)."""
    b, h, w, c = out.shape
    groups, slots = m.groups_slots
    along_h = torch.view_as_real(_along_h(spec, m.h_inverse, m.h_factors, inverse=True))
    cols = along_h.view(b * h, groups, c, 2 * slots).transpose(-1, -2)  # (BH, G, 2S, C) view
    if m.w_factors is None:
        matrix, operand = m.w_inverse[0], cols[:, 0]  # (W, 2S) @ (BH, 2S, C)
    else:
        n1, n2 = m.w_factors
        stage2 = torch.matmul(m.w_inverse[0], cols)  # (BH, G, 2 N2, C): rows (g, r), then b
        matrix, operand = m.w_inverse[1], stage2.view(b * h, n1, n2 * c)
    if out.dtype == matrix.dtype:
        torch.matmul(matrix, operand, out=out.view(operand.shape[0], matrix.shape[0], -1))
        return out
    return out.copy_(torch.matmul(matrix, operand).view(b, h, w, c))


def _image_chunks(x: torch.Tensor, m: _Matrices, chunked: bool) -> list[slice]:
    """Slices of the batch processed one after another on the CPU, so that each chunk's
    spectrum stays in cache through all the stages; one slice elsewhere (and when the
    caller traces the op for export)."""
    b, h, w, c = x.shape
    if not chunked or x.device.type != "cpu" or b <= 1:
        return [slice(0, b)]
    groups, slots = m.groups_slots
    spectrum_bytes = h * c * groups * slots * 2 * 8  # per image, complex64 plus headroom
    step = max(1, CPU_CHUNK_BYTES // spectrum_bytes)
    return [slice(i, min(i + step, b)) for i in range(0, b, step)]


# The factored H axis leaves position k1 * N2 + k2 holding frequency k1 + N1 * k2: the
# natural axis split as (N2, N1) and transposed, so the filter and its gradient move between
# the two orders by views. W frequencies move to and from their slots by one gather each.

def _filter_layout(weight: torch.Tensor, m: _Matrices, dtype: torch.dtype) -> torch.Tensor:
    """``K (H, Wk, C, 2)`` -> complex ``(H, G*C*S)`` in the spectrum's order."""
    h, wk, c, _ = weight.shape
    groups, slots = m.groups_slots
    k = weight.to(dtype)
    if m.h_factors is not None:
        n1, n2 = m.h_factors
        k = k.unflatten(0, (n2, n1)).transpose(0, 1).reshape(h, wk, c, 2)
    if m.w_factors is not None:  # padding slots read an appended zero frequency
        k = torch.cat([k, k.new_zeros(h, 1, c, 2)], dim=1).index_select(1, m.frequency_of_slot)
    # Permuted as real (..., 2) pairs, made complex last: one weight-sized copy.
    k = k.view(h, groups, slots, c, 2).transpose(2, 3).contiguous()  # (H, G, C, S, 2)
    return torch.view_as_complex(k).reshape(h, -1)


def _filter_gradient(grad: torch.Tensor, m: _Matrices, wk: int, c: int) -> torch.Tensor:
    """Complex ``(H, G*C*S)`` in the spectrum's order -> real ``(H, Wk, C, 2)``."""
    h = grad.shape[0]
    groups, slots = m.groups_slots
    g = torch.view_as_real(grad).view(h, groups, c, slots, 2).transpose(2, 3)  # (H, G, S, C, 2)
    g = g.reshape(h, groups * slots, c, 2)
    if m.w_factors is not None:
        g = g.index_select(1, m.slot_of_frequency)  # (H, Wk, C, 2)
    if m.h_factors is not None:
        n1, n2 = m.h_factors
        g = g.unflatten(0, (n1, n2)).transpose(0, 1)  # (N2, N1, Wk, C, 2): natural order
    return g.contiguous().view(h, wk, c, 2)


def spectral_gate_dft(x: torch.Tensor, weight: torch.Tensor, *, chunked: bool = True) -> torch.Tensor:
    _, h, w, c = x.shape
    dtype = compute_dtype(x.dtype)
    m = _matrices(h, w, dtype, x.device)
    k = _filter_layout(weight, m, dtype)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for images in _image_chunks(x, m, chunked):
        spec = _spectrum(x[images].to(dtype), m)
        _inverse(spec.mul_(k), m, out=y[images])
    return y


def spectral_gate_dft_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of the forward map: returns ``(grad_x, grad_weight)``."""
    _, h, w, c = x.shape
    wk = half_spectrum_size(w)
    dtype = compute_dtype(x.dtype)
    m = _matrices(h, w, dtype, x.device)
    k_conj = _filter_layout(weight, m, dtype).conj_physical()
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grad_k = None
    for images in _image_chunks(x, m, True):
        d_spec = _spectrum(grad_out[images].to(dtype), m)  # the spectrum of dy: D = c * d_spec
        spec = _spectrum(x[images].to(dtype), m)
        # sum_b conj(X) * d_spec, in X's buffer; conj_physical_, not conj() or linalg.vecdot:
        # their lazy conjugate bit is lost inside an AOTAutograd graph.
        partial = spec.conj_physical_().mul_(d_spec).sum(0)
        grad_k = partial if grad_k is None else grad_k.add_(partial)  # chunks in order
        # dx = the forward map with conj(K): the inverse of D * conj(K) / c = d_spec * conj(K).
        _inverse(d_spec.mul_(k_conj), m, out=grad_x[images])
    grad_k = grad_k.view(h, m.groups_slots[0], c, -1).mul_(m.c_slots)  # dK = sum_b conj(X) * c * d_spec
    return grad_x, _filter_gradient(grad_k, m, wk, c)


register_backend(Backend(
    "dft", spectral_gate_dft, spectral_gate_dft_backward,
    "separable real DFT as matrix products in plain PyTorch (no complex dtype)",
    widens_16bit=True,
))
