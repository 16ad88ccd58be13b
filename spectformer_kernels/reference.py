"""The ``reference`` backend: GFNet's ``torch.fft`` sequence, and the float64 oracle.

``spectral_gate_reference`` is the function exactly as GFNet writes it (compute in fp32,
or fp64 for fp64 inputs), returning the input dtype. Run on CPU in float64 with autograd it
is the oracle every backend is tested against (``oracle``).

Its explicit backward uses the adjoint identities of the ortho transforms:
``dY = c_k * rfft2(dy)`` (``c_k`` = 2 for interior W bins, 1 for DC/Nyquist),
``dK = sum_b conj(X) dY`` and ``dx = irfft2(dY * conj(K) / c_k)``.
"""

from __future__ import annotations

import torch

from .backends import Backend, register_backend
from .contract import compute_dtype, half_spectrum_weights


def spectral_gate_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    _, h, w, _ = x.shape
    dtype = compute_dtype(x.dtype)
    spec = torch.fft.rfft2(x.to(dtype), dim=(1, 2), norm="ortho")
    k = torch.view_as_complex(weight.to(dtype).contiguous())
    y = torch.fft.irfft2(spec * k, s=(h, w), dim=(1, 2), norm="ortho")
    return y.to(x.dtype)


def spectral_gate_reference_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _, h, w, _ = x.shape
    dtype = compute_dtype(x.dtype)
    c = half_spectrum_weights(w, dtype, x.device)[:, None]  # broadcasts over (B, H, Wk, C)
    k = torch.view_as_complex(weight.to(dtype).contiguous())
    d_gated = torch.fft.rfft2(grad_out.to(dtype), dim=(1, 2), norm="ortho") * c
    spec = torch.fft.rfft2(x.to(dtype), dim=(1, 2), norm="ortho")
    # conj_physical, not conj: run inside an AOTAutograd-compiled graph (torch.compile,
    # opcheck), the lazy conjugate view of conj() lost its conjugate bit (torch 2.13) and
    # gave silently wrong gradients.
    grad_k = (spec.conj_physical() * d_gated).sum(0)
    grad_x = torch.fft.irfft2(d_gated * k.conj_physical() / c, s=(h, w), dim=(1, 2), norm="ortho")
    return grad_x.to(x.dtype), torch.view_as_real(grad_k)


def oracle(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor | None = None):
    """Float64 CPU result (and, with ``grad_out``, float64 autograd gradients).

    Returns ``y`` or ``(y, grad_x, grad_weight)``, all float64 on the CPU.
    """
    x64 = x.detach().to("cpu", torch.float64).requires_grad_(grad_out is not None)
    w64 = weight.detach().to("cpu", torch.float64).requires_grad_(grad_out is not None)
    with torch.enable_grad():
        y = spectral_gate_reference(x64, w64)
    if grad_out is None:
        return y.detach()
    gx, gw = torch.autograd.grad(y, (x64, w64), grad_out.detach().to("cpu", torch.float64))
    return y.detach(), gx, gw


register_backend(Backend(
    "reference", spectral_gate_reference, spectral_gate_reference_backward,
    "torch.fft rfft2 -> complex multiply -> irfft2, exactly as GFNet writes it",
    widens_16bit=True,
))
