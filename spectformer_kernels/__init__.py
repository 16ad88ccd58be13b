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
    unregister_backend,
)
# Each backend module registers its backends when imported, in this order; the optional
# kernel backends import cleanly without their dependency and then report why they cannot run.
from .reference import oracle, spectral_gate_reference, spectral_gate_reference_backward
from .dft import spectral_gate_dft, spectral_gate_dft_backward
from . import triton_backend  # noqa: F401  "triton"
from . import cuda_backend  # noqa: F401  "cuda", "cuda_cufftdx", "cuda_cufft"
from .ops import spectral_gate
from .module import SpectralGatingNetwork
from . import flops

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
    "unregister_backend",
]
__version__ = "0.1.0"
