"""FLOP counting in GFNet's convention, independent of the backend.

GFNet and SpectFormer count a multiply-add as one FLOP (fvcore) and each ``rfft2`` /
``irfft2`` over an ``N = H*W`` grid as ``N * C * ceil(log2 N)`` per batch element; the
gate's elementwise product is not counted. The fused op is one forward and one inverse
transform, so it counts ``2 * B * N * C * ceil(log2 N)`` whichever backend runs it.

* ``fvcore_handles()``: handles for ``fvcore.nn.FlopCountAnalysis`` (the custom op and
  ``aten::fft_*``); ``flop_count_analysis(model, inputs)`` builds the analysis with them.
  fvcore is imported only there, so this module imports without it.
* ``torch.utils.flop_counter.FlopCounterMode`` learns the op too. It counts a multiply-add
  as two FLOPs, so its figures are twice fvcore's; the backward counts twice the forward.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.utils.flop_counter import register_flop_formula


def transform_flops(numel: int, n: int) -> int:
    """GFNet's FFT cost: ``numel * ceil(log2 n)`` for a real signal of ``numel`` elements
    transformed over a grid of ``n`` points (0 for ``n == 1``)."""
    return int(numel) * math.ceil(math.log2(n)) if n > 1 else 0


def spectral_gate_flops(x_shape: Iterable[int]) -> int:
    """fvcore-convention FLOPs of one spectral gate on ``x`` of shape ``(B, H, W, C)``."""
    b, h, w, c = (int(s) for s in x_shape)
    return 2 * transform_flops(b * h * w * c, h * w)


# -- fvcore -----------------------------------------------------------------------------

def _shape(value) -> list[int]:
    return list(value.type().sizes())


def _int_list(value):
    """A traced int or int-list argument (a constant or a ``prim::ListConstruct``)."""
    ivalue = value.toIValue()
    if ivalue is None and value.node().kind() == "prim::ListConstruct":
        ivalue = [item.toIValue() for item in value.node().inputs()]
    if isinstance(ivalue, int):  # the 1-D transforms take a single ``dim``
        ivalue = [ivalue]
    if isinstance(ivalue, (list, tuple)) and ivalue and all(isinstance(d, int) for d in ivalue):
        return list(ivalue)
    return None


def _fft_dims(inputs, ndim: int, default: list[int]) -> list[int]:
    """The ``dim`` argument of an ``aten::fft_*`` call (``(self, s|n, dim, norm)``)."""
    dims = _int_list(inputs[2]) if len(inputs) > 2 else None
    if dims is None:
        dims = default
    return [d % ndim for d in dims]


def _make_fft_handle(signal_is_output: bool, default_dims: list[int]):
    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        shape = _shape(outputs[0] if signal_is_output else inputs[0])
        dims = _fft_dims(inputs, len(shape), default_dims)
        n = math.prod(shape[d] for d in dims)
        return transform_flops(math.prod(shape), n)

    return handle


def _spectral_gate_handle(inputs: list[Any], outputs: list[Any]) -> int:
    return spectral_gate_flops(_shape(inputs[0]))


def fvcore_handles() -> dict[str, Any]:
    """Op handles for ``FlopCountAnalysis.set_op_handle``; real-signal side counted."""
    return {
        "spectformer::spectral_gate": _spectral_gate_handle,
        "aten::fft_rfft2": _make_fft_handle(False, [-2, -1]),
        "aten::fft_irfft2": _make_fft_handle(True, [-2, -1]),
        "aten::fft_fft2": _make_fft_handle(False, [-2, -1]),
        "aten::fft_ifft2": _make_fft_handle(False, [-2, -1]),
        "aten::fft_rfft": _make_fft_handle(False, [-1]),
        "aten::fft_irfft": _make_fft_handle(True, [-1]),
        "aten::fft_fft": _make_fft_handle(False, [-1]),
        "aten::fft_ifft": _make_fft_handle(False, [-1]),
    }


def flop_count_analysis(model: torch.nn.Module, inputs):
    """``fvcore.nn.FlopCountAnalysis`` of ``model(*inputs)`` with the spectral handles set."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("FLOP counting needs fvcore: pip install fvcore") from err
    analysis = FlopCountAnalysis(model, inputs)
    for op_name, handle in fvcore_handles().items():
        analysis.set_op_handle(op_name, handle)
    return analysis


# -- torch.utils.flop_counter (2 FLOPs per multiply-add) --------------------------------

@register_flop_formula(torch.ops.spectformer.spectral_gate)
def _spectral_gate_formula(x_shape, weight_shape, *args, **kwargs) -> int:
    return 2 * spectral_gate_flops(x_shape)


@register_flop_formula(torch.ops.spectformer.spectral_gate_backward)
def _spectral_gate_backward_formula(grad_shape, x_shape, weight_shape, *args, **kwargs) -> int:
    return 4 * spectral_gate_flops(x_shape)
