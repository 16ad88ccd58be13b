"""``torch.library`` registration and the functional entry point ``spectral_gate``.

The op ``spectformer::spectral_gate(x, weight, backend)`` has a fake kernel (so
``torch.compile`` and ``torch.export`` trace it without running it) and a registered autograd
formula that calls ``spectformer::spectral_gate_backward``, itself an op with a fake kernel.
Both dispatch to the backend named by their string argument.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import backends
from .dft import spectral_gate_dft
from .validation import check_spectral_gate_inputs


def _no_autocast(x: torch.Tensor):
    """Backends choose their own precision: an enclosing autocast region must not turn the
    fp32 DFT matmuls inside them into bf16 ones."""
    return torch.autocast(device_type=x.device.type, enabled=False)


@torch.library.custom_op("spectformer::spectral_gate", mutates_args=())
def spectral_gate_op(x: torch.Tensor, weight: torch.Tensor, backend: str) -> torch.Tensor:
    name = backends.resolve_backend(backend, x, weight)
    if x.shape[0] == 0:  # an empty batch is valid; some FFT libraries reject it
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    with _no_autocast(x):
        return backends.get_backend(name).forward(x, weight).contiguous()


@spectral_gate_op.register_fake
def _spectral_gate_fake(x, weight, backend):
    check_spectral_gate_inputs(x, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("spectformer::spectral_gate_backward", mutates_args=())
def spectral_gate_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    name = backends.resolve_backend(backend, x, weight)
    if x.shape[0] == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format), torch.zeros_like(weight)
    with _no_autocast(x):
        grad_x, grad_weight = backends.get_backend(name).backward(grad_out, x, weight)
    return grad_x.contiguous(), grad_weight.contiguous()


@spectral_gate_backward_op.register_fake
def _spectral_gate_backward_fake(grad_out, x, weight, backend):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    x, weight, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.backend = backend


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight = spectral_gate_backward_op(grad_out, x, weight, ctx.backend)
    return (
        grad_x if ctx.needs_input_grad[0] else None,
        grad_weight if ctx.needs_input_grad[1] else None,
        None,
    )


spectral_gate_op.register_autograd(_backward, setup_context=_setup_context)


def spectral_gate(
    x: torch.Tensor, weight: torch.Tensor, *, backend: Optional[str] = None
) -> torch.Tensor:
    """Spectral gating: ``irfft2(rfft2(x, norm="ortho") * K, s=(H, W), norm="ortho")``.

    Args:
        x: real ``(B, H, W, C)`` tensor (fp32, bf16, fp16 or fp64), any strides.
        weight: ``(H, W//2+1, C, 2)`` real tensor holding the complex filter ``K``
            (last axis = real, imaginary), as GFNet's ``complex_weight``.
        backend: a name from ``available_backends()``; ``None`` means
            ``$SPECTFORMER_BACKEND`` if set, else ``"auto"``.

    Returns:
        ``(B, H, W, C)`` in ``x.dtype``, differentiable in ``x`` and ``weight``. Inside an
        autocast region an fp32 ``x`` is first cast to the autocast dtype, as a matmul's
        inputs would be.
    """
    check_spectral_gate_inputs(x, weight)
    if torch.is_autocast_enabled(x.device.type) and x.dtype == torch.float32:
        # Like a matmul under autocast: run (and return) in the autocast dtype. The
        # backends still accumulate in fp32 and the weight stays fp32.
        x = x.to(torch.get_autocast_dtype(x.device.type))
    name = backends.resolve_backend(backend, x, weight)
    if torch.onnx.is_in_onnx_export():
        # ONNX has no custom-op kernel to call: export the matmul form, which every
        # runtime executes (and which computes the same function).
        return spectral_gate_dft(x, weight)
    return spectral_gate_op(x, weight, name)
