"""``SpectralGatingNetwork``: the drop-in replacement for GFNet's / SpectFormer's filter."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .backends import requested_backend
from .ops import spectral_gate


class SpectralGatingNetwork(nn.Module):
    """Global filter layer: FFT over the token grid, learned complex gate, inverse FFT.

    Holds ``complex_weight`` of shape ``(h, w, dim, 2)``, initialised ``randn * 0.02``: the
    exact name, shape and layout of GFNet and SpectFormer checkpoints, so their state dicts
    load unchanged. Mind the names, kept from GFNet's ``GlobalFilter``: ``h`` is the grid's
    height ``H`` but ``w`` is the filter's width, the number of kept frequencies
    ``W//2 + 1`` (``contract.half_spectrum_size``), not the grid's width ``W``: a 14x14 grid
    takes ``w=8``. Everywhere else in the project ``W`` is the grid's width.

    ``forward(x, spatial_size=None)`` takes tokens ``(B, N, C)`` (a square ``sqrt(N)`` grid
    unless ``spatial_size=(H, W)`` is given) or a grid ``(B, H, W, C)``, and returns the same
    layout and dtype.
    """

    def __init__(self, dim: int, h: int = 14, w: int = 8, backend: Optional[str] = None):
        super().__init__()
        for arg, value in (("dim", dim), ("h", h), ("w", w)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        self.dim, self.h, self.w = dim, h, w
        self.complex_weight = nn.Parameter(torch.randn(h, w, dim, 2, dtype=torch.float32) * 0.02)
        self.backend = backend

    @property
    def backend(self) -> Optional[str]:
        return self._backend

    @backend.setter
    def backend(self, name: Optional[str]) -> None:
        if name is not None:
            requested_backend(name)  # unknown names fail now, not at the first forward
        self._backend = name

    def extra_repr(self) -> str:
        return f"dim={self.dim}, h={self.h}, w={self.w}, backend={self._backend or 'auto'}"

    def forward(self, x: torch.Tensor, spatial_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 4:
            return spectral_gate(x, self.complex_weight, backend=self._backend)
        if x.dim() != 3:
            raise ValueError(
                f"x must be tokens (B, N, C) or a grid (B, H, W, C), got shape {tuple(x.shape)}"
            )
        b, n, c = x.shape
        if spatial_size is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"x has N={n} tokens, which is not a square grid; pass spatial_size=(H, W)"
                )
            h, w = side, side
        else:
            if len(spatial_size) != 2:
                raise ValueError(f"spatial_size must be (H, W), got {spatial_size!r}")
            h, w = (int(s) for s in spatial_size)
            if h * w != n:
                raise ValueError(
                    f"spatial_size={tuple(spatial_size)} holds {h * w} tokens but x has N={n}"
                )
        y = spectral_gate(x.reshape(b, h, w, c), self.complex_weight, backend=self._backend)
        return y.reshape(b, n, c)
