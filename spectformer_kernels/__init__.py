"""Fast, exact spectral gating (GFNet's global filter, SpectFormer's spectral layer).

    >>> import torch
    >>> from spectformer_kernels import SpectralGatingNetwork
    >>> layer = SpectralGatingNetwork(dim=384, h=14, w=8)       # complex_weight (14, 8, 384, 2)
    >>> y = layer(torch.randn(2, 196, 384))                      # tokens (B, N, C) -> same
"""

from .backends import (
    Backend,
    BackendUnavailableError,
    available_backends,
    register_backend,
    registered_backends,
    resolve_backend,
)
from .dft import spectral_gate_dft, spectral_gate_dft_backward
from .reference import oracle, spectral_gate_reference, spectral_gate_reference_backward
from .ops import spectral_gate
from .module import SpectralGatingNetwork
from . import flops

register_backend(Backend(
    "reference", spectral_gate_reference, spectral_gate_reference_backward,
    "torch.fft rfft2 -> complex multiply -> irfft2, exactly as GFNet writes it",
))
register_backend(Backend(
    "dft", spectral_gate_dft, spectral_gate_dft_backward,
    "separable real DFT as matrix products in plain PyTorch (no complex dtype)",
))
# Optional kernel backends register themselves; each imports cleanly without its
# dependency and then reports itself unavailable, saying why.
from . import triton_backend  # noqa: E402,F401  registers "triton"
from . import cuda_backend  # noqa: E402,F401  registers "cuda", "cuda_cufftdx", "cuda_fused", "cuda_cufft"

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "SpectralGatingNetwork",
    "available_backends",
    "flops",
    "oracle",
    "register_backend",
    "registered_backends",
    "resolve_backend",
    "spectral_gate",
]
__version__ = "0.1.0"
