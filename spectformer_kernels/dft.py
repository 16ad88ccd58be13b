"""The ``dft`` backend: the spectral gate as separable real matrix products.

No complex dtype and no FFT op anywhere, so it runs wherever matmul runs: CPU and GPU,
``torch.compile``, ONNX export, bf16/fp16 inputs (computed in fp32). The backward is written
from the transposed matrices (the adjoint of the same linear map), not by autograd.

Shapes: ``x`` is ``(B, H, W, C)``; the half spectrum is held as ``(B, H, 2, Wk, C)`` with
``Wk = W // 2 + 1`` and the middle axis holding (real, imaginary), so that the (h, part)
pair is one contiguous axis of length 2H for the H-axis matrices.
"""

from __future__ import annotations

import torch

from .dft_matrices import DFTMatrices, dft_matrices


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (gradcheck); every other input is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spectrum(x: torch.Tensor, mats: DFTMatrices) -> torch.Tensor:
    """Forward rfft2 (ortho) of ``x (B, H, W, C)`` -> ``(B, H, 2, Wk, C)``."""
    b, h, w, c = x.shape
    wk = w // 2 + 1
    along_w = torch.matmul(mats.w_forward, x.reshape(b * h, w, c))  # (B*H, 2Wk, C)
    along_h = torch.matmul(mats.h_forward, along_w.view(b, 2 * h, wk * c))
    return along_h.view(b, h, 2, wk, c)


def _inverse(spec: torch.Tensor, mats: DFTMatrices) -> torch.Tensor:
    """irfft2 (ortho, CPU semantics) of ``(B, H, 2, Wk, C)`` -> ``(B, H, W, C)``."""
    b, h, _, wk, c = spec.shape
    w = mats.w_inverse.shape[0]
    along_h = torch.matmul(mats.h_inverse, spec.reshape(b, 2 * h, wk * c))
    along_w = torch.matmul(mats.w_inverse, along_h.view(b * h, 2 * wk, c))  # (B*H, W, C)
    return along_w.view(b, h, w, c)


def _complex_mul(spec: torch.Tensor, k_re: torch.Tensor, k_im: torch.Tensor) -> torch.Tensor:
    """``spec * (k_re + i k_im)`` with spec ``(B, H, 2, Wk, C)`` and k ``(H, Wk, C)``."""
    s_re, s_im = spec[:, :, 0], spec[:, :, 1]
    return torch.stack((s_re * k_re - s_im * k_im, s_re * k_im + s_im * k_re), dim=2)


def spectral_gate_dft(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    dtype = compute_dtype(x.dtype)
    mats = dft_matrices(h, w, dtype, x.device)
    k = weight.to(dtype)
    gated = _complex_mul(_spectrum(x.to(dtype), mats), k[..., 0], k[..., 1])
    return _inverse(gated, mats).to(x.dtype)


def spectral_gate_dft_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of the forward map: returns ``(grad_x, grad_weight)``."""
    b, h, w, c = x.shape
    wk = w // 2 + 1
    dtype = compute_dtype(x.dtype)
    mats = dft_matrices(h, w, dtype, x.device)
    k = weight.to(dtype)
    k_re, k_im = k[..., 0], k[..., 1]

    # Gradient reaching the gated spectrum Y: transpose of the two inverse stages.
    d_along_w = torch.matmul(mats.w_inverse.T, grad_out.to(dtype).reshape(b * h, w, c))
    d_gated = torch.matmul(mats.h_inverse.T, d_along_w.view(b, 2 * h, wk * c)).view(b, h, 2, wk, c)

    # dK = sum_b conj(X) * dY, with X recomputed rather than saved.
    spec = _spectrum(x.to(dtype), mats)
    s_re, s_im = spec[:, :, 0], spec[:, :, 1]
    d_re, d_im = d_gated[:, :, 0], d_gated[:, :, 1]
    grad_k_re = (s_re * d_re + s_im * d_im).sum(0)
    grad_k_im = (s_re * d_im - s_im * d_re).sum(0)
    grad_weight = torch.stack((grad_k_re, grad_k_im), dim=-1).to(weight.dtype)

    # dX = dY * conj(K), then the transposes of the two forward stages.
    d_spec = _complex_mul(d_gated, k_re, -k_im)
    d_along_h = torch.matmul(mats.h_forward.T, d_spec.view(b, 2 * h, wk * c))
    grad_x = torch.matmul(mats.w_forward.T, d_along_h.view(b * h, 2 * wk, c))
    return grad_x.view(b, h, w, c).to(x.dtype), grad_weight
