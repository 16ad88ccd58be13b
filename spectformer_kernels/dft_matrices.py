"""The real DFT matrices every matmul-based backend is built from.

The spectral gate is a fixed real-linear map per channel, so the two transforms can be
written as real matrix products. Matrices are built in float64 (angles reduced with
integer arithmetic so large sizes stay exact) and cached per (H, W, dtype, device).

Layouts (ortho scaling folded in):

* ``w_forward``  ``(2*Wk, W)``: rows ``[Re Fw; Im Fw]`` with ``Fw[k, w] = exp(-2i pi k w / W) / sqrt(W)``
  and ``Wk = W // 2 + 1``; applied along W it gives the real and imaginary half spectra.
* ``h_forward``  ``(2*H, 2*H)``: the complex DFT along H written as a real matrix acting on
  (h, re/im) interleaved rows, i.e. index ``2*h + part``.
* ``h_inverse``  ``(2*H, 2*H)``: the same for ``conj(Fh)``.
* ``w_inverse``  ``(W, 2*Wk)``: ``[Gw_re, Gw_im]``, the real inverse along W with CPU
  ``irfft`` semantics: interior bins counted twice, the imaginary parts of the DC and
  (W even) Nyquist bins ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .contract import half_spectrum_size, half_spectrum_weights, self_conjugate_bins


@dataclass(frozen=True)
class DFTMatrices:
    w_forward: torch.Tensor  # (2*Wk, W)
    h_forward: torch.Tensor  # (2*H, 2*H)
    h_inverse: torch.Tensor  # (2*H, 2*H)
    w_inverse: torch.Tensor  # (W, 2*Wk)


def _angles(n_out: int, n_in: int, period: int) -> torch.Tensor:
    """2*pi*(i*j mod period)/period as float64, exact for any size."""
    i = torch.arange(n_out, dtype=torch.int64)[:, None]
    j = torch.arange(n_in, dtype=torch.int64)[None, :]
    return (2.0 * math.pi / period) * torch.remainder(i * j, period).to(torch.float64)


def _complex_as_real(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """(n, n) complex matrix -> (2n, 2n) real matrix on interleaved (index, re/im) rows."""
    n_out, n_in = re.shape
    m = torch.empty(n_out, 2, n_in, 2, dtype=re.dtype)
    m[:, 0, :, 0] = re
    m[:, 0, :, 1] = -im
    m[:, 1, :, 0] = im
    m[:, 1, :, 1] = re
    return m.reshape(2 * n_out, 2 * n_in)


@lru_cache(maxsize=None)
def _float64_matrices(h: int, w: int) -> DFTMatrices:
    wk = half_spectrum_size(w)
    theta_w = _angles(wk, w, w)  # (Wk, W)
    scale_w = 1.0 / math.sqrt(w)
    w_forward = torch.cat([torch.cos(theta_w), -torch.sin(theta_w)], 0) * scale_w

    theta_h = _angles(h, h, h)
    scale_h = 1.0 / math.sqrt(h)
    fh_re, fh_im = torch.cos(theta_h) * scale_h, -torch.sin(theta_h) * scale_h
    h_forward = _complex_as_real(fh_re, fh_im)
    h_inverse = _complex_as_real(fh_re, -fh_im)

    # Real inverse along W: y[w] = sum_k c_k (Re Z_k cos - Im Z_k sin) / sqrt(W).
    weights = half_spectrum_weights(w)
    theta = theta_w.T  # (W, Wk)
    gw_re = torch.cos(theta) * weights * scale_w
    gw_im = -torch.sin(theta) * weights * scale_w
    gw_im[:, list(self_conjugate_bins(w))] = 0.0  # irfft ignores Im of DC and Nyquist
    w_inverse = torch.cat([gw_re, gw_im], 1)
    return DFTMatrices(w_forward, h_forward, h_inverse, w_inverse)


_device_cache: dict[tuple, DFTMatrices] = {}


def dft_matrices(h: int, w: int, dtype: torch.dtype, device: torch.device) -> DFTMatrices:
    """Cached DFT matrices for an (h, w) token grid, in ``dtype`` on ``device``."""
    key = (h, w, dtype, torch.device(device))
    mats = _device_cache.get(key)
    if mats is None:
        base = _float64_matrices(h, w)
        mats = DFTMatrices(
            *(t.to(device=device, dtype=dtype).contiguous() for t in
              (base.w_forward, base.h_forward, base.h_inverse, base.w_inverse))
        )
        _device_cache[key] = mats
    return mats


@lru_cache(maxsize=None)
def _float64_dense_maps(h: int, w: int) -> tuple:
    """The whole 2-D transform pair of a small grid as two real matrices (float64).

    ``forward`` ``(H*W, 2*H*Wk)`` maps a row-major grid (index ``h*W + w``) to the half
    spectrum with real and imaginary parts interleaved (index ``(h'*Wk + k)*2 + part``);
    ``inverse`` ``(2*H*Wk, H*W)`` maps such a spectrum back with the CPU ``irfft2`` rules.
    Both are the separable matrices above, composed."""
    base = _float64_matrices(h, w)
    wk = half_spectrum_size(w)
    fw_re, fw_im = base.w_forward[:wk], base.w_forward[wk:]  # (Wk, W)
    fh_re, fh_im = base.h_forward[0::2, 0::2], base.h_forward[1::2, 0::2]  # (H', H)
    gh_re, gh_im = base.h_inverse[0::2, 0::2], base.h_inverse[1::2, 0::2]  # (H, H')
    gw_re, gw_im = base.w_inverse[:, :wk], base.w_inverse[:, wk:]  # (W, Wk)
    forward = torch.stack([
        torch.einsum("ab,kw->bwak", fh_re, fw_re) - torch.einsum("ab,kw->bwak", fh_im, fw_im),
        torch.einsum("ab,kw->bwak", fh_re, fw_im) + torch.einsum("ab,kw->bwak", fh_im, fw_re),
    ], -1).reshape(h * w, 2 * h * wk)
    # y[h, w] = sum over (h', k) of gw_re[w, k] Re Z[h, k] + gw_im[w, k] Im Z[h, k], with
    # Z = Gh G: the coefficients of Re G[h', k] and Im G[h', k].
    inverse = torch.stack([
        torch.einsum("wk,ba->akbw", gw_re, gh_re) + torch.einsum("wk,ba->akbw", gw_im, gh_im),
        torch.einsum("wk,ba->akbw", gw_im, gh_re) - torch.einsum("wk,ba->akbw", gw_re, gh_im),
    ], 2).reshape(2 * h * wk, h * w)
    return forward, inverse


def dense_maps(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """Cached ``(forward, inverse)`` dense maps of an (h, w) grid in ``dtype`` on ``device``."""
    key = ("dense", h, w, dtype, torch.device(device))
    maps = _device_cache.get(key)
    if maps is None:
        maps = tuple(t.to(device=device, dtype=dtype).contiguous()
                     for t in _float64_dense_maps(h, w))
        _device_cache[key] = maps
    return maps
