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
from .dft_matrices import dense_maps

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

# Grids of at most this many tokens use one dense real matrix per transform (_DenseMap).
# From CPU measurements (2 threads, batch 16, interleaved with the separable form; forward,
# forward+backward): dense 1.56x / 1.59x faster at 7x7x768, 1.62x / 1.49x at 8x8x512,
# 1.31x / 1.15x at 9x9x512; slower at 10x10x384 (0.88x / 0.72x) and 12x12x384 (0.63x / 0.83x).
DENSE_MAX_TOKENS = 81

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
class _Separable:
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

    def spectrum_bytes(self, h: int, c: int) -> int:
        return h * c * self.groups_slots[0] * self.groups_slots[1] * 8

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Forward ortho ``rfft2`` of real ``x (B, H, W, C)`` as complex ``(B, H, G*C*S)``."""
        b, h, w, c = x.shape
        rows = x.reshape(b * h, w, c)
        if self.w_factors is None:
            along_w = torch.matmul(rows.transpose(1, 2), self.w_forward[0])  # (BH, C, 2S)
        else:
            n1, n2 = self.w_factors
            # (BH, N1, N2 C), then viewed (BH, G, C, 2 N2)
            stage1 = torch.matmul(self.w_forward[0], rows.view(b * h, n1, n2 * c))
            stage1 = stage1.view(b * h, n1 // 2, 2 * n2, c).transpose(-1, -2)
            along_w = torch.matmul(stage1, self.w_forward[1])  # (BH, G, C, 2S)
        return _along_h(torch.view_as_complex(along_w.view(b, h, -1, 2)), self.h_forward,
                        self.h_factors, inverse=False)

    def inverse(self, spec: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Ortho ``irfft2`` (CPU semantics) of complex ``(B, H, G*C*S)`` into ``out (B, H, W, C)``
        (converted to ``out``'s dtype)."""
        b, h, w, c = out.shape
        groups, slots = self.groups_slots
        along_h = torch.view_as_real(_along_h(spec, self.h_inverse, self.h_factors, inverse=True))
        cols = along_h.view(b * h, groups, c, 2 * slots).transpose(-1, -2)  # (BH, G, 2S, C) view
        if self.w_factors is None:
            matrix, operand = self.w_inverse[0], cols[:, 0]  # (W, 2S) @ (BH, 2S, C)
        else:
            n1, n2 = self.w_factors
            stage2 = torch.matmul(self.w_inverse[0], cols)  # (BH, G, 2 N2, C)
            matrix, operand = self.w_inverse[1], stage2.view(b * h, n1, n2 * c)
        if out.dtype == matrix.dtype:
            torch.matmul(matrix, operand, out=out.view(operand.shape[0], matrix.shape[0], -1))
            return out
        return out.copy_(torch.matmul(matrix, operand).view(b, h, w, c))

    # The factored H axis leaves position k1 * N2 + k2 holding frequency k1 + N1 * k2: the
    # natural axis split as (N2, N1) and transposed, so the filter and its gradient move
    # between the two orders by views. W frequencies move to and from their slots by one
    # gather each.

    def filter_layout(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``K (H, Wk, C, 2)`` -> complex ``(H, G*C*S)`` in the spectrum's order."""
        h, wk, c, _ = weight.shape
        groups, slots = self.groups_slots
        k = weight.to(dtype)
        if self.h_factors is not None:
            n1, n2 = self.h_factors
            k = k.unflatten(0, (n2, n1)).transpose(0, 1).reshape(h, wk, c, 2)
        if self.w_factors is not None:  # padding slots read an appended zero frequency
            k = torch.cat([k, k.new_zeros(h, 1, c, 2)], dim=1)
            k = k.index_select(1, self.frequency_of_slot)
        # Permuted as real (..., 2) pairs, made complex last: one weight-sized copy.
        k = k.view(h, groups, slots, c, 2).transpose(2, 3).contiguous()  # (H, G, C, S, 2)
        return torch.view_as_complex(k).reshape(h, -1)

    def filter_gradient(self, grad: torch.Tensor, wk: int, c: int) -> torch.Tensor:
        """``sum_b conj(X) * d_spec``, complex ``(H, G*C*S)`` in the spectrum's order -> dK,
        real ``(H, Wk, C, 2)`` (the c_k weights applied in place)."""
        h = grad.shape[0]
        groups, slots = self.groups_slots
        grad = grad.view(h, groups, c, slots).mul_(self.c_slots)
        g = torch.view_as_real(grad).transpose(2, 3)  # (H, G, S, C, 2)
        g = g.reshape(h, groups * slots, c, 2)
        if self.w_factors is not None:
            g = g.index_select(1, self.slot_of_frequency)  # (H, Wk, C, 2)
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
        return c * self.c_weights.numel() * 8

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = torch.matmul(x.reshape(b, h * w, c).transpose(1, 2), self.forward)  # (B, C, 2HWk)
        return torch.view_as_complex(s.view(b, c, -1, 2))

    def inverse(self, spec: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        b, h, w, c = out.shape
        cols = torch.view_as_real(spec).view(b, c, -1).transpose(1, 2)  # (B, 2HWk, C) view
        if out.dtype == self.inverse_t.dtype:
            torch.matmul(self.inverse_t, cols, out=out.view(b, h * w, c))
            return out
        return out.copy_(torch.matmul(self.inverse_t, cols).view(b, h, w, c))

    def filter_layout(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h, wk, c, _ = weight.shape
        k = weight.to(dtype).permute(2, 0, 1, 3).contiguous()  # (C, H, Wk, 2)
        return torch.view_as_complex(k).view(c, h * wk)

    def filter_gradient(self, grad: torch.Tensor, wk: int, c: int) -> torch.Tensor:
        h = grad.shape[-1] // wk
        g = torch.view_as_real(grad.mul_(self.c_weights)).view(c, h, wk, 2)
        return g.permute(1, 2, 0, 3).contiguous()


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
def _float64_matrices(h: int, w: int) -> _Separable:
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
    return _Separable(w_factors, w_forward, w_inverse, h_factors, h_forward, h_inverse, slot,
                     frequency_of_slot, c_slots.view(groups, 1, slots))


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
        base.w_factors,
        tuple(move(t, dtype) for t in base.w_forward),
        tuple(move(t, dtype) for t in base.w_inverse),
        base.h_factors,
        tuple(move(t, cdtype) for t in base.h_forward),
        tuple(move(t, cdtype) for t in base.h_inverse),
        move(base.slot_of_frequency, torch.int64),
        move(base.frequency_of_slot, torch.int64), move(base.c_slots, dtype),
    )


# -- the two transforms ------------------------------------------------------------------------

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


def _image_chunks(x: torch.Tensor, m, chunked: bool) -> list[slice]:
    """Slices of the batch processed one after another on the CPU, so that each chunk's
    spectrum stays in cache through all the stages; one slice elsewhere (and when the
    caller traces the op for export)."""
    b, h, w, c = x.shape
    if not chunked or x.device.type != "cpu" or b <= 1:
        return [slice(0, b)]
    step = max(1, CPU_CHUNK_BYTES // (2 * m.spectrum_bytes(h, c)))  # complex64, plus headroom
    return [slice(i, min(i + step, b)) for i in range(0, b, step)]


def spectral_gate_dft(x: torch.Tensor, weight: torch.Tensor, *, chunked: bool = True) -> torch.Tensor:
    _, h, w, c = x.shape
    dtype = compute_dtype(x.dtype)
    m = _matrices(h, w, dtype, x.device)
    k = m.filter_layout(weight, dtype)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for images in _image_chunks(x, m, chunked):
        spec = m.spectrum(x[images].to(dtype))
        m.inverse(spec.mul_(k), out=y[images])
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
    for images in _image_chunks(x, m, True):
        d_spec = m.spectrum(grad_out[images].to(dtype))  # the spectrum of dy: D = c * d_spec
        spec = m.spectrum(x[images].to(dtype))
        # sum_b conj(X) * d_spec, in X's buffer; conj_physical_, not conj() or linalg.vecdot:
        # their lazy conjugate bit is lost inside an AOTAutograd graph.
        partial = spec.conj_physical_().mul_(d_spec).sum(0)
        grad_k = partial if grad_k is None else grad_k.add_(partial)  # chunks in order
        # dx = the forward map with conj(K): the inverse of D * conj(K) / c = d_spec * conj(K).
        m.inverse(d_spec.mul_(k_conj), out=grad_x[images])
    return grad_x, m.filter_gradient(grad_k, wk, c)  # dK = sum_b conj(X) * c * d_spec


register_backend(Backend(
    "dft", spectral_gate_dft, spectral_gate_dft_backward,
    "separable real DFT as matrix products in plain PyTorch (no complex dtype)",
    widens_16bit=True,
))
