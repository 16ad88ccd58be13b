"""The ``reference`` backend on a GPU as its real kernel sequence, with the bytes each moves.

The sequence comes from a trace, not from a list written by hand: the reference forward
and backward run on ``meta`` tensors of the real shape under a dispatch mode that records
every ATen op with the sizes, strides and dtypes of its operands (the meta kernels give the
CUDA kernels' output layouts). Each op then becomes the CUDA kernels PyTorch launches for
it, following ``aten/src/ATen/native/cuda/SpectralOps.cpp``:

* ``_fft_r2c`` over dims (1, 2) takes the "optimized" path (one 2-D cuFFT plan, since the
  dims do not start with (0, 1)). ``_exec_fft`` permutes the batch dims to the front in
  stride order and reshapes them into one: for channels-last input (batch dims B and C)
  they cannot be collapsed, so the reshape copies x into (B*C, H, W). Then one R2C, then
  ``_fft_apply_normalization`` scales the output in place (one ``mul_``).
* ``_fft_c2r``: ``self.clone(MemoryFormat::Contiguous)`` (C2R overwrites its input), the
  same collapse check in ``_exec_fft`` (a second copy when the clone is channels-last), one
  C2R, and the normalisation ``mul_``.
* Views (``view_as_complex``, ``_conj``, ``select``, ...) launch nothing; every other op
  (casts, clones, elementwise ops, fills, reductions) is one kernel that reads each operand
  and writes its output once.

cuFFT's own kernels are closed source: a 2-D transform is modelled as ``cufft_passes``
kernels, each reading and writing the whole tensor (an H100 profile showed two for a 14x14
grid: one per axis). Its FLOPs (2.5 N log2 N per real transform) go to the FP32 bound.
Strided layout copies are marked (``permute_itemsize``): the GPU model gives them their
measured rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_VIEWS = {
    "view_as_complex", "view_as_real", "_conj", "select", "unsqueeze", "view", "permute",
    "expand", "as_strided", "slice", "alias", "_reshape_alias", "squeeze", "detach",
    "t", "transpose", "_unsafe_view",
}


@dataclass
class Kernel:
    name: str
    read_bytes: float
    write_bytes: float
    flops: float = 0.0
    note: str = ""
    # Element size of a strided layout copy (PyTorch's non-vectorised direct_copy_kernel,
    # measured far below the streaming rate); 0 for every other kernel.
    permute_itemsize: int = 0


@dataclass
class _Record:
    op: str
    inputs: list  # (sizes, strides, itemsize, numel)
    args: list
    output: tuple = field(default=None)


def _describe(t: torch.Tensor) -> tuple:
    return tuple(t.shape), tuple(t.stride()), t.element_size(), t.numel()


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.records: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        others = [a for a in args if not isinstance(a, torch.Tensor)]
        first = out[0] if isinstance(out, (tuple, list)) else out
        self.records.append(_Record(
            func.overloadpacket.__name__, [_describe(t) for t in tensors], others,
            _describe(first) if isinstance(first, torch.Tensor) else None))
        return out


def trace(direction: str, batch: int, h: int, w: int, c: int, dtype: torch.dtype) -> list:
    """ATen ops of the reference forward or backward on meta tensors of this shape."""
    from spectformer_kernels.reference import (spectral_gate_reference,
                                               spectral_gate_reference_backward)

    x = torch.empty((batch, h, w, c), dtype=dtype, device="meta")
    weight = torch.empty((h, w // 2 + 1, c, 2), dtype=torch.float32, device="meta")
    grad_y = torch.empty_like(x)
    recorder = _Recorder()
    with recorder:
        if direction == "fwd":
            spectral_gate_reference(x, weight)
        else:
            spectral_gate_reference_backward(grad_y, x, weight)
    return recorder.records


def _batch_dims_collapse(sizes, strides, signal_dims) -> bool:
    """Whether ``_exec_fft``'s reshape of the stride-sorted batch dims into one is a view."""
    batch = [d for d in range(len(sizes)) if d not in signal_dims and sizes[d] != 1]
    batch.sort(key=lambda d: -strides[d])
    return all(strides[a] == sizes[b] * strides[b] for a, b in zip(batch, batch[1:]))


def _contiguous_strides(sizes) -> tuple:
    strides, step = [], 1
    for n in reversed(sizes):
        strides.insert(0, step)
        step *= n
    return tuple(strides)


def _fft_flops(points: int, planes: int) -> float:
    return 2.5 * points * math.log2(max(points, 2)) * planes


def kernels(records: list, cufft_passes: int = 1) -> list:
    """The CUDA kernels behind a trace, with bytes read and written. cuFFT runs a 2-D
    transform in ``cufft_passes`` kernels; each pass after the first reads and writes the
    complex half spectrum once more."""
    out = []
    for r in records:
        if r.op in _VIEWS or r.output is None:
            continue
        if r.op == "_fft_r2c":
            (sizes, strides, item, numel), = r.inputs
            dims, normalization = r.args[0], r.args[1]
            out_numel = r.output[3]
            if not _batch_dims_collapse(sizes, strides, dims):
                out.append(Kernel("copy (_exec_fft reshape)", numel * item, numel * item,
                                  permute_itemsize=item))
            points = math.prod(sizes[d] for d in dims)
            extra = (cufft_passes - 1) * out_numel * 2 * item
            out.append(Kernel("cuFFT R2C", numel * item + extra, out_numel * 2 * item + extra,
                              _fft_flops(points, numel // points)))
            if normalization:
                out.append(Kernel("mul_ (normalization)", out_numel * 2 * item,
                                  out_numel * 2 * item))
        elif r.op == "_fft_c2r":
            (sizes, strides, item, numel), = r.inputs  # complex: item is 2 x real
            dims, normalization = r.args[0], r.args[1]
            out_numel = r.output[3]
            out.append(Kernel("clone (C2R input)", numel * item, numel * item,
                              permute_itemsize=item))
            if not _batch_dims_collapse(sizes, _contiguous_strides(sizes), dims):
                out.append(Kernel("copy (_exec_fft reshape)", numel * item, numel * item,
                                  permute_itemsize=item))
            points = math.prod(r.output[0][d] for d in dims)
            extra = (cufft_passes - 1) * numel * item
            out.append(Kernel("cuFFT C2R", numel * item + extra, out_numel * item // 2 + extra,
                              _fft_flops(points, out_numel // points)))
            if normalization:
                out.append(Kernel("mul_ (normalization)", out_numel * item // 2,
                                  out_numel * item // 2))
        else:
            reads = sum(numel * item for _, _, item, numel in r.inputs
                        if r.op != "copy_" or numel)
            if r.op == "copy_":
                reads = r.inputs[-1][3] * r.inputs[-1][2]
            writes = r.output[3] * r.output[2]
            out.append(Kernel(r.op, reads, writes))
    return out


def sequence(direction: str, batch: int, h: int, w: int, c: int, dtype: torch.dtype,
             cufft_passes: int = 1) -> list:
    return kernels(trace(direction, batch, h, w, c, dtype), cufft_passes)
