"""FLOP counting in GFNet's convention: ``count_flops(model, input_size)``.

fvcore counts one multiply-add as one FLOP (linear, conv, matmul, norms); the spectral
gate and ``torch.fft`` calls count ``N * C * ceil(log2 N)`` per transform (handles from
``spectformer_kernels.flops``); attention counts its two matrix products. Elementwise work
(activations, residual adds, the gate's product, pooling means, dropout) is not counted,
as in the published figures; those operators are ignored explicitly so that fvcore
reports no unsupported operator.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from spectformer_kernels.flops import flop_count_analysis

# Elementwise or data-movement operators the convention leaves out.
IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div",
    "aten::div_",
    "aten::neg", "aten::gelu", "aten::relu", "aten::relu_", "aten::softmax", "aten::softshrink",
    "aten::mean", "aten::max", "aten::dropout", "aten::pad", "aten::constant_pad_nd",
    "aten::real", "aten::imag", "aten::complex", "aten::bernoulli_",
)


def _shape(value) -> list[int]:
    return list(value.type().sizes())


def attention_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: ``q k^T`` plus ``attn v``."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch_heads = math.prod(q[:-2])
    n_q, d = q[-2:]
    n_k, d_v = k[-2], v[-1]
    return batch_heads * n_q * n_k * (d + d_v)


def flop_analysis(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224), *,
                  attention_products: bool = True):
    """The ``fvcore.nn.FlopCountAnalysis`` behind ``count_flops`` (per-module breakdowns)."""
    if len(input_size) != 4:
        raise ValueError(f"input_size must be (B, C, H, W), got {tuple(input_size)}")
    param = next(model.parameters())
    images = torch.randn(*input_size, device=param.device, dtype=param.dtype)
    analysis = flop_count_analysis(model, (images,))
    for op in IGNORED_OPS:
        analysis.set_op_handle(op, None)
    analysis.set_op_handle("aten::scaled_dot_product_attention",
                           attention_flops if attention_products else None)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224), *,
                attention_products: bool = True) -> int:
    """FLOPs of one forward pass on ``input_size`` images, in GFNet's convention.

    ``attention_products=False`` leaves out the attention matrix products (the convention
    of the hierarchical SpectFormer figures). The model is traced in eval mode (no dropout
    or stochastic depth) and left in the mode it was in. Raises ``RuntimeError`` if fvcore
    met an operator that has no handle, so no cost is ever dropped silently.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = flop_analysis(model, input_size, attention_products=attention_products)
            total = analysis.total()
    finally:
        model.train(was_training)
    unsupported = analysis.unsupported_ops()
    if unsupported:
        raise RuntimeError(f"fvcore has no FLOP handle for: {dict(unsupported)}")
    return int(total)
