"""The token mixers the SpectFormer paper compares, behind one constructor.

Every layer maps tokens ``(B, N, C)`` on an ``(H, W)`` grid to tokens of the same shape
and dtype: ``layer(x, spatial_size=(H, W))``.

* ``fgn``: spectral gating (GFNet's global filter), ``spectformer_kernels.SpectralGatingNetwork``,
  so the kernel backend is switchable and checkpoints keep ``complex_weight``.
* ``fn``: FNet-style parameter-free mixing, the real part of the 2D DFT over the grid.
* ``afno``: AFNO-style block-diagonal complex MLP shared across frequencies, with soft
  shrinkage and its own skip connection.
* ``wgn``: one-level 2D Haar DWT, a learnable per-channel weight on each sub-band, inverse DWT.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectformer_kernels import SpectralGatingNetwork
# The op's compute dtype serves these layers too: torch.fft has no bf16/fp16 kernels on
# every device, so they transform in fp32 (fp64 for fp64 inputs).
from spectformer_kernels.contract import compute_dtype, half_spectrum_size

SPECTRAL_LAYERS = ("fgn", "fn", "afno", "wgn")


def _grid(x: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    b, n, c = x.shape
    h, w = spatial_size
    if h * w != n:
        raise ValueError(f"spatial_size={tuple(spatial_size)} holds {h * w} tokens but x has N={n}")
    return x.reshape(b, h, w, c)


class FourierMixing(nn.Module):
    """FNet on the token grid: ``Re(fft2(x))`` over (H, W), orthonormal, no parameters."""

    def forward(self, x: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        grid = _grid(x, spatial_size)
        mixed = torch.fft.fft2(grid.to(compute_dtype(grid.dtype)), dim=(1, 2), norm="ortho").real
        return mixed.to(x.dtype).reshape(x.shape)


class AdaptiveFourierMixing(nn.Module):
    """AFNO: per frequency, a two-layer complex MLP that is block-diagonal over channels.

    ``rfft2`` -> ``o = ReLU(W1 X + b1)`` (ReLU on real and imaginary parts separately) ->
    ``W2 o + b2`` -> soft-shrink -> ``irfft2`` -> plus the layer's input.
    """

    def __init__(self, dim: int, num_blocks: int = 8, hidden_factor: int = 1,
                 sparsity_threshold: float = 0.01):
        super().__init__()
        if dim % num_blocks:
            raise ValueError(f"afno needs the width {dim} to be a multiple of num_blocks={num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        hidden = self.block_size * hidden_factor
        # Axis 0 holds (real, imaginary) parts, as the reference AFNO stores them.
        self.w1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, self.block_size, hidden))
        self.b1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, hidden))
        self.w2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, hidden, self.block_size))
        self.b2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, self.block_size))

    def extra_repr(self) -> str:
        return f"num_blocks={self.num_blocks}, block_size={self.block_size}"

    @staticmethod
    def _complex_linear(re, im, weight, bias):
        def mm(t, w):
            return torch.einsum("...nd,nde->...ne", t, w)
        return (mm(re, weight[0]) - mm(im, weight[1]) + bias[0],
                mm(im, weight[0]) + mm(re, weight[1]) + bias[1])

    def forward(self, x: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        grid = _grid(x, spatial_size)
        _, h, w, _ = grid.shape
        spec = torch.fft.rfft2(grid.to(compute_dtype(grid.dtype)), dim=(1, 2), norm="ortho")
        re = spec.real.reshape(*spec.shape[:3], self.num_blocks, self.block_size)
        im = spec.imag.reshape(re.shape)
        w1, b1, w2, b2 = (p.to(re.dtype) for p in (self.w1, self.b1, self.w2, self.b2))
        re, im = self._complex_linear(re, im, w1, b1)
        re, im = self._complex_linear(F.relu(re), F.relu(im), w2, b2)
        re = F.softshrink(re, self.sparsity_threshold).reshape(spec.shape)
        im = F.softshrink(im, self.sparsity_threshold).reshape(spec.shape)
        mixed = torch.fft.irfft2(torch.complex(re, im), s=(h, w), dim=(1, 2), norm="ortho")
        return (mixed.to(x.dtype) + grid).reshape(x.shape)


def haar_dwt2(x: torch.Tensor) -> torch.Tensor:
    """One-level orthonormal 2D Haar DWT of ``(B, H, W, C)`` with even H, W.

    Returns ``(4, B, H/2, W/2, C)``: the LL, LH (horizontal detail), HL (vertical detail)
    and HH sub-bands.
    """
    a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]  # top-left, top-right of each 2x2 cell
    c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]  # bottom-left, bottom-right
    return 0.5 * torch.stack((a + b + c + d, a - b + c - d, a + b - c - d, a - b - c + d))


def haar_idwt2(bands: torch.Tensor) -> torch.Tensor:
    """Inverse of ``haar_dwt2``: ``(4, B, h, w, C)`` -> ``(B, 2h, 2w, C)``."""
    ll, lh, hl, hh = bands
    a, b = ll + lh + hl + hh, ll - lh + hl - hh
    c, d = ll + lh - hl - hh, ll - lh - hl + hh
    bsz, h, w, ch = ll.shape
    top = torch.stack((a, b), dim=3).reshape(bsz, h, 2 * w, ch)  # interleave columns
    bottom = torch.stack((c, d), dim=3).reshape(bsz, h, 2 * w, ch)
    return 0.5 * torch.stack((top, bottom), dim=2).reshape(bsz, 2 * h, 2 * w, ch)


class WaveletGating(nn.Module):
    """Haar DWT -> per-channel weight on each of the 4 sub-bands -> inverse DWT.

    ``subband_weight`` (4, C) starts at one, i.e. the layer starts as the identity (the
    Haar transform is orthonormal) and learns which scales to amplify or suppress. Odd
    grids are zero-padded by one row/column for the transform and cropped back.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.subband_weight = nn.Parameter(torch.ones(4, dim))

    def forward(self, x: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        grid = _grid(x, spatial_size)
        _, h, w, _ = grid.shape
        padded = F.pad(grid, (0, 0, 0, w % 2, 0, h % 2))
        bands = haar_dwt2(padded) * self.subband_weight[:, None, None, None, :].to(x.dtype)
        return haar_idwt2(bands)[:, :h, :w].reshape(x.shape)


def make_spectral_layer(kind: str, dim: int, grid: Sequence[int],
                        backend: Optional[str] = None) -> nn.Module:
    """A token mixer of type ``kind`` (one of ``SPECTRAL_LAYERS``) for a ``grid = (H, W)``."""
    if kind == "fgn":
        h, w = grid
        return SpectralGatingNetwork(dim, h=h, w=half_spectrum_size(w), backend=backend)
    if kind == "fn":
        return FourierMixing()
    if kind == "afno":
        return AdaptiveFourierMixing(dim)
    if kind == "wgn":
        return WaveletGating(dim)
    raise ValueError(f"spectral_layer must be one of {', '.join(SPECTRAL_LAYERS)}; got {kind!r}")


class BackendSwitchMixin:
    """``model.set_backend(name)``: switch the kernel of every spectral gating layer."""

    def set_backend(self, name: Optional[str]):
        """Set ``.backend`` on every ``SpectralGatingNetwork`` (``None`` = ``auto``/env var).

        Weights are untouched; other mixers (``fn``, ``afno``, ``wgn``) have no backend.
        Returns the model, for chaining.
        """
        for module in self.modules():
            if isinstance(module, SpectralGatingNetwork):
                module.backend = name  # the setter rejects unknown names
        return self
