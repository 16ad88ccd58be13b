"""The ``triton`` backend: the whole spectral gate in one fused Triton kernel per direction.

Design
------
The op is a fixed real-linear map per channel (``docs/design.md``, "The operation"). One
program owns ``BLOCK_C`` channels and ``batch_per_program`` batch elements. It loads the
DFT matrices and its channels' filter once, keeps them on chip, and loops over its batch
elements: each is read from HBM once and written once, which is the op's floor. Every
transform is a ``tl.dot`` with fp32 accumulation; between stages nothing leaves the chip.

Two kernel forms, chosen per grid (``uses_dense_map``):

* **Separable** (most grids). A batch element is an ``(H*BLOCK_C, W)`` tile, rows (h, c):

      A = x @ M1          W-axis real DFT from the right; M1 = Fw^T with the half spectrum
                          *stacked*: column 2k + part holds Re/Im of bin k, so one product
                          gives both parts and only 2*Wk is padded (not Wk twice)
      A' = A regrouped as (H, BLOCK_C*S)      a row-major reshape, no data moved
      X = Fh @ A'         H-axis complex DFT from the left: Re Fh and Im Fh each multiply
                          the one stacked operand; the parts recombine in registers
      G = X * K           the gate, K read straight from ``complex_weight``
      Z = conj(Fh) @ G    H-axis inverse, the same way
      y = Z @ M4          W-axis inverse with CPU ``irfft`` rules (M4 = Gw^T, stacked rows)

  That is the arrangement *from the left*. The other, *from the right*, takes the H axis
  from the right too (Fh is symmetric): A is regrouped (a permutation, through shared
  memory) into its real and imaginary parts as ``(BLOCK_C*S/2, H)`` tiles, rows (c, k),
  ``X = A @ Fh`` and ``Z = G @ conj(Fh)`` are four real products each, and Z is regrouped
  back. Every product's result is then the next one's left operand, held in registers,
  and the only shared-memory operands are the constant matrices: two regroupings per image
  instead of three conversions into shared operands. By the model (sm_90a, batch 128) it
  is 3-9% faster forward at 14x14 and 28x28 (14x14x384 bf16 17.8 -> 17.3 us) and lets the
  fp32 forward fit at 56x56, and 3-18% faster backward at 14x14 in 16-bit; it holds more
  registers elsewhere (the 16-bit forward at 56x56 would spill; the backward, which
  holds two spectra, spills or slows down from 28x28 and in fp32). So the forward runs
  from the right up to 32 rows and in fp32, the backward in 16-bit up to 16 rows, and
  each kernel picks its arrangement at compile time from its constants.

* **Dense map** (small grids, padded H*W and 2*H*Wk at most ``DENSE_MAX``, e.g. 7x7). The
  whole rfft2 and the whole inverse are one real matrix each (``dft_matrices.dense_maps``),
  and a batch element is a ``(BLOCK_C, H*W)`` tile with channels as rows: two products and
  the gate, no regrouping. Padding 7x7 to 16x16 for the separable form would waste 5x.

The backward kernels read ``x`` and ``dy`` once and write ``dx`` once. They recompute the
spectrum ``X``, pull ``dy`` back through the adjoint inverse stages to ``D`` (the gradient
reaching the gated spectrum), accumulate ``dK = sum_b conj(X) * D`` in registers over the
program's batch elements in a fixed order, and push ``D * conj(K)`` through the adjoint
forward stages to ``dx``. Each program writes its ``dK`` partial to its own slot and the
slots are summed over a fixed axis afterwards, so ``dK`` is bitwise reproducible.

Padding: Triton tiles have power-of-two sides and dot operands at least 16 along each axis,
so tiles are padded *inside the kernel* with masked loads; tensors in HBM are never padded.

The limit of this design is the channel block: the whole grid of each channel lives in
registers, so BLOCK_C shrinks as the grid grows (4 at 28x28, 1 at 56x56), and a
channels-last tile of fewer than 32 bytes of channels (16 bf16, 8 fp32) uses only part of
each 32-byte L2 sector it pulls; the rest is fetched again by the neighbouring block's
program. The GPU model counts that waste: from 28x28 these kernels are L2-bound and the
cuFFTDx kernels, which stage wider channel tiles in shared memory, are faster.

Precision
---------
* bf16: operands in bf16 (fp32's exponent range, so nothing overflows), about 5e-3 against
  the float64 oracle (bar 1e-2; measured 4e-3 to 6e-3).
* fp16: operands in fp16 after scaling each channel of ``x`` and ``K`` by a power of two so
  that its largest magnitude lies in [0.5, 1); the output is scaled back exactly. |X| can
  reach sqrt(HW) * max|x|, so unscaled fp16 operands would overflow where torch.fft does
  not; scaled, they cannot. About 6e-4 (measured in the interpreter, 7x7 to 56x56).
* fp32: the same scaling, then each operand is split into fp16 parts, ``hi = fp16(v)`` and
  ``lo = fp16(v - hi)`` (22 significant bits together), and each product is
  ``hi@hi + hi@lo + lo@hi`` (three fp16 tensor-core products). The split is written in the
  kernel, so Triton's interpreter computes what the GPU computes and CI checks the 1e-5 bar
  (measured 3e-7 to 6e-7 on 7x7 to 56x56). bf16 parts (16 bits) gave 1.2e-5 on 14x14,
  over the bar.

Supported inputs
----------------
fp32, bf16 and fp16 ``x`` with any strides, any B and C, and 1 <= H, W <= ``MAX_GRID``.
fp64, CPU tensors (unless Triton's interpreter is on), larger grids and single samples
spanning 2**31 elements or more are declined by ``supports`` with the reason: ``auto`` then
falls back and an explicit ``backend="triton"`` raises ``BackendUnavailableError`` naming
the limit. Launches go on the current stream under a device guard with no host
synchronisation, so the op can be captured in a CUDA graph once the autotuner has run for
the shape and batch size (call it once before capturing).

On CUDA the channel block, the warp count and the batch elements per program (8, 16 or 32,
a runtime argument: one binary for all three) are autotuned per (H, W, C, B, dtype) among
the configs ``kept_configs`` keeps: those the resource estimate says fit, minus every config
whose sm_90a compile with the launcher's specialization has a stack frame
(``triton_sm90_resources``, regenerated by ``python -m benchmarks.gpu_model``). A shape
with no such config is declined by ``supports`` with the reason. Under
``TRITON_INTERPRET=1`` (CPU tensors, as in the tests) one heuristic configuration is used,
because the autotuner's timing needs a GPU.

Launch arguments come from ``forward_arguments`` / ``backward_arguments`` and Triton's own
launch binder (``specialization``), so the resource harness and the static GPU model
(``benchmarks/gpu_model``) compile exactly what the launcher runs. The model's predictions
for H100 are in ``benchmarks/results/gpu_model_sm_90a.csv``: a static model, not
measurements.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import NamedTuple, Optional

import torch

from .backends import Backend, register_backend
from .contract import KERNEL_DTYPES as _SUPPORTED_DTYPES
from .dft_matrices import dense_maps, dft_matrices

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # optional dependency: the backend reports itself unavailable
    triton = None
    _TRITON_IMPORT_ERROR: Optional[str] = f"triton is not importable ({exc})"
else:
    _TRITON_IMPORT_ERROR = None

# Triton decides at decoration time whether @triton.jit compiles or interprets.
INTERPRETED = _TRITON_IMPORT_ERROR is None and os.environ.get("TRITON_INTERPRET") == "1"

MAX_GRID = 64  # largest H or W the register-tiled kernels take
DENSE_MAX = 64  # largest padded H*W (and 2*H*Wk) of the dense-map kernels
# Batch elements one program runs (a runtime argument, autotuned with the channel block):
# more of them load the matrices and K fewer times and, in the backward, leave fewer dK
# partials to sum; fewer leave more programs to fill the GPU. The model's best value ranges
# over all three (benchmarks/results/gpu_model_sm_90a.csv, the ``config`` column).
BATCH_PER_PROGRAM_CHOICES = (8, 16, 32)

BATCH_PER_PROGRAM = 8  # the interpreter's value (the autotuner needs a GPU)
MIN_DOT = 16  # smallest matrix side a tl.dot operand may have on every GPU target
TILE_ELEMENTS = 4096  # BLOCK_C * H_pad * W_pad budget for the heuristic (interpreter) config

# Software-pipelining depth of the batch loop: the next image's loads are issued while the
# current one is transformed (2: one image ahead). Triton's default, 3, holds a second
# prefetched tile: by the model (sm_90a) 14x14x384 bf16 forward with 16 channels and 4
# warps takes 151 registers with 3 and 127 with 2, which lets 4 blocks share an SM instead
# of 3 (17.3 -> 16.6 us predicted); the model does not credit the deeper prefetch, so a GPU
# run must confirm that 2 loses nothing where latency matters.
NUM_STAGES = 2

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# Tests replace this with a NaN-filling allocator to prove that every output element is
# written by the kernels.
_empty = torch.empty


def _padded(n: int) -> int:
    return max(MIN_DOT, 1 << (n - 1).bit_length())


def availability() -> Optional[str]:
    if _TRITON_IMPORT_ERROR is not None:
        return _TRITON_IMPORT_ERROR
    if not INTERPRETED and not torch.cuda.is_available():
        return ("no CUDA device is available, and Triton's interpreter is off "
                "(set TRITON_INTERPRET=1 before triton is imported to run on CPU tensors)")
    return None


def supports(x: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    if x.dtype not in _SUPPORTED_DTYPES:
        return f"the Triton kernels take float32, bfloat16 or float16 x, got {x.dtype}"
    if x.device.type != "cuda" and not (INTERPRETED and x.device.type == "cpu"):
        return (f"x is on {x.device}; the Triton kernels need a CUDA tensor "
                "(or a CPU tensor with TRITON_INTERPRET=1)")
    _, h, w, _ = x.shape
    if h > MAX_GRID or w > MAX_GRID:
        return (f"the fused kernel holds a whole token grid per channel in registers and takes "
                f"H, W <= {MAX_GRID}, got {h}x{w}")
    # Offsets inside one sample are int32 (batch and channel-block offsets are int64): the
    # strided sample of x, the contiguous sample of y / dx, the filter and a dK partial.
    spans = {
        "x": sum((n - 1) * abs(st) for n, st in zip(x.shape[1:], x.stride()[1:])),
        "weight": sum((n - 1) * abs(st) for n, st in zip(weight.shape, weight.stride())),
        "the output": h * w * x.shape[3],
        "the filter gradient": weight.numel(),
    }
    for name, span in spans.items():
        if span >= 2**31:
            return f"one sample of {name} spans {span} elements; the kernels index it with int32"
    if x.device.type == "cuda" and _TRITON_IMPORT_ERROR is None:
        dtype = _DTYPE_NAMES[x.dtype]
        for kernel in ("forward", "backward"):
            if not kept_configs(kernel, dtype, h, w, x.shape[3]):
                return no_config_reason(kernel, dtype, h, w)
    return None


if _TRITON_IMPORT_ERROR is None:

    # Triton's interpreter multiplies bf16 operands as raw bits and converts fp32 -> bf16 by
    # truncation. Under it, operands and stores are rounded to nearest-even by hand and the
    # dots run on the rounded values in fp32: the numbers a GPU bf16 dot with fp32
    # accumulation produces (a product of two bf16 values is exact in fp32).
    _EMULATE_16BIT = tl.constexpr(INTERPRETED)

    @triton.jit
    def _to_storage(v, DTYPE: tl.constexpr):
        """``v.to(DTYPE)``, rounded to nearest-even also under the interpreter."""
        if _EMULATE_16BIT and DTYPE == tl.bfloat16:
            bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)  # exactly representable now
        return v.to(DTYPE)

    @triton.jit
    def _program_block(B, C, BLOCK_C: tl.constexpr, batch_per_program):
        """This program's work: its first channel c0, its batch group, the batch range
        [b_start, b_end) and how many of its BLOCK_C channels exist (masks compare with
        it). One grid axis (up to 2**31 programs): the second and third allow only 65535."""
        pid = tl.program_id(0).to(tl.int64)
        n_cblocks = tl.cdiv(C, BLOCK_C)
        c0 = (pid % n_cblocks) * BLOCK_C
        group = pid // n_cblocks
        b_start = group * batch_per_program
        return c0, group, b_start, tl.minimum(b_start + batch_per_program, B), C - c0

    @triton.jit
    def _split(v, DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
        """A dot operand as 16-bit parts (hi, lo): hi = v rounded to DOT_DTYPE and, when
        SPLIT, lo = the remainder v - hi rounded (fp16: hi + lo carries 22 significant bits
        of v); else lo = hi (unused)."""
        hi = _to_storage(v, DOT_DTYPE)
        if SPLIT:
            lo = _to_storage(v.to(tl.float32) - hi.to(tl.float32), DOT_DTYPE)
        else:
            lo = hi
        return hi, lo

    @triton.jit
    def _dot16(a, b, acc):
        """``acc + a @ b`` for 16-bit a, b with fp32 accumulation (exact products)."""
        if _EMULATE_16BIT:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc)

    @triton.jit
    def _mm(a_hi, a_lo, b_hi, b_lo, SPLIT: tl.constexpr):
        """``a @ b`` from split operands: a_hi b_hi, plus the cross terms a_hi b_lo + a_lo
        b_hi when SPLIT (three 16-bit products, the small terms first; the dropped a_lo b_lo
        and what the splits do not carry are about 2**-22 of each product)."""
        acc = tl.zeros((a_hi.shape[0], b_hi.shape[1]), dtype=tl.float32)
        if SPLIT:
            acc = _dot16(a_lo, b_hi, acc)
            acc = _dot16(a_hi, b_lo, acc)
        return _dot16(a_hi, b_hi, acc)

    @triton.jit
    def _load_matrix(ptr, offset, stride_row, stride_col, n_rows, n_cols,
                     ROWS: tl.constexpr, COLS: tl.constexpr, DOT_DTYPE: tl.constexpr,
                     SPLIT: tl.constexpr):
        """``ptr[offset + r*stride_row + c*stride_col]`` zero-padded to (ROWS, COLS), as
        split dot operands (hi, lo)."""
        r = tl.arange(0, ROWS)[:, None]
        c = tl.arange(0, COLS)[None, :]
        m = tl.load(ptr + offset + r * stride_row + c * stride_col,
                    mask=(r < n_rows) & (c < n_cols), other=0.0)
        return _split(m, DOT_DTYPE, SPLIT)

    @triton.jit
    def _power_of_two_scale(m):
        """Per channel, from m = max |v|: (s, 1/s), powers of two with m * s in [0.5, 1)
        (clamped to fp32's normal range), and (1, 1) where m is inf or NaN. fp16 operands
        of v * s neither overflow nor lose the channel's small values, and multiplying by
        a power of two is exact."""
        e = ((m.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32)
        e_s = tl.where(e == 255, 127, tl.minimum(tl.maximum(253 - e, 1), 253))
        scale = (e_s << 23).to(tl.float32, bitcast=True)
        inverse = ((254 - e_s) << 23).to(tl.float32, bitcast=True)
        return scale, inverse

    @triton.jit
    def _grid_scale(v, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, COLS: tl.constexpr,
                    SCALE: tl.constexpr):
        """``_power_of_two_scale`` of each channel of a 2-D tile of (ROWS, BLOCK_C, COLS)
        elements, as (1, BLOCK_C, 1) tensors; (1, 1) when not SCALE."""
        if SCALE:
            m = tl.max(tl.max(tl.abs(tl.reshape(v, (ROWS, BLOCK_C, COLS))), axis=2), axis=0)
            s, inv = _power_of_two_scale(m)
        else:
            s = tl.full((BLOCK_C,), 1.0, tl.float32)
            inv = s
        return s[None, :, None], inv[None, :, None]

    @triton.jit
    def _scaled(v, s, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, COLS: tl.constexpr):
        """A 2-D tile of (ROWS, BLOCK_C, COLS) elements times a (1, BLOCK_C, 1) per-channel
        factor."""
        return tl.reshape(tl.reshape(v, (ROWS, BLOCK_C, COLS)) * s, v.shape)

    @triton.jit
    def _normalized(v, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, COLS: tl.constexpr,
                    SCALE: tl.constexpr):
        """``v`` with each channel scaled by ``_power_of_two_scale`` when SCALE, and the
        (1, BLOCK_C, 1) factor that undoes it."""
        s, inverse = _grid_scale(v, ROWS, BLOCK_C, COLS, SCALE)
        if SCALE:
            v = _scaled(v, s, ROWS, BLOCK_C, COLS)
        return v, inverse

    @triton.jit
    def _normalized_filter(k_re, k_im, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
                           COLS: tl.constexpr, SCALE: tl.constexpr):
        """``_normalized`` for the filter, one factor per channel for both parts."""
        s, inverse = _grid_scale(tl.maximum(tl.abs(k_re), tl.abs(k_im)), ROWS, BLOCK_C, COLS,
                                 SCALE)
        if SCALE:
            k_re = _scaled(k_re, s, ROWS, BLOCK_C, COLS)
            k_im = _scaled(k_im, s, ROWS, BLOCK_C, COLS)
        return k_re, k_im, inverse

    @triton.jit
    def _restored(v, inverse, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, COLS: tl.constexpr,
                  SCALE: tl.constexpr):
        """Undo ``_normalized`` (exact: powers of two)."""
        if SCALE:
            v = _scaled(v, inverse, ROWS, BLOCK_C, COLS)
        return v

    @triton.jit
    def _load_w_matrix(ptr, part_stride, k_stride, w_stride, W: tl.constexpr, WK: tl.constexpr,
                       WP: tl.constexpr, S: tl.constexpr, STACK_ROWS: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
        """A W-axis matrix with the half spectrum stacked along one side: index j = 2k + part
        (part 0 real, 1 imaginary) holds ``ptr[part*part_stride + k*k_stride + w*w_stride]``.
        (S, WP) when STACK_ROWS, else (WP, S); zero beyond 2*WK and W; split for the dots."""
        if STACK_ROWS:
            j = tl.arange(0, S)[:, None]
            w = tl.arange(0, WP)[None, :]
        else:
            w = tl.arange(0, WP)[:, None]
            j = tl.arange(0, S)[None, :]
        m = tl.load(ptr + (j % 2) * part_stride + (j // 2) * k_stride + w * w_stride,
                    mask=(j < 2 * WK) & (w < W), other=0.0)
        return _split(m, DOT_DTYPE, SPLIT)

    @triton.jit
    def _complex_left(m_re_hi, m_re_lo, m_im_hi, m_im_lo, a, HP: tl.constexpr,
                      N: tl.constexpr, CONJ: tl.constexpr, DOT_DTYPE: tl.constexpr,
                      SPLIT: tl.constexpr):
        """``(m_re + i m_im) @ a``, or ``(m_re - i m_im) @ a`` when CONJ, for an (HP, 2N)
        operand whose columns interleave the real and imaginary parts: two real products on
        the one stacked operand, then the parts recombined in registers. Returns re, im as
        (HP, N). (CONJ lets the inverse reuse the forward's matrices: fewer registers.)"""
        a_hi, a_lo = _split(a, DOT_DTYPE, SPLIT)
        p_re, p_im = tl.split(tl.reshape(_mm(m_re_hi, m_re_lo, a_hi, a_lo, SPLIT), (HP, N, 2)))
        q_re, q_im = tl.split(tl.reshape(_mm(m_im_hi, m_im_lo, a_hi, a_lo, SPLIT), (HP, N, 2)))
        if CONJ:
            return p_re + q_im, p_im - q_re
        return p_re - q_im, q_re + p_im

    @triton.jit
    def _stacked(re, im, ROWS: tl.constexpr, COLS: tl.constexpr):
        """Real and imaginary parts interleaved along the last axis, as a (ROWS, COLS) tile."""
        return tl.reshape(tl.join(re, im), (ROWS, COLS))

    @triton.jit
    def _grid_offsets(n_channels, H: tl.constexpr, W: tl.constexpr, HP: tl.constexpr,
                      WP: tl.constexpr, BLOCK_C: tl.constexpr):
        """Index vectors and mask of an (HP, BLOCK_C, WP) token-grid tile."""
        hh = tl.arange(0, HP)[:, None, None]
        cc = tl.arange(0, BLOCK_C)[None, :, None]
        ww = tl.arange(0, WP)[None, None, :]
        return hh, cc, ww, (hh < H) & (cc < n_channels) & (ww < W)

    @triton.jit
    def _load_grid(ptr, base, n_channels, s_h, s_w, s_c, H: tl.constexpr, W: tl.constexpr,
                   HP: tl.constexpr, WP: tl.constexpr, BLOCK_C: tl.constexpr):
        """An (HP * BLOCK_C, WP) fp32 tile of a channels-last grid: rows (h, c), columns w.

        ``base`` (int64) points at the tile's first channel; ``n_channels`` of the block
        exist. In-tile offsets stay int32 (``supports`` checks that they fit)."""
        hh, cc, ww, mask = _grid_offsets(n_channels, H, W, HP, WP, BLOCK_C)
        tile = tl.load(ptr + base + hh * s_h + cc * s_c + ww * s_w, mask=mask, other=0.0)
        return tl.reshape(tile.to(tl.float32), (HP * BLOCK_C, WP))

    @triton.jit
    def _store_grid(ptr, base, value, C, n_channels, H: tl.constexpr, W: tl.constexpr,
                    HP: tl.constexpr, WP: tl.constexpr, BLOCK_C: tl.constexpr):
        """Store an (HP * BLOCK_C, WP) tile into a contiguous (B, H, W, C) tensor."""
        hh, cc, ww, mask = _grid_offsets(n_channels, H, W, HP, WP, BLOCK_C)
        value = _to_storage(tl.reshape(value, (HP, BLOCK_C, WP)), ptr.dtype.element_ty)
        tl.store(ptr + base + hh * (W * C) + cc + ww * C, value, mask=mask)

    @triton.jit
    def _spectrum_offsets(n_channels, H: tl.constexpr, WK: tl.constexpr,
                          HP: tl.constexpr, S: tl.constexpr, BLOCK_C: tl.constexpr):
        """Index vectors and mask of an (HP, BLOCK_C, S // 2) half-spectrum tile."""
        hh = tl.arange(0, HP)[:, None, None]
        cc = tl.arange(0, BLOCK_C)[None, :, None]
        kk = tl.arange(0, S // 2)[None, None, :]
        return hh, cc, kk, (hh < H) & (cc < n_channels) & (kk < WK)

    @triton.jit
    def _load_filter(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c, sk_p, H: tl.constexpr,
                     WK: tl.constexpr, HP: tl.constexpr, S: tl.constexpr,
                     BLOCK_C: tl.constexpr, SCALE: tl.constexpr):
        """K's real and imaginary parts as (HP, BLOCK_C * S // 2) fp32 tiles, columns (c, k),
        ``_normalized`` per channel, and the factor that undoes it."""
        hh, cc, kk, mask = _spectrum_offsets(n_channels, H, WK, HP, S, BLOCK_C)
        k_ptr = weight_ptr + c0 * sk_c + hh * sk_h + cc * sk_c + kk * sk_k
        k_re = tl.load(k_ptr, mask=mask, other=0.0).to(tl.float32)
        k_im = tl.load(k_ptr + sk_p, mask=mask, other=0.0).to(tl.float32)
        return _normalized_filter(tl.reshape(k_re, (HP, BLOCK_C * (S // 2))),
                                  tl.reshape(k_im, (HP, BLOCK_C * (S // 2))), HP, BLOCK_C,
                                  S // 2, SCALE)

    @triton.jit
    def _load_h_matrices(h_fwd_ptr, H: tl.constexpr, HP: tl.constexpr,
                         DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
        """Re Fh and Im Fh, split: the (h, h') blocks of the interleaved real form."""
        re_hi, re_lo = _load_matrix(h_fwd_ptr, 0, 4 * H, 2, H, H, HP, HP, DOT_DTYPE, SPLIT)
        im_hi, im_lo = _load_matrix(h_fwd_ptr, 2 * H, 4 * H, 2, H, H, HP, HP, DOT_DTYPE, SPLIT)
        return re_hi, re_lo, im_hi, im_lo

    @triton.jit
    def _spectrum(x, m1_hi, m1_lo, fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo, HP: tl.constexpr,
                  S: tl.constexpr, BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr,
                  SPLIT: tl.constexpr):
        """rfft2 (ortho) of an (HP * BLOCK_C, WP) tile -> re, im as (HP, BLOCK_C * S // 2).

        The W-axis DFT multiplies from the right, giving the stacked half spectrum in the
        columns; the row-major reshape to (HP, BLOCK_C * S) only regroups (h, c, j), and
        the H-axis DFT multiplies from the left."""
        x_hi, x_lo = _split(x, DOT_DTYPE, SPLIT)
        a = tl.reshape(_mm(x_hi, x_lo, m1_hi, m1_lo, SPLIT), (HP, BLOCK_C * S))
        return _complex_left(fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo, a, HP, BLOCK_C * (S // 2),
                             False, DOT_DTYPE, SPLIT)

    @triton.jit
    def _complex_right(a_re, a_im, m_re_hi, m_re_lo, m_im_hi, m_im_lo, CONJ: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
        """``a @ (m_re + i m_im)``, or ``a @ (m_re - i m_im)`` when CONJ, for a complex
        ``a`` given as its parts: four real products. Returns re, im."""
        re_hi, re_lo = _split(a_re, DOT_DTYPE, SPLIT)
        im_hi, im_lo = _split(a_im, DOT_DTYPE, SPLIT)
        p = _mm(re_hi, re_lo, m_re_hi, m_re_lo, SPLIT)
        q = _mm(im_hi, im_lo, m_im_hi, m_im_lo, SPLIT)
        r = _mm(re_hi, re_lo, m_im_hi, m_im_lo, SPLIT)
        t = _mm(im_hi, im_lo, m_re_hi, m_re_lo, SPLIT)
        if CONJ:
            return p + q, t - r
        return p - q, r + t

    @triton.jit
    def _load_filter_columns(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c, sk_p,
                             H: tl.constexpr, WK: tl.constexpr, HP: tl.constexpr,
                             S: tl.constexpr, BLOCK_C: tl.constexpr, SCALE: tl.constexpr):
        """K's parts as (BLOCK_C * S // 2, HP) fp32 tiles, rows (c, k), columns h,
        ``_normalized_filter`` per channel (the middle axis of (1, BLOCK_C, S // 2 * HP)), and
        the factor that undoes it."""
        rows = tl.arange(0, BLOCK_C * (S // 2))[:, None]
        hh = tl.arange(0, HP)[None, :]
        cc = rows // (S // 2)
        kk = rows % (S // 2)
        mask = (cc < n_channels) & (kk < WK) & (hh < H)
        k_ptr = weight_ptr + (c0 + cc) * sk_c + kk * sk_k + hh * sk_h
        k_re = tl.load(k_ptr, mask=mask, other=0.0).to(tl.float32)
        k_im = tl.load(k_ptr + sk_p, mask=mask, other=0.0).to(tl.float32)
        return _normalized_filter(k_re, k_im, 1, BLOCK_C, (S // 2) * HP, SCALE)

    @triton.jit
    def _rows_to_columns(a, HP: tl.constexpr, BLOCK_C: tl.constexpr, S: tl.constexpr):
        """(HP * BLOCK_C, S) rows (h, c), columns (k, part) -> the real and imaginary parts
        as (BLOCK_C * S // 2, HP) tiles, rows (c, k), columns h: the regrouping between the
        two axes."""
        a = tl.permute(tl.reshape(a, (HP, BLOCK_C, S // 2, 2)), (1, 2, 0, 3))
        re, im = tl.split(a)
        return (tl.reshape(re, (BLOCK_C * (S // 2), HP)),
                tl.reshape(im, (BLOCK_C * (S // 2), HP)))

    @triton.jit
    def _spectrum_columns(x, m1_hi, m1_lo, fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo,
                          HP: tl.constexpr, S: tl.constexpr, BLOCK_C: tl.constexpr,
                          DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
        """``_spectrum`` with the H axis from the right: re, im as (BLOCK_C * S // 2, HP)
        tiles, rows (c, k), columns h."""
        x_hi, x_lo = _split(x, DOT_DTYPE, SPLIT)
        a_re, a_im = _rows_to_columns(_mm(x_hi, x_lo, m1_hi, m1_lo, SPLIT), HP, BLOCK_C, S)
        return _complex_right(a_re, a_im, fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo, False,
                              DOT_DTYPE, SPLIT)

    @triton.jit
    def _columns_to_rows(re, im, HP: tl.constexpr, BLOCK_C: tl.constexpr, S: tl.constexpr):
        """The inverse regrouping of ``_rows_to_columns``."""
        a = tl.join(tl.reshape(re, (BLOCK_C, S // 2, HP)), tl.reshape(im, (BLOCK_C, S // 2, HP)))
        return tl.reshape(tl.permute(a, (2, 0, 1, 3)), (HP * BLOCK_C, S))

    @triton.jit(do_not_specialize=["batch_per_program"])
    def _forward_kernel(
        x_ptr, weight_ptr, y_ptr, w_fwd_ptr, h_fwd_ptr, w_inv_ptr,
        B, C, sx_b, sx_h, sx_w, sx_c, sk_h, sk_k, sk_c, sk_p,
        H: tl.constexpr, W: tl.constexpr, WK: tl.constexpr,
        HP: tl.constexpr, WP: tl.constexpr, S: tl.constexpr,
        batch_per_program, BLOCK_C: tl.constexpr,
        DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, SCALE: tl.constexpr,
    ):
        c0, group, b_start, b_end, n_channels = _program_block(B, C, BLOCK_C, batch_per_program)
        # Two arrangements of the same stages ("Design" above). From the right (16-bit grids
        # of up to 32 rows, and fp32): each product's result is the next one's left operand,
        # held in registers, and the data is regrouped between the axes twice per image.
        # From the left (larger 16-bit grids): the H axis multiplies from the left, which
        # holds fewer registers there (sm_90a, 56x56 bf16 with 4 warps: 247 against a
        # spilling 255); fp32 at 56x56 fits only from the right.
        FROM_RIGHT: tl.constexpr = HP <= 32 or SPLIT
        N: tl.constexpr = BLOCK_C * (S // 2)  # spectrum (c, k) positions per h

        # The DFT matrices and the filter are loaded (and split) once per program and stay
        # on chip for its batch elements. Sources in dft_matrices.py: M1 = Fw^T and M4 = Gw^T
        # with the half spectrum stacked; Re Fh and Im Fh, the (h, h') blocks of the
        # interleaved real form, are symmetric, so they act along h from either side.
        m1_hi, m1_lo = _load_w_matrix(w_fwd_ptr, WK * W, W, 1, W, WK, WP, S, False,
                                      DOT_DTYPE, SPLIT)
        m4_hi, m4_lo = _load_w_matrix(w_inv_ptr, WK, 1, 2 * WK, W, WK, WP, S, True,
                                      DOT_DTYPE, SPLIT)
        fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo = _load_h_matrices(h_fwd_ptr, H, HP, DOT_DTYPE,
                                                                  SPLIT)
        if FROM_RIGHT:
            k_re, k_im, k_unscale = _load_filter_columns(weight_ptr, c0, n_channels, sk_h,
                                                         sk_k, sk_c, sk_p, H, WK, HP, S,
                                                         BLOCK_C, SCALE)
        else:
            k_re, k_im, k_unscale = _load_filter(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c,
                                                 sk_p, H, WK, HP, S, BLOCK_C, SCALE)

        for b in range(b_start, b_end):
            x = _load_grid(x_ptr, b * sx_b + c0 * sx_c, n_channels, sx_h, sx_w, sx_c,
                           H, W, HP, WP, BLOCK_C)
            x, x_unscale = _normalized(x, HP, BLOCK_C, WP, SCALE)
            if FROM_RIGHT:  # rows (c, k), columns h between the H stages
                s_re, s_im = _spectrum_columns(x, m1_hi, m1_lo, fh_re_hi, fh_re_lo, fh_im_hi,
                                               fh_im_lo, HP, S, BLOCK_C, DOT_DTYPE, SPLIT)
                z_re, z_im = _complex_right(s_re * k_re - s_im * k_im,
                                            s_re * k_im + s_im * k_re, fh_re_hi, fh_re_lo,
                                            fh_im_hi, fh_im_lo, True, DOT_DTYPE, SPLIT)
                z = _columns_to_rows(z_re, z_im, HP, BLOCK_C, S)
            else:  # rows h, columns (c, k) between the H stages
                s_re, s_im = _spectrum(x, m1_hi, m1_lo, fh_re_hi, fh_re_lo, fh_im_hi,
                                       fh_im_lo, HP, S, BLOCK_C, DOT_DTYPE, SPLIT)
                g = _stacked(s_re * k_re - s_im * k_im, s_re * k_im + s_im * k_re, HP, 2 * N)
                z_re, z_im = _complex_left(fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo, g, HP, N,
                                           True, DOT_DTYPE, SPLIT)
                z = _stacked(z_re, z_im, HP * BLOCK_C, S)
            z_hi, z_lo = _split(z, DOT_DTYPE, SPLIT)
            y = _mm(z_hi, z_lo, m4_hi, m4_lo, SPLIT)
            y = _restored(y, x_unscale * k_unscale, HP, BLOCK_C, WP, SCALE)
            _store_grid(y_ptr, b * (H * W * C) + c0, y, C, n_channels, H, W, HP, WP, BLOCK_C)

    @triton.jit(do_not_specialize=["batch_per_program"])
    def _backward_kernel(
        grad_y_ptr, x_ptr, weight_ptr, grad_x_ptr, grad_k_partial_ptr,
        w_fwd_ptr, h_fwd_ptr, w_inv_ptr,
        B, C, sg_b, sg_h, sg_w, sg_c, sx_b, sx_h, sx_w, sx_c, sk_h, sk_k, sk_c, sk_p,
        H: tl.constexpr, W: tl.constexpr, WK: tl.constexpr,
        HP: tl.constexpr, WP: tl.constexpr, S: tl.constexpr,
        batch_per_program, BLOCK_C: tl.constexpr,
        DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, SCALE: tl.constexpr,
    ):
        c0, group, b_start, b_end, n_channels = _program_block(B, C, BLOCK_C, batch_per_program)
        # The forward kernel's two arrangements. From the right only for 16-bit grids of up
        # to 16 rows: by the model (sm_90a, batch 128) 14x14x384 bf16 30.6 against 31.6 us,
        # fp16 33.5 against 40.8, while fp32 at 14x14 (79.7 against 61.7 us) and 28x28 in
        # every dtype (spilling configs) are slower from the right, the backward holding
        # twice the forward's spectra.
        FROM_RIGHT: tl.constexpr = HP <= 16 and not SPLIT
        N: tl.constexpr = BLOCK_C * (S // 2)

        # Adjoints: of "@ M1" is "@ M1^T", of "@ M4" is "@ M4^T"; of "conj(Fh) @" is "Fh @"
        # and of "Fh @" is "conj(Fh) @" (symmetric matrices, conjugate transposes), and the
        # same from the right.
        m1_hi, m1_lo = _load_w_matrix(w_fwd_ptr, WK * W, W, 1, W, WK, WP, S, False,
                                      DOT_DTYPE, SPLIT)
        m1t_hi, m1t_lo = _load_w_matrix(w_fwd_ptr, WK * W, W, 1, W, WK, WP, S, True,
                                        DOT_DTYPE, SPLIT)
        m4t_hi, m4t_lo = _load_w_matrix(w_inv_ptr, WK, 1, 2 * WK, W, WK, WP, S, False,
                                        DOT_DTYPE, SPLIT)
        fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo = _load_h_matrices(h_fwd_ptr, H, HP, DOT_DTYPE,
                                                                  SPLIT)
        if FROM_RIGHT:  # spectra as (BLOCK_C * S // 2, HP): rows (c, k), columns h
            k_re, k_im, k_unscale = _load_filter_columns(weight_ptr, c0, n_channels, sk_h,
                                                         sk_k, sk_c, sk_p, H, WK, HP, S,
                                                         BLOCK_C, SCALE)
            dk_re = tl.zeros((N, HP), dtype=tl.float32)
            dk_im = tl.zeros((N, HP), dtype=tl.float32)
        else:  # spectra as (HP, BLOCK_C * S // 2): rows h, columns (c, k)
            k_re, k_im, k_unscale = _load_filter(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c,
                                                 sk_p, H, WK, HP, S, BLOCK_C, SCALE)
            dk_re = tl.zeros((HP, N), dtype=tl.float32)
            dk_im = tl.zeros((HP, N), dtype=tl.float32)

        for b in range(b_start, b_end):  # fixed order, so dK partials are reproducible
            x = _load_grid(x_ptr, b * sx_b + c0 * sx_c, n_channels, sx_h, sx_w, sx_c,
                           H, W, HP, WP, BLOCK_C)
            dy = _load_grid(grad_y_ptr, b * sg_b + c0 * sg_c, n_channels, sg_h, sg_w, sg_c,
                            H, W, HP, WP, BLOCK_C)
            x, x_unscale = _normalized(x, HP, BLOCK_C, WP, SCALE)
            dy, dy_unscale = _normalized(dy, HP, BLOCK_C, WP, SCALE)
            dy_hi, dy_lo = _split(dy, DOT_DTYPE, SPLIT)
            # X, and D, the gradient reaching the gated spectrum (adjoints of the inverses)
            if FROM_RIGHT:
                s_re, s_im = _spectrum_columns(x, m1_hi, m1_lo, fh_re_hi, fh_re_lo, fh_im_hi,
                                               fh_im_lo, HP, S, BLOCK_C, DOT_DTYPE, SPLIT)
                dz_re, dz_im = _rows_to_columns(_mm(dy_hi, dy_lo, m4t_hi, m4t_lo, SPLIT),
                                                HP, BLOCK_C, S)
                d_re, d_im = _complex_right(dz_re, dz_im, fh_re_hi, fh_re_lo, fh_im_hi,
                                            fh_im_lo, False, DOT_DTYPE, SPLIT)
            else:
                s_re, s_im = _spectrum(x, m1_hi, m1_lo, fh_re_hi, fh_re_lo, fh_im_hi,
                                       fh_im_lo, HP, S, BLOCK_C, DOT_DTYPE, SPLIT)
                dz = tl.reshape(_mm(dy_hi, dy_lo, m4t_hi, m4t_lo, SPLIT), (HP, 2 * N))
                d_re, d_im = _complex_left(fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo, dz, HP, N,
                                           False, DOT_DTYPE, SPLIT)

            # dK += conj(X) D, the scaling undone per channel (channels are the middle axis
            # of (1, BLOCK_C, S // 2 * HP) and of (HP, BLOCK_C, S // 2) alike).
            unscale = x_unscale * dy_unscale
            pk_re = s_re * d_re + s_im * d_im
            pk_im = s_re * d_im - s_im * d_re
            if FROM_RIGHT:
                dk_re += _restored(pk_re, unscale, 1, BLOCK_C, (S // 2) * HP, SCALE)
                dk_im += _restored(pk_im, unscale, 1, BLOCK_C, (S // 2) * HP, SCALE)
            else:
                dk_re += _restored(pk_re, unscale, HP, BLOCK_C, S // 2, SCALE)
                dk_im += _restored(pk_im, unscale, HP, BLOCK_C, S // 2, SCALE)

            # D * conj(K), then the adjoints of the H and W forward transforms.
            g_re = d_re * k_re + d_im * k_im
            g_im = d_im * k_re - d_re * k_im
            if FROM_RIGHT:
                da_re, da_im = _complex_right(g_re, g_im, fh_re_hi, fh_re_lo, fh_im_hi,
                                              fh_im_lo, True, DOT_DTYPE, SPLIT)
                da = _columns_to_rows(da_re, da_im, HP, BLOCK_C, S)
            else:
                da_re, da_im = _complex_left(fh_re_hi, fh_re_lo, fh_im_hi, fh_im_lo,
                                             _stacked(g_re, g_im, HP, 2 * N), HP, N, True,
                                             DOT_DTYPE, SPLIT)
                da = _stacked(da_re, da_im, HP * BLOCK_C, S)
            da_hi, da_lo = _split(da, DOT_DTYPE, SPLIT)
            dx = _mm(da_hi, da_lo, m1t_hi, m1t_lo, SPLIT)
            dx = _restored(dx, dy_unscale * k_unscale, HP, BLOCK_C, WP, SCALE)
            _store_grid(grad_x_ptr, b * (H * W * C) + c0, dx, C, n_channels,
                        H, W, HP, WP, BLOCK_C)

        # This group's partial slot in the (groups, H, WK, C, 2) buffer.
        p_ptr = grad_k_partial_ptr + group * (H * WK * C * 2) + c0 * 2
        if FROM_RIGHT:
            rows = tl.arange(0, N)[:, None]
            hh = tl.arange(0, HP)[None, :]
            cc = rows // (S // 2)
            kk = rows % (S // 2)
            mask = (cc < n_channels) & (kk < WK) & (hh < H)
            p_ptr += hh * (WK * C * 2) + kk * (C * 2) + cc * 2
            tl.store(p_ptr, dk_re, mask=mask)
            tl.store(p_ptr + 1, dk_im, mask=mask)
        else:
            hh, cc, kk, mask = _spectrum_offsets(n_channels, H, WK, HP, S, BLOCK_C)
            p_ptr += hh * (WK * C * 2) + kk * (C * 2) + cc * 2
            tl.store(p_ptr, tl.reshape(dk_re, (HP, BLOCK_C, S // 2)), mask=mask)
            tl.store(p_ptr + 1, tl.reshape(dk_im, (HP, BLOCK_C, S // 2)), mask=mask)

    @triton.jit
    def _dense_offsets(n_channels, H: tl.constexpr, W: tl.constexpr, HW: tl.constexpr,
                       BLOCK_C: tl.constexpr):
        """Channel and (h, w) index tiles and mask of a (BLOCK_C, HW) whole-grid tile."""
        cc = tl.arange(0, BLOCK_C)[:, None]
        j = tl.arange(0, HW)[None, :]
        return cc, j // W, j % W, (cc < n_channels) & (j < H * W)

    @triton.jit
    def _dense_load(ptr, base, n_channels, s_h, s_w, s_c, H: tl.constexpr, W: tl.constexpr,
                    HW: tl.constexpr, BLOCK_C: tl.constexpr):
        """A (BLOCK_C, HW) fp32 tile of a channels-last grid: rows c, columns h*W + w."""
        cc, hh, ww, mask = _dense_offsets(n_channels, H, W, HW, BLOCK_C)
        tile = tl.load(ptr + base + cc * s_c + hh * s_h + ww * s_w, mask=mask, other=0.0)
        return tile.to(tl.float32)

    @triton.jit
    def _dense_store(ptr, base, value, C, n_channels, H: tl.constexpr, W: tl.constexpr,
                     HW: tl.constexpr, BLOCK_C: tl.constexpr):
        cc, hh, ww, mask = _dense_offsets(n_channels, H, W, HW, BLOCK_C)
        tl.store(ptr + base + cc + (hh * W + ww) * C, _to_storage(value, ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _dense_spectrum_offsets(n_channels, H: tl.constexpr, WK: tl.constexpr,
                                SD: tl.constexpr, BLOCK_C: tl.constexpr):
        """Channel and (h, k) index tiles and mask of a (BLOCK_C, SD // 2) half spectrum."""
        cc = tl.arange(0, BLOCK_C)[:, None]
        j = tl.arange(0, SD // 2)[None, :]
        return cc, j // WK, j % WK, (cc < n_channels) & (j < H * WK)

    @triton.jit
    def _dense_load_filter(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c, sk_p,
                           H: tl.constexpr, WK: tl.constexpr, SD: tl.constexpr,
                           BLOCK_C: tl.constexpr, SCALE: tl.constexpr):
        """``_load_filter`` for the dense-map tiles: (BLOCK_C, SD // 2), columns (h, k)."""
        cc, hh, kk, mask = _dense_spectrum_offsets(n_channels, H, WK, SD, BLOCK_C)
        k_ptr = weight_ptr + (c0 + cc) * sk_c + hh * sk_h + kk * sk_k
        return _normalized_filter(tl.load(k_ptr, mask=mask, other=0.0).to(tl.float32),
                                  tl.load(k_ptr + sk_p, mask=mask, other=0.0).to(tl.float32),
                                  1, BLOCK_C, SD // 2, SCALE)

    @triton.jit
    def _dense_map(ptr, n_in, n_out, stride_in, stride_out, ROWS: tl.constexpr,
                   COLS: tl.constexpr, DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
        """A dense map (rows: n_in inputs, columns: n_out outputs) zero-padded to
        (ROWS, COLS) and split for the dots."""
        r = tl.arange(0, ROWS)[:, None]
        c = tl.arange(0, COLS)[None, :]
        m = tl.load(ptr + r * stride_in + c * stride_out, mask=(r < n_in) & (c < n_out),
                    other=0.0)
        return _split(m, DOT_DTYPE, SPLIT)

    @triton.jit
    def _times_map(v, m_hi, m_lo, ROWS: tl.constexpr, N: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr):
        """``v @ m`` for a map whose output columns interleave (re, im): re, im (ROWS, N)."""
        v_hi, v_lo = _split(v, DOT_DTYPE, SPLIT)
        return tl.split(tl.reshape(_mm(v_hi, v_lo, m_hi, m_lo, SPLIT), (ROWS, N, 2)))

    @triton.jit(do_not_specialize=["batch_per_program"])
    def _dense_forward_kernel(
        x_ptr, weight_ptr, y_ptr, fwd_map_ptr, inv_map_ptr,
        B, C, sx_b, sx_h, sx_w, sx_c, sk_h, sk_k, sk_c, sk_p,
        H: tl.constexpr, W: tl.constexpr, WK: tl.constexpr, HW: tl.constexpr,
        SD: tl.constexpr, batch_per_program, BLOCK_C: tl.constexpr,
        DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, SCALE: tl.constexpr,
    ):
        """Small grids: the whole rfft2 and the whole inverse are one matrix each
        (``dft_matrices.dense_maps``), so a batch element is two products on a (BLOCK_C,
        H*W) tile with channels as rows; no regrouping between stages."""
        c0, group, b_start, b_end, n_channels = _program_block(B, C, BLOCK_C, batch_per_program)
        f_hi, f_lo = _dense_map(fwd_map_ptr, H * W, 2 * H * WK, 2 * H * WK, 1, HW, SD,
                                DOT_DTYPE, SPLIT)
        g_hi, g_lo = _dense_map(inv_map_ptr, 2 * H * WK, H * W, H * W, 1, SD, HW,
                                DOT_DTYPE, SPLIT)
        k_re, k_im, k_unscale = _dense_load_filter(weight_ptr, c0, n_channels, sk_h, sk_k,
                                                   sk_c, sk_p, H, WK, SD, BLOCK_C, SCALE)
        for b in range(b_start, b_end):
            x = _dense_load(x_ptr, b * sx_b + c0 * sx_c, n_channels, sx_h, sx_w, sx_c,
                            H, W, HW, BLOCK_C)
            x, x_unscale = _normalized(x, 1, BLOCK_C, HW, SCALE)
            s_re, s_im = _times_map(x, f_hi, f_lo, BLOCK_C, SD // 2, DOT_DTYPE, SPLIT)
            g = _stacked(s_re * k_re - s_im * k_im, s_re * k_im + s_im * k_re, BLOCK_C, SD)
            g_split_hi, g_split_lo = _split(g, DOT_DTYPE, SPLIT)
            y = _mm(g_split_hi, g_split_lo, g_hi, g_lo, SPLIT)
            y = _restored(y, x_unscale * k_unscale, 1, BLOCK_C, HW, SCALE)
            _dense_store(y_ptr, b * (H * W * C) + c0, y, C, n_channels, H, W, HW, BLOCK_C)

    @triton.jit(do_not_specialize=["batch_per_program"])
    def _dense_backward_kernel(
        grad_y_ptr, x_ptr, weight_ptr, grad_x_ptr, grad_k_partial_ptr, fwd_map_ptr, inv_map_ptr,
        B, C, sg_b, sg_h, sg_w, sg_c, sx_b, sx_h, sx_w, sx_c, sk_h, sk_k, sk_c, sk_p,
        H: tl.constexpr, W: tl.constexpr, WK: tl.constexpr, HW: tl.constexpr,
        SD: tl.constexpr, batch_per_program, BLOCK_C: tl.constexpr,
        DOT_DTYPE: tl.constexpr, SPLIT: tl.constexpr, SCALE: tl.constexpr,
    ):
        """The adjoint of ``_dense_forward_kernel``: the transposed maps, dK as in the
        separable backward (conj(X) D summed over the group's batch elements in order)."""
        c0, group, b_start, b_end, n_channels = _program_block(B, C, BLOCK_C, batch_per_program)
        f_hi, f_lo = _dense_map(fwd_map_ptr, H * W, 2 * H * WK, 2 * H * WK, 1, HW, SD,
                                DOT_DTYPE, SPLIT)
        ft_hi, ft_lo = _dense_map(fwd_map_ptr, 2 * H * WK, H * W, 1, 2 * H * WK, SD, HW,
                                  DOT_DTYPE, SPLIT)
        gt_hi, gt_lo = _dense_map(inv_map_ptr, H * W, 2 * H * WK, 1, H * W, HW, SD,
                                  DOT_DTYPE, SPLIT)
        k_re, k_im, k_unscale = _dense_load_filter(weight_ptr, c0, n_channels, sk_h, sk_k,
                                                   sk_c, sk_p, H, WK, SD, BLOCK_C, SCALE)
        dk_re = tl.zeros((BLOCK_C, SD // 2), dtype=tl.float32)
        dk_im = tl.zeros((BLOCK_C, SD // 2), dtype=tl.float32)
        for b in range(b_start, b_end):  # fixed order, so dK partials are reproducible
            x = _dense_load(x_ptr, b * sx_b + c0 * sx_c, n_channels, sx_h, sx_w, sx_c,
                            H, W, HW, BLOCK_C)
            dy = _dense_load(grad_y_ptr, b * sg_b + c0 * sg_c, n_channels, sg_h, sg_w, sg_c,
                             H, W, HW, BLOCK_C)
            x, x_unscale = _normalized(x, 1, BLOCK_C, HW, SCALE)
            dy, dy_unscale = _normalized(dy, 1, BLOCK_C, HW, SCALE)
            s_re, s_im = _times_map(x, f_hi, f_lo, BLOCK_C, SD // 2, DOT_DTYPE, SPLIT)
            d_re, d_im = _times_map(dy, gt_hi, gt_lo, BLOCK_C, SD // 2, DOT_DTYPE, SPLIT)
            pk_re = s_re * d_re + s_im * d_im
            pk_im = s_re * d_im - s_im * d_re
            dk_re += _restored(pk_re, x_unscale * dy_unscale, 1, BLOCK_C, SD // 2, SCALE)
            dk_im += _restored(pk_im, x_unscale * dy_unscale, 1, BLOCK_C, SD // 2, SCALE)
            ds = _stacked(d_re * k_re + d_im * k_im, d_im * k_re - d_re * k_im, BLOCK_C, SD)
            ds_hi, ds_lo = _split(ds, DOT_DTYPE, SPLIT)
            dx = _mm(ds_hi, ds_lo, ft_hi, ft_lo, SPLIT)
            dx = _restored(dx, dy_unscale * k_unscale, 1, BLOCK_C, HW, SCALE)
            _dense_store(grad_x_ptr, b * (H * W * C) + c0, dx, C, n_channels, H, W, HW,
                         BLOCK_C)
        cc, hh, kk, mask = _dense_spectrum_offsets(n_channels, H, WK, SD, BLOCK_C)
        p_ptr = (grad_k_partial_ptr + group * (H * WK * C * 2) + (c0 + cc) * 2
                 + hh * (WK * C * 2) + kk * (C * 2))
        tl.store(p_ptr, dk_re, mask=mask)
        tl.store(p_ptr + 1, dk_im, mask=mask)

    def _prune(kernel, configs, named_args, **kwargs):
        """The autotuner's candidates: ``kept_configs`` for this shape (never empty here,
        because ``supports`` declines shapes without a fitting config)."""
        args = {**named_args, **kwargs}
        dtype = _DTYPE_NAMES[args["x_ptr"].dtype]
        kept = kept_configs(kernel, dtype, args["H"], args["W"], args["C"])
        if not kept:
            raise RuntimeError(no_config_reason(kernel, dtype, args["H"], args["W"]))
        return kept

    def _prune_forward(configs, named_args, **kwargs):
        return _prune("forward", configs, named_args, **kwargs)

    def _prune_backward(configs, named_args, **kwargs):
        return _prune("backward", configs, named_args, **kwargs)

    _AUTOTUNE_CONFIGS = [
        triton.Config({"BLOCK_C": bc, "batch_per_program": bpp}, num_warps=nw,
                      num_stages=NUM_STAGES)
        for bc in (1, 2, 4, 8, 16, 32) for nw in (2, 4, 8) for bpp in BATCH_PER_PROGRAM_CHOICES
    ]
    # The dense-map kernels have channels as the rows of every product: blocks of 64 and
    # more fill a warpgroup MMA.
    _DENSE_CONFIGS = [
        triton.Config({"BLOCK_C": bc, "batch_per_program": bpp}, num_warps=nw,
                      num_stages=NUM_STAGES)
        for bc in (16, 32, 64, 128) for nw in (2, 4, 8) for bpp in BATCH_PER_PROGRAM_CHOICES
    ]

    def _tuned(fn, configs, prune):
        # B in the key: how many batch elements a program should run depends on it.
        return triton.autotune(configs, key=["H", "W", "C", "B"],
                               prune_configs_by={"early_config_prune": prune})(fn)

    _KERNELS = {  # (kernel, dense) -> (jit function, autotuned launcher)
        ("forward", False): (_forward_kernel,
                             _tuned(_forward_kernel, _AUTOTUNE_CONFIGS, _prune_forward)),
        ("backward", False): (_backward_kernel,
                              _tuned(_backward_kernel, _AUTOTUNE_CONFIGS, _prune_backward)),
        ("forward", True): (_dense_forward_kernel,
                            _tuned(_dense_forward_kernel, _DENSE_CONFIGS, _prune_forward)),
        ("backward", True): (_dense_backward_kernel,
                             _tuned(_dense_backward_kernel, _DENSE_CONFIGS, _prune_backward)),
    }


class DenseMaps(NamedTuple):
    forward: torch.Tensor  # (H*W, 2*H*Wk), see dft_matrices.dense_maps
    inverse: torch.Tensor  # (2*H*Wk, H*W)


def uses_dense_map(h: int, w: int) -> bool:
    """Grids whose whole transform fits one small matrix per direction (padded H*W and
    2*H*Wk at most DENSE_MAX) take the dense-map kernels; larger ones the separable ones."""
    return _padded(h * w) <= DENSE_MAX and _padded(2 * h * (w // 2 + 1)) <= DENSE_MAX


def autotune_configs(h: int, w: int) -> list:
    """Every autotune config of the kernel form an h x w grid takes (before pruning)."""
    return _DENSE_CONFIGS if uses_dense_map(h, w) else _AUTOTUNE_CONFIGS


def kernel_function(kernel: str, h: int, w: int, tuned: bool = False):
    """The jit function (or its autotuned launcher) that runs ``kernel`` on an h x w grid."""
    return _KERNELS[(kernel, uses_dense_map(h, w))][1 if tuned else 0]


def kernel_matrices(h: int, w: int, device) -> object:
    """The fp32 matrices the kernels of an h x w grid read."""
    if uses_dense_map(h, w):
        return DenseMaps(*dense_maps(h, w, torch.float32, device))
    return dft_matrices(h, w, torch.float32, device)


def _matrix_arguments(h: int, w: int, mats) -> dict:
    if uses_dense_map(h, w):
        return dict(fwd_map_ptr=mats.forward, inv_map_ptr=mats.inverse)
    return dict(w_fwd_ptr=mats.w_forward, h_fwd_ptr=mats.h_forward, w_inv_ptr=mats.w_inverse)


def _tile_elements(h: int, w: int) -> int:
    """Padded elements of one channel's tile (the wider of the grid and spectrum tiles)."""
    k = kernel_constants(h, w)
    if uses_dense_map(h, w):
        return max(k["HW"], k["SD"])
    return k["HP"] * max(k["WP"], k["S"])


def kernel_constants(h: int, w: int) -> dict:
    """The grid constexprs: H, W and Wk = W//2+1, and for the separable kernels padded H and
    W and S, the padded width of the stacked half spectrum (2*Wk interleaved real and
    imaginary parts); for the dense-map kernels the padded H*W and 2*H*Wk."""
    wk = w // 2 + 1
    if uses_dense_map(h, w):
        return dict(H=h, W=w, WK=wk, HW=_padded(h * w), SD=_padded(2 * h * wk))
    return dict(H=h, W=w, WK=wk, HP=_padded(h), WP=_padded(w), S=_padded(2 * wk))


# The pruner's candidates before the sm_90a compile table: configs whose CTA tile (padded
# elements of BLOCK_C channels of one batch element) is at most MAX_CTA_TILE (or that hold
# one channel), and whose tile
# elements per thread are at most what compiled without a stack frame in the GPU model's
# sm_90a compiles of the benchmark grids (larger ones spilled, and some kept ptxas busy
# for many minutes). The compile table then drops any candidate that still spills or
# needs more than SMEM_LIMIT of shared memory.
SMEM_LIMIT = 227 * 1024  # Hopper's largest shared memory per block
MAX_CTA_TILE = {False: 4096, True: 8192}  # separable, dense-map kernels
_MAX_TILE_ELEMENTS_PER_THREAD = {  # (kernel, 16-bit operands)
    ("forward", False): 32, ("forward", True): 32,
    ("backward", False): 8, ("backward", True): 32,
}


def kept_configs(kernel: str, dtype: str, h: int, w: int, c: int,
                 use_compiled: bool = True) -> list:
    """Autotune configs the pruner keeps for a shape (``dtype``: fp32/bf16/fp16).

    A config is kept when the resource estimate below says it fits and does not spill, and
    the sm_90a compile of it with the launcher's specialization (``triton_sm90_resources``,
    regenerated by ``python -m benchmarks.gpu_model``) has no stack frame: spilling
    configs are slow, and some keep the compiler busy for minutes on the first call. Grids
    missing from that table rely on the estimate alone (``use_compiled=False``: the
    estimate alone, the candidates the GPU model compiles). Empty when nothing fits: then
    ``supports`` declines the shape and ``auto`` falls back."""
    return list(_kept_configs(kernel, dtype, h, w, c, use_compiled))


# Cached: the launcher asks on every call (``supports``), and the answer depends only on the
# arguments and on tables fixed at import. Uncached it cost about 0.36 ms of host time per
# call on the development machine, more than the kernels' device time.
@functools.lru_cache(maxsize=None)
def _kept_configs(kernel: str, dtype: str, h: int, w: int, c: int, use_compiled: bool) -> tuple:
    from .triton_sm90_resources import RESOURCES

    configs = autotune_configs(h, w)
    candidates = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] < 2 * c]
    kept = []
    for cfg in candidates or configs:
        block_c, warps = cfg.kwargs["BLOCK_C"], cfg.num_warps
        if not estimate_resources(kernel, dtype, h, w, block_c, warps)["fits"]:
            continue
        compiled = RESOURCES.get((kernel, dtype, h, w, block_c, warps)) if use_compiled else None
        if compiled is not None and (compiled["stack_bytes"] > 0
                                     or compiled["shared_bytes"] > SMEM_LIMIT):
            continue
        kept.append(cfg)
    return tuple(kept)


def no_config_reason(kernel: str, dtype: str, h: int, w: int) -> str:
    return (f"no {kernel} kernel config for a {h}x{w} grid in {dtype} fits without spilling "
            "registers (compiled for sm_90a: every candidate has a stack frame or too much shared "
            "memory, or exceeds the per-thread tile limit)")


def estimate_resources(kernel: str, dtype: str, h: int, w: int, block_c: int,
                       num_warps: int) -> dict:
    """Tile elements per CTA and per thread of one config, and whether the pruner's limits
    take it as a candidate (``dtype``: fp32/bf16/fp16)."""
    dense = uses_dense_map(h, w)
    tile = block_c * _tile_elements(h, w)
    per_thread = tile // (32 * num_warps)
    return {
        "tile": tile,
        "tile_per_thread": per_thread,
        "fits": ((tile <= MAX_CTA_TILE[dense] or block_c == 1)
                 and per_thread <= _MAX_TILE_ELEMENTS_PER_THREAD[(kernel, dtype != "fp32")]),
    }


def _heuristic_block_c(c: int, grid_elements: int) -> int:
    """Largest power-of-two channel block within TILE_ELEMENTS, and not beyond C."""
    block = 1
    while 2 * block * grid_elements <= TILE_ELEMENTS and block < c:
        block *= 2
    return block


def _precision(dtype: torch.dtype) -> dict:
    """The dot operands of each input dtype (see "Precision" above)."""
    if dtype == torch.bfloat16:
        return dict(DOT_DTYPE=tl.bfloat16, SPLIT=False, SCALE=False)
    return dict(DOT_DTYPE=tl.float16, SPLIT=dtype == torch.float32, SCALE=True)


def forward_arguments(x, weight, y, mats) -> dict:
    """Every argument of ``_forward_kernel`` but the autotuned ``BLOCK_C`` and
    ``batch_per_program``, by name.

    The one description of what the launcher passes: the launcher calls the kernel with it,
    and the resource harness and the GPU model (``benchmarks``) derive Triton's
    specialization from it (``specialization``), so they compile what runs."""
    _, h, w, c = x.shape
    return dict(
        x_ptr=x, weight_ptr=weight, y_ptr=y, **_matrix_arguments(h, w, mats), B=x.shape[0],
        C=c, **dict(zip(("sx_b", "sx_h", "sx_w", "sx_c"), x.stride())),
        **dict(zip(("sk_h", "sk_k", "sk_c", "sk_p"), weight.stride())),
        **kernel_constants(h, w), **_precision(x.dtype),
    )


def backward_arguments(grad_y, x, weight, grad_x, grad_k_partials, mats) -> dict:
    """Every argument of ``_backward_kernel`` but the autotuned ``BLOCK_C`` and
    ``batch_per_program``, by name. ``grad_k_partials`` has a row per batch group of the
    smallest ``batch_per_program`` (``partial_rows``)."""
    b, h, w, c = x.shape
    return dict(
        grad_y_ptr=grad_y, x_ptr=x, weight_ptr=weight, grad_x_ptr=grad_x,
        grad_k_partial_ptr=grad_k_partials, **_matrix_arguments(h, w, mats), B=b, C=c,
        **dict(zip(("sg_b", "sg_h", "sg_w", "sg_c"), grad_y.stride())),
        **dict(zip(("sx_b", "sx_h", "sx_w", "sx_c"), x.stride())),
        **dict(zip(("sk_h", "sk_k", "sk_c", "sk_p"), weight.stride())),
        **kernel_constants(h, w), **_precision(x.dtype),
    )


def specialization(kernel: str, arguments: dict, config, target) -> tuple:
    """(signature, constexprs, attributes, options) that Triton's launcher derives from
    ``arguments`` (``forward_arguments``/``backward_arguments``) and an autotune ``config``
    for a compile ``target`` (``triton.backends.compiler.GPUTarget``): the launcher's own
    binder, so int specialisation (1 -> constexpr), divisibility by 16 of ints and
    pointers and the options are what a launch on that target would use. Arguments may be
    stand-ins for tensors with ``data_ptr()`` and ``dtype``."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = kernel_function(kernel, arguments["H"], arguments["W"])
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**arguments, **config.all_kwargs()}
    bound, spec, options = binder(**kwargs)
    return fn._pack_args(backend, kwargs, bound, spec, options)


def _interpreter_config(x: torch.Tensor) -> dict:
    """Under the interpreter the autotuner (which times on a GPU) is bypassed."""
    if not INTERPRETED:
        return {}
    _, h, w, c = x.shape
    return {"BLOCK_C": _heuristic_block_c(c, _tile_elements(h, w)),
            "batch_per_program": BATCH_PER_PROGRAM}


def _programs(b: int, c: int):
    """The launch grid of a config: channel blocks times batch groups."""
    return lambda meta: (triton.cdiv(c, meta["BLOCK_C"])
                         * triton.cdiv(b, meta["batch_per_program"]),)


def config_name(block_c: int, warps: int, stages: int, per_program: int) -> str:
    """How results name a config (the GPU model's ``config`` column, the GPU benchmark's)."""
    return f"BLOCK_C={block_c},warps={warps},stages={stages},batch/program={per_program}"


def last_config(kernel: str, h: int, w: int) -> str:
    """``config_name`` of the config the autotuner ran ``kernel`` with last (CUDA only)."""
    cfg = kernel_function(kernel, h, w, tuned=True).best_config
    return config_name(cfg.kwargs["BLOCK_C"], cfg.num_warps, cfg.num_stages,
                       cfg.kwargs["batch_per_program"])


def partial_rows(b: int) -> int:
    """Rows of the dK partial buffer: enough for every ``batch_per_program`` choice."""
    return triton.cdiv(b, min(BATCH_PER_PROGRAM_CHOICES))


# The autotuner records the config of its last launch on itself (``best_config``): the
# backward launches and reads it under this lock, so that another thread's launch of the
# same kernel (another shape) cannot come in between.
_LAUNCH_LOCK = threading.Lock()


def _launch_backward(kernel, grid, arguments: dict) -> int:
    """Launch a backward kernel; returns the ``batch_per_program`` the launch used."""
    if INTERPRETED:
        kernel[grid](**arguments)
        return arguments["batch_per_program"]
    with _LAUNCH_LOCK:
        kernel[grid](**arguments)
        return kernel.best_config.kwargs["batch_per_program"]


def _device_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def spectral_gate_triton(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    y = _empty(x.shape, dtype=x.dtype, device=x.device)
    if b == 0:
        return y
    mats = kernel_matrices(h, w, x.device)
    kernel = kernel_function("forward", h, w, tuned=not INTERPRETED)
    with _device_guard(x):
        kernel[_programs(b, c)](**forward_arguments(x, weight, y, mats), **_interpreter_config(x))
    return y


def spectral_gate_triton_backward(
    grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, w, c = x.shape
    wk = w // 2 + 1
    grad_x = _empty(x.shape, dtype=x.dtype, device=x.device)
    if b == 0:
        return grad_x, torch.zeros_like(weight, memory_format=torch.contiguous_format)
    mats = kernel_matrices(h, w, x.device)
    grad_k_partials = _empty((partial_rows(b), h, wk, c, 2), dtype=torch.float32,
                             device=x.device)
    kernel = kernel_function("backward", h, w, tuned=not INTERPRETED)
    arguments = {**backward_arguments(grad_y, x, weight, grad_x, grad_k_partials, mats),
                 **_interpreter_config(x)}
    with _device_guard(x):
        per_program = _launch_backward(kernel, _programs(b, c), arguments)
    # The rows the launch's batch groups wrote, summed over that fixed leading axis:
    # deterministic, unlike atomics across programs.
    groups = triton.cdiv(b, per_program)
    grad_weight = grad_k_partials[:groups].sum(0) if groups > 1 else grad_k_partials[0]
    return grad_x, grad_weight.to(weight.dtype).contiguous()


register_backend(Backend(
    "triton", spectral_gate_triton, spectral_gate_triton_backward,
    "fused Triton kernels: DFT by tl.dot (separable, or one dense map on small grids), "
    "gate and inverse in one pass",
    availability=availability, supports=supports,
))
