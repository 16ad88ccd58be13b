"""The ``triton`` backend: the whole spectral gate in one fused Triton kernel per direction.

Design
------
The op is a fixed real-linear map per channel (DESIGN section 1), computed here with the
separable real DFT matrices of ``dft_matrices``. One program owns ``BLOCK_C`` channels of
one batch element and keeps their whole token grid on chip. The tile is laid out so that
every stage is a plain 2-D ``tl.dot`` with one small, shared DFT matrix and the tensors
between stages are row-major regroupings of each other (no transposes):

    x  (W, BLOCK_C*H)      loaded from channels-last memory, rows w, columns (c, h)
    A = Fw @ x             W-axis real DFT, (Wk, W) @ (W, BLOCK_C*H); re and im parts
    X = A' @ Fh            A' = A regrouped as (Wk*BLOCK_C, H); H-axis complex DFT (4 dots)
    Y = X * K              complex gate, K read straight from ``complex_weight``
    Z = Y @ conj(Fh)       H-axis inverse (4 dots)
    y = Gw_re @ Re Z' + Gw_im @ Im Z'    Z' = Z regrouped as (Wk, BLOCK_C*H); CPU irfft rules

``Fh`` and ``conj(Fh)`` are symmetric, so multiplying by them from the right transforms
along h. Between the load of ``x`` and the store of ``y`` nothing goes to global memory:
HBM traffic is one read of ``x``, one write of ``y`` and the (L2-resident) matrices and
filter, which is the op's floor.

The backward kernel reads ``x`` and ``dy`` once and writes ``dx`` once. It recomputes the
spectrum ``X``, pulls ``dy`` back through the adjoint inverse stages to ``D`` (the gradient
reaching ``Y``), accumulates ``dK = sum_b conj(X) * D`` in registers over
``BATCH_PER_PROGRAM`` batch elements in a fixed order, and pushes ``D * conj(K)`` through
the adjoint forward stages to ``dx``. Each program writes its ``dK`` partial to its own
slot and the slots are summed over a fixed axis afterwards, so ``dK`` is bitwise
reproducible (no atomics). The partials cost about ``1/BATCH_PER_PROGRAM`` of the bytes
of ``x`` in extra traffic.

Padding and precision
---------------------
Triton tiles have power-of-two sides and dot operands need at least 16 along each matrix
axis, so H, W and Wk = W//2+1 are padded to ``max(16, next_pow2(n))`` *inside the kernel*
with masked loads (zeros in the matrices and in ``x`` beyond the grid); tensors in HBM
are never padded. Every dot accumulates in fp32.

* fp32 inputs: ``input_precision="ieee"`` dots (TF32 would miss the 1e-5 bar); about
  1.5e-7 relative error against the float64 oracle (measured in the interpreter).
* fp16 inputs: dot operands in fp16 (intermediates rounded to fp16 between stages),
  about 7e-4.
* bf16 inputs: dot operands in bf16, about 5e-3 (bar: 1e-2). Overflow-safe, unlike fp16
  operands, because bf16 has fp32's exponent range.

There is no TF32 mode: its accuracy could not be measured without a GPU.

Supported inputs
----------------
fp32, bf16 and fp16 ``x`` with any strides, any B and C, and 1 <= H, W <= ``MAX_GRID``
(64, the DESIGN's largest grid). fp64, CPU tensors (unless Triton's interpreter is on),
larger grids and single samples spanning 2**31 elements or more are declined by
``supports`` with the reason: ``auto`` then falls back to the next backend (``reference``
on CUDA) and an explicit ``backend="triton"`` raises ``BackendUnavailableError`` naming the
limit. Batch and channel-block offsets are int64, so tensors beyond 2**31 elements work.
Launches go on the current stream under a device guard with no host synchronisation, so the
op can be captured in a CUDA graph once the autotuner has run for the shape (call it once
before capturing).

On CUDA the channel block (1-32) and warp count are autotuned per (H, W, C, dtype) and
cached by Triton, among the configs ``_prune`` keeps: those whose estimated shared memory
fits 227 KB and whose tile and matrices per thread are small enough not to spill (a
resource model calibrated on ptxas output, see below; if nothing passes, the smallest
config is kept). Under ``TRITON_INTERPRET=1`` (CPU tensors, as in the tests) one heuristic
configuration is used instead, because the autotuner's timing needs a GPU.

Expected H100 behaviour (UNMEASURED: design estimates, no GPU was used)
------------------------------------------------------------------------
* bf16, 14x14, C=384, B=128: padded to 16x16 with Wk 8 -> 16, about 5 GFLOP of
  tensor-core dots per forward, a few microseconds of MMA work against the ~12 us memory
  floor, so the forward should run close to copy bandwidth if loads coalesce
  (``BLOCK_C`` >= 16 bf16 channels gives 32-byte contiguous segments).
* fp32 with ``ieee`` dots runs on CUDA cores (~60 TFLOP/s): the same shape needs roughly
  70-100 us, compute-bound at 3-4x the 23 us memory floor. ``tf32x3`` dots are the first
  thing to try for fp32 speed (they should keep ~1e-6 accuracy), measured on a GPU.
* 56x56 / 64x64 grids hold 4K values per channel per intermediate and their DFT matrices
  are 64x64: only one channel (two for bf16 forward) per 8-warp program fits, see below.

Compile-time resources for sm_90a (ptxas -v, NOT timings)
---------------------------------------------------------
Measured without a GPU by ``python -m benchmarks.triton_resources`` (Triton 3.9 compiling
for sm_90a, its bundled ptxas; full rows in ``benchmarks/results/triton_resources.csv``).
The GPU machine's Triton 3.6 may allocate somewhat differently. Per kernel, dtype and grid
(C does not change the compiled code): worst spill stores and shared memory over the
configs. "Before": the old pruner's configs at 4 warps (it also kept 2 and 8 warps; 56x56
fp32 backward, BLOCK_C 2, 8 warps needed 311 KB and could not launch). "After": every
config the current pruner keeps (2, 4 and 8 warps). "slow" = compiles still running after
30 s, each a delay on the autotuner's first call.

    kernel   dtype grid  | before: spill  smem  slow | after: kept spill  smem
    forward  fp32  14x14 |        54 KB   70 KB  0   |        12   184 B  38 KB
    forward  fp32  28x28 |        43 KB   56 KB  1   |         6     0 B  40 KB
    forward  fp32  56x56 |        37 KB  112 KB  2   |         1  1004 B 112 KB
    forward  fp32   7x7  |        55 KB   70 KB  0   |        12   200 B  38 KB
    forward  bf16  14x14 |       336 B   18 KB  0   |        15     0 B  34 KB
    forward  bf16  28x28 |       908 B   24 KB  0   |         9     0 B  24 KB
    forward  bf16  56x56 |       1.2 KB  64 KB  0   |         2    56 B  48 KB
    backward fp32  14x14 |       4.2 KB 122 KB  1   |         9    56 B  66 KB
    backward fp32  28x28 |        21 KB  124 KB  2   |         3   248 B  76 KB
    backward fp32  56x56 |        59 KB  208 KB  2   |         1    22 KB 208 KB
    backward bf16  14x14 |       5.7 KB  21 KB  0   |        12     8 B  21 KB
    backward bf16  28x28 |       3.8 KB  30 KB  0   |         6   180 B  22 KB
    backward bf16  56x56 |       5.2 KB  88 KB  0   |         1    20 B  64 KB
    (7x7 backward matches 14x14: both pad to 16x16.)

Every kept config compiles, fits 227 KB, and stays under the model's shared-memory
estimate (``tests/test_triton_compile.py`` checks the largest ones). What pruning cannot
fix: the fp32 backward on 56x56 / 64x64 grids keeps its ten DFT matrices (four 64x64,
six 32x64) live in registers across the batch loop and spills about 22 KB even at one
channel and 8 warps; expect it to be slow (keeping the matrices in shared memory is the
change to try).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from .dft_matrices import dft_matrices

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
BATCH_PER_PROGRAM = 8  # batch elements whose dK one backward program sums before writing
MIN_DOT = 16  # smallest matrix side a tl.dot operand may have on every GPU target
TILE_ELEMENTS = 4096  # BLOCK_C * H_pad * W_pad budget for the heuristic (interpreter) config

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

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
        dtype = _DTYPE_NAMES[_DOT_DTYPES[x.dtype]]
        for kernel in ("forward", "backward"):
            if not kept_configs(kernel, dtype, h, w, x.shape[3]):
                return no_config_reason(kernel, dtype, h, w)
    return None


if _TRITON_IMPORT_ERROR is None:

    # Triton's interpreter multiplies bf16 operands as raw bits and converts fp32 -> bf16 by
    # truncation. Under it, operands and stores are rounded to nearest-even by hand and the
    # dots run on the rounded values in fp32: the numbers a GPU bf16 dot with fp32
    # accumulation produces (a product of two 16-bit floats is exact in fp32).
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
    def _load_matrix(ptr, offset, stride_row, stride_col, n_rows, n_cols,
                     ROWS: tl.constexpr, COLS: tl.constexpr, DOT_DTYPE: tl.constexpr):
        """``ptr[offset + r*stride_row + c*stride_col]``, zero-padded to (ROWS, COLS)."""
        r = tl.arange(0, ROWS)[:, None]
        c = tl.arange(0, COLS)[None, :]
        m = tl.load(ptr + offset + r * stride_row + c * stride_col,
                    mask=(r < n_rows) & (c < n_cols), other=0.0)
        return _to_storage(m, DOT_DTYPE)

    @triton.jit
    def _dot(a, b, DOT_DTYPE: tl.constexpr):
        """Matmul with fp32 accumulation; fp32 operands stay exact (no TF32)."""
        if DOT_DTYPE == tl.float32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        elif _EMULATE_16BIT:
            return tl.dot(_to_storage(a, DOT_DTYPE).to(tl.float32),
                          _to_storage(b, DOT_DTYPE).to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE))

    @triton.jit
    def _complex_dot(a_re, a_im, m_re, m_im, DOT_DTYPE: tl.constexpr):
        """``(a_re + i a_im) @ (m_re + i m_im)`` as four real dots."""
        out_re = _dot(a_re, m_re, DOT_DTYPE) - _dot(a_im, m_im, DOT_DTYPE)
        out_im = _dot(a_re, m_im, DOT_DTYPE) + _dot(a_im, m_re, DOT_DTYPE)
        return out_re, out_im

    @triton.jit
    def _load_grid(ptr, base, n_channels, s_h, s_w, s_c, H: tl.constexpr, W: tl.constexpr,
                   HP: tl.constexpr, WP: tl.constexpr, BLOCK_C: tl.constexpr):
        """A (WP, BLOCK_C * HP) tile of a channels-last grid: rows w, columns (c, h).

        ``base`` (int64) points at the tile's first channel; ``n_channels`` of the block
        exist. In-tile offsets stay int32 (``supports`` checks that they fit)."""
        ww = tl.arange(0, WP)[:, None, None]
        cc = tl.arange(0, BLOCK_C)[None, :, None]
        hh = tl.arange(0, HP)[None, None, :]
        mask = (ww < W) & (cc < n_channels) & (hh < H)
        tile = tl.load(ptr + base + cc * s_c + ww * s_w + hh * s_h, mask=mask, other=0.0)
        return tl.reshape(tile, (WP, BLOCK_C * HP))

    @triton.jit
    def _store_grid(ptr, base, value, C, n_channels, H: tl.constexpr, W: tl.constexpr,
                    HP: tl.constexpr, WP: tl.constexpr, BLOCK_C: tl.constexpr):
        """Store a (WP, BLOCK_C * HP) tile into a contiguous (B, H, W, C) tensor."""
        ww = tl.arange(0, WP)[:, None, None]
        cc = tl.arange(0, BLOCK_C)[None, :, None]
        hh = tl.arange(0, HP)[None, None, :]
        mask = (ww < W) & (cc < n_channels) & (hh < H)
        value = _to_storage(tl.reshape(value, (WP, BLOCK_C, HP)), ptr.dtype.element_ty)
        tl.store(ptr + base + cc + ww * C + hh * (W * C), value, mask=mask)

    @triton.jit
    def _spectrum_offsets(n_channels, H: tl.constexpr, WK: tl.constexpr,
                          HP: tl.constexpr, WKP: tl.constexpr, BLOCK_C: tl.constexpr):
        """Index vectors and mask of a (WKP, BLOCK_C, HP) half-spectrum tile."""
        kk = tl.arange(0, WKP)[:, None, None]
        cc = tl.arange(0, BLOCK_C)[None, :, None]
        hh = tl.arange(0, HP)[None, None, :]
        return kk, cc, hh, (kk < WK) & (cc < n_channels) & (hh < H)

    @triton.jit
    def _load_filter(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c, sk_p, H: tl.constexpr,
                     WK: tl.constexpr, HP: tl.constexpr, WKP: tl.constexpr,
                     BLOCK_C: tl.constexpr):
        """K's real and imaginary parts as (WKP * BLOCK_C, HP) fp32 tiles."""
        kk, cc, hh, mask = _spectrum_offsets(n_channels, H, WK, HP, WKP, BLOCK_C)
        k_ptr = weight_ptr + c0 * sk_c + cc * sk_c + kk * sk_k + hh * sk_h
        k_re = tl.load(k_ptr, mask=mask, other=0.0).to(tl.float32)
        k_im = tl.load(k_ptr + sk_p, mask=mask, other=0.0).to(tl.float32)
        return (tl.reshape(k_re, (WKP * BLOCK_C, HP)), tl.reshape(k_im, (WKP * BLOCK_C, HP)))

    @triton.jit
    def _spectrum(x, fw_re, fw_im, fh_re, fh_im, HP: tl.constexpr, WKP: tl.constexpr,
                  BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr):
        """rfft2 (ortho) of a (WP, BLOCK_C * HP) tile -> re, im as (WKP * BLOCK_C, HP).

        The W-axis DFT multiplies from the left, the H-axis DFT from the right; the
        row-major reshape between them only regroups (k, c, h), it moves no data."""
        a_re = tl.reshape(_dot(fw_re, x, DOT_DTYPE), (WKP * BLOCK_C, HP))
        a_im = tl.reshape(_dot(fw_im, x, DOT_DTYPE), (WKP * BLOCK_C, HP))
        return _complex_dot(a_re, a_im, fh_re, fh_im, DOT_DTYPE)

    @triton.jit
    def _forward_kernel(
        x_ptr, weight_ptr, y_ptr, w_fwd_ptr, h_fwd_ptr, h_inv_ptr, w_inv_ptr,
        C, sx_b, sx_h, sx_w, sx_c, sk_h, sk_k, sk_c, sk_p,
        H: tl.constexpr, W: tl.constexpr, WK: tl.constexpr,
        HP: tl.constexpr, WP: tl.constexpr, WKP: tl.constexpr,
        BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        n_cblocks = tl.cdiv(C, BLOCK_C)
        b = pid // n_cblocks
        c0 = (pid % n_cblocks) * BLOCK_C
        n_channels = C - c0  # channels of this block that exist (masks compare with it)

        # DFT matrices (layouts in dft_matrices.py). The H-axis ones are the (h, h') blocks
        # of the interleaved (h, re/im) real form; being symmetric, they are their own
        # transposes, so right-multiplying by them applies the transform along h.
        fw_re = _load_matrix(w_fwd_ptr, 0, W, 1, WK, W, WKP, WP, DOT_DTYPE)
        fw_im = _load_matrix(w_fwd_ptr, WK * W, W, 1, WK, W, WKP, WP, DOT_DTYPE)
        fh_re = _load_matrix(h_fwd_ptr, 0, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        fh_im = _load_matrix(h_fwd_ptr, 2 * H, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        gh_re = _load_matrix(h_inv_ptr, 0, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        gh_im = _load_matrix(h_inv_ptr, 2 * H, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        gw_re = _load_matrix(w_inv_ptr, 0, 2 * WK, 1, W, WK, WP, WKP, DOT_DTYPE)
        gw_im = _load_matrix(w_inv_ptr, WK, 2 * WK, 1, W, WK, WP, WKP, DOT_DTYPE)
        k_re, k_im = _load_filter(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c, sk_p,
                                  H, WK, HP, WKP, BLOCK_C)

        x = _load_grid(x_ptr, b * sx_b + c0 * sx_c, n_channels, sx_h, sx_w, sx_c,
                       H, W, HP, WP, BLOCK_C)
        s_re, s_im = _spectrum(x, fw_re, fw_im, fh_re, fh_im, HP, WKP, BLOCK_C, DOT_DTYPE)
        g_re = s_re * k_re - s_im * k_im
        g_im = s_re * k_im + s_im * k_re
        z_re, z_im = _complex_dot(g_re, g_im, gh_re, gh_im, DOT_DTYPE)
        z_re = tl.reshape(z_re, (WKP, BLOCK_C * HP))
        z_im = tl.reshape(z_im, (WKP, BLOCK_C * HP))
        y = _dot(gw_re, z_re, DOT_DTYPE) + _dot(gw_im, z_im, DOT_DTYPE)
        _store_grid(y_ptr, b * (H * W * C) + c0, y, C, n_channels, H, W, HP, WP, BLOCK_C)

    @triton.jit
    def _backward_kernel(
        grad_y_ptr, x_ptr, weight_ptr, grad_x_ptr, grad_k_partial_ptr,
        w_fwd_ptr, h_fwd_ptr, h_inv_ptr, w_inv_ptr,
        B, C, sg_b, sg_h, sg_w, sg_c, sx_b, sx_h, sx_w, sx_c, sk_h, sk_k, sk_c, sk_p,
        H: tl.constexpr, W: tl.constexpr, WK: tl.constexpr,
        HP: tl.constexpr, WP: tl.constexpr, WKP: tl.constexpr,
        BLOCK_C: tl.constexpr, BATCH_PER_PROGRAM: tl.constexpr, DOT_DTYPE: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        n_cblocks = tl.cdiv(C, BLOCK_C)
        group = pid // n_cblocks
        c0 = (pid % n_cblocks) * BLOCK_C
        n_channels = C - c0

        # Adjoints: of "Fw @" is "Fw^T @", of "Gw @" is "Gw^T @"; of "@ conj(Fh)" is "@ Fh"
        # and of "@ Fh" is "@ conj(Fh)" (symmetric matrices, conjugate transposes).
        fw_re = _load_matrix(w_fwd_ptr, 0, W, 1, WK, W, WKP, WP, DOT_DTYPE)
        fw_im = _load_matrix(w_fwd_ptr, WK * W, W, 1, WK, W, WKP, WP, DOT_DTYPE)
        fwt_re = _load_matrix(w_fwd_ptr, 0, 1, W, W, WK, WP, WKP, DOT_DTYPE)
        fwt_im = _load_matrix(w_fwd_ptr, WK * W, 1, W, W, WK, WP, WKP, DOT_DTYPE)
        fh_re = _load_matrix(h_fwd_ptr, 0, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        fh_im = _load_matrix(h_fwd_ptr, 2 * H, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        gh_re = _load_matrix(h_inv_ptr, 0, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        gh_im = _load_matrix(h_inv_ptr, 2 * H, 4 * H, 2, H, H, HP, HP, DOT_DTYPE)
        gwt_re = _load_matrix(w_inv_ptr, 0, 1, 2 * WK, WK, W, WKP, WP, DOT_DTYPE)
        gwt_im = _load_matrix(w_inv_ptr, WK, 1, 2 * WK, WK, W, WKP, WP, DOT_DTYPE)
        k_re, k_im = _load_filter(weight_ptr, c0, n_channels, sk_h, sk_k, sk_c, sk_p,
                                  H, WK, HP, WKP, BLOCK_C)

        dk_re = tl.zeros((WKP * BLOCK_C, HP), dtype=tl.float32)
        dk_im = tl.zeros((WKP * BLOCK_C, HP), dtype=tl.float32)
        b_start = group * BATCH_PER_PROGRAM
        b_end = tl.minimum(b_start + BATCH_PER_PROGRAM, B)
        for b in range(b_start, b_end):  # fixed order, so dK partials are reproducible
            x = _load_grid(x_ptr, b * sx_b + c0 * sx_c, n_channels, sx_h, sx_w, sx_c,
                           H, W, HP, WP, BLOCK_C)
            dy = _load_grid(grad_y_ptr, b * sg_b + c0 * sg_c, n_channels, sg_h, sg_w, sg_c,
                            H, W, HP, WP, BLOCK_C)
            s_re, s_im = _spectrum(x, fw_re, fw_im, fh_re, fh_im, HP, WKP, BLOCK_C, DOT_DTYPE)

            # D, the gradient reaching the gated spectrum: adjoints of the two inverses.
            dz_re = tl.reshape(_dot(gwt_re, dy, DOT_DTYPE), (WKP * BLOCK_C, HP))
            dz_im = tl.reshape(_dot(gwt_im, dy, DOT_DTYPE), (WKP * BLOCK_C, HP))
            d_re, d_im = _complex_dot(dz_re, dz_im, fh_re, fh_im, DOT_DTYPE)

            dk_re += s_re * d_re + s_im * d_im
            dk_im += s_re * d_im - s_im * d_re

            # D * conj(K), then the adjoints of the H and W forward transforms.
            ds_re = d_re * k_re + d_im * k_im
            ds_im = d_im * k_re - d_re * k_im
            da_re, da_im = _complex_dot(ds_re, ds_im, gh_re, gh_im, DOT_DTYPE)
            da_re = tl.reshape(da_re, (WKP, BLOCK_C * HP))
            da_im = tl.reshape(da_im, (WKP, BLOCK_C * HP))
            dx = _dot(fwt_re, da_re, DOT_DTYPE) + _dot(fwt_im, da_im, DOT_DTYPE)
            _store_grid(grad_x_ptr, b * (H * W * C) + c0, dx, C, n_channels,
                        H, W, HP, WP, BLOCK_C)

        # This group's partial slot in the (groups, H, WK, C, 2) buffer.
        kk, cc, hh, mask = _spectrum_offsets(n_channels, H, WK, HP, WKP, BLOCK_C)
        p_ptr = (grad_k_partial_ptr + group * (H * WK * C * 2) + c0 * 2
                 + hh * (WK * C * 2) + kk * (C * 2) + cc * 2)
        tl.store(p_ptr, tl.reshape(dk_re, (WKP, BLOCK_C, HP)), mask=mask)
        tl.store(p_ptr + 1, tl.reshape(dk_im, (WKP, BLOCK_C, HP)), mask=mask)

    _DOT_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16,
                   torch.float16: tl.float16}

    _DTYPE_NAMES = {tl.float32: "fp32", tl.bfloat16: "bf16", tl.float16: "fp16"}

    def _prune(kernel, configs, named_args, **kwargs):
        """The autotuner's candidates: ``kept_configs`` for this shape (never empty here,
        because ``supports`` declines shapes without a fitting config)."""
        args = {**named_args, **kwargs}
        kept = kept_configs(kernel, _DTYPE_NAMES[args["DOT_DTYPE"]], args["H"], args["W"],
                            args["C"])
        if not kept:
            raise RuntimeError(no_config_reason(kernel, _DTYPE_NAMES[args["DOT_DTYPE"]],
                                                args["H"], args["W"]))
        return kept

    def _prune_forward(configs, named_args, **kwargs):
        return _prune("forward", configs, named_args, **kwargs)

    def _prune_backward(configs, named_args, **kwargs):
        return _prune("backward", configs, named_args, **kwargs)

    _AUTOTUNE_CONFIGS = [
        triton.Config({"BLOCK_C": bc}, num_warps=nw)
        for bc in (1, 2, 4, 8, 16, 32) for nw in (2, 4, 8)
    ]
    _forward_tuned = triton.autotune(
        _AUTOTUNE_CONFIGS, key=["H", "W", "C"],
        prune_configs_by={"early_config_prune": _prune_forward})(_forward_kernel)
    _backward_tuned = triton.autotune(
        _AUTOTUNE_CONFIGS, key=["H", "W", "C"],
        prune_configs_by={"early_config_prune": _prune_backward})(_backward_kernel)


def kernel_constants(h: int, w: int) -> dict:
    """The grid constexprs of both kernels: true and padded H, W and Wk = W//2+1."""
    wk = w // 2 + 1
    return dict(H=h, W=w, WK=wk, HP=_padded(h), WP=_padded(w), WKP=_padded(wk))


# Resource model behind the autotune pruner, calibrated on ptxas -v output for sm_90a
# (benchmarks/triton_resources.py). In tile elements T = BLOCK_C * HP * max(WP, WKP) and
# M = max(HP, WP)**2 (one DFT matrix): shared bytes ~ a*M + b*T + c, an upper bound on
# every measured config; registers spill once a thread holds more than about E tile
# elements or more than MATRIX_ELEMENTS_PER_THREAD elements of one matrix.
SMEM_LIMIT = 227 * 1024  # Hopper's largest shared memory per block
_SMEM_MODEL = {  # (kernel, 16-bit operands) -> (a, b, c)
    ("forward", False): (24, 8, 1024),
    ("forward", True): (4, 8, 2048),
    ("backward", False): (24, 28, 10240),
    ("backward", True): (16, 8, 4096),
}
_MAX_TILE_ELEMENTS_PER_THREAD = {
    ("forward", False): 16, ("forward", True): 32,
    ("backward", False): 8, ("backward", True): 16,
}
MATRIX_ELEMENTS_PER_THREAD = 16


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
    from .triton_sm90_resources import RESOURCES

    candidates = [cfg for cfg in _AUTOTUNE_CONFIGS if cfg.kwargs["BLOCK_C"] < 2 * c]
    kept = []
    for cfg in candidates or _AUTOTUNE_CONFIGS:
        block_c, warps = cfg.kwargs["BLOCK_C"], cfg.num_warps
        if not estimate_resources(kernel, dtype, h, w, block_c, warps)["fits"]:
            continue
        compiled = RESOURCES.get((kernel, dtype, h, w, block_c, warps)) if use_compiled else None
        if compiled is not None and (compiled["stack_bytes"] > 0
                                     or compiled["shared_bytes"] > SMEM_LIMIT):
            continue
        kept.append(cfg)
    return kept


def no_config_reason(kernel: str, dtype: str, h: int, w: int) -> str:
    return (f"no {kernel} kernel config for a {h}x{w} grid in {dtype} fits without spilling "
            "registers (compiled for sm_90a: every candidate has a stack frame, or exceeds the "
            "shared-memory or register estimate)")


def estimate_resources(kernel: str, dtype: str, h: int, w: int, block_c: int,
                       num_warps: int) -> dict:
    """Estimated shared bytes and per-thread load of one config (``dtype``: fp32/bf16/fp16)."""
    hp, wp, wkp = _padded(h), _padded(w), _padded(w // 2 + 1)
    tile = block_c * hp * max(wp, wkp)
    matrix = max(hp, wp) ** 2
    key = (kernel, dtype != "fp32")
    a, b, c = _SMEM_MODEL[key]
    threads = 32 * num_warps
    return {
        "shared_bytes": a * matrix + b * tile + c,
        "tile_per_thread": tile // threads,
        "matrix_per_thread": matrix // threads,
        "fits": (a * matrix + b * tile + c <= SMEM_LIMIT
                 and tile // threads <= _MAX_TILE_ELEMENTS_PER_THREAD[key]
                 and matrix // threads <= MATRIX_ELEMENTS_PER_THREAD),
    }


def _heuristic_block_c(c: int, grid_elements: int) -> int:
    """Largest power-of-two channel block within TILE_ELEMENTS, and not beyond C."""
    block = 1
    while 2 * block * grid_elements <= TILE_ELEMENTS and block < c:
        block *= 2
    return block


def forward_arguments(x, weight, y, mats) -> dict:
    """Every argument of ``_forward_kernel`` but the autotuned ``BLOCK_C``, by name.

    The one description of what the launcher passes: the launcher calls the kernel with it,
    and the resource harness and the GPU model (``benchmarks``) derive Triton's
    specialization from it (``specialization``), so they compile what runs."""
    _, h, w, c = x.shape
    return dict(
        x_ptr=x, weight_ptr=weight, y_ptr=y, w_fwd_ptr=mats.w_forward,
        h_fwd_ptr=mats.h_forward, h_inv_ptr=mats.h_inverse, w_inv_ptr=mats.w_inverse,
        C=c, **dict(zip(("sx_b", "sx_h", "sx_w", "sx_c"), x.stride())),
        **dict(zip(("sk_h", "sk_k", "sk_c", "sk_p"), weight.stride())),
        **kernel_constants(h, w), DOT_DTYPE=_DOT_DTYPES[x.dtype],
    )


def backward_arguments(grad_y, x, weight, grad_x, grad_k_partials, mats) -> dict:
    """Every argument of ``_backward_kernel`` but the autotuned ``BLOCK_C``, by name."""
    b, h, w, c = x.shape
    return dict(
        grad_y_ptr=grad_y, x_ptr=x, weight_ptr=weight, grad_x_ptr=grad_x,
        grad_k_partial_ptr=grad_k_partials, w_fwd_ptr=mats.w_forward,
        h_fwd_ptr=mats.h_forward, h_inv_ptr=mats.h_inverse, w_inv_ptr=mats.w_inverse,
        B=b, C=c, **dict(zip(("sg_b", "sg_h", "sg_w", "sg_c"), grad_y.stride())),
        **dict(zip(("sx_b", "sx_h", "sx_w", "sx_c"), x.stride())),
        **dict(zip(("sk_h", "sk_k", "sk_c", "sk_p"), weight.stride())),
        **kernel_constants(h, w), BATCH_PER_PROGRAM=BATCH_PER_PROGRAM,
        DOT_DTYPE=_DOT_DTYPES[x.dtype],
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

    fn = _forward_kernel if kernel == "forward" else _backward_kernel
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
    return {"BLOCK_C": _heuristic_block_c(c, _padded(h) * max(_padded(w), _padded(w // 2 + 1)))}


def _device_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def spectral_gate_triton(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    y = _empty(x.shape, dtype=x.dtype, device=x.device)
    if b == 0:
        return y
    mats = dft_matrices(h, w, torch.float32, x.device)
    kernel = _forward_kernel if INTERPRETED else _forward_tuned
    grid = lambda meta: (b * triton.cdiv(c, meta["BLOCK_C"]),)  # noqa: E731
    with _device_guard(x):
        kernel[grid](**forward_arguments(x, weight, y, mats), **_interpreter_config(x))
    return y


def spectral_gate_triton_backward(
    grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, w, c = x.shape
    wk = w // 2 + 1
    groups = triton.cdiv(b, BATCH_PER_PROGRAM)
    grad_x = _empty(x.shape, dtype=x.dtype, device=x.device)
    if b == 0:
        return grad_x, torch.zeros_like(weight, memory_format=torch.contiguous_format)
    mats = dft_matrices(h, w, torch.float32, x.device)
    grad_k_partials = _empty((groups, h, wk, c, 2), dtype=torch.float32, device=x.device)
    kernel = _backward_kernel if INTERPRETED else _backward_tuned
    grid = lambda meta: (groups * triton.cdiv(c, meta["BLOCK_C"]),)  # noqa: E731
    with _device_guard(x):
        kernel[grid](**backward_arguments(grad_y, x, weight, grad_x, grad_k_partials, mats),
                     **_interpreter_config(x))
    # A sum over a fixed leading axis: deterministic, unlike atomics across programs.
    grad_weight = grad_k_partials.sum(0) if groups > 1 else grad_k_partials[0]
    return grad_x, grad_weight.to(weight.dtype).contiguous()


def register() -> None:
    from .backends import Backend, register_backend

    register_backend(Backend(
        "triton", spectral_gate_triton, spectral_gate_triton_backward,
        "fused Triton kernels: separable DFT by tl.dot, gate and inverse in one pass",
        availability=availability, supports=supports,
    ))


register()
