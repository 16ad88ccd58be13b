"""The ``cuda`` backend: the compiled extension ``spectformer_kernels._C`` (sources in ``csrc/``).

Two implementations live in the extension:

* ``cufftdx``: one kernel per direction for the model grids (square 7, 12, 14, 24, 28, 48, 56:
  ``CUFFTDX_GRIDS``), on cuFFTDx thread FFTs with compile-time H and W. A block owns a tile of
  channels and walks the batch: 16-byte loads of the channels-last tile, a real FFT along W
  (two channels as one complex FFT), a complex FFT along H, the gate, the inverses, one
  store; ``dK`` summed over fixed batch chunks in a fixed order.
* ``cufft``: any grid; one batched R2C and one C2R cuFFT plan (cached per shape and device). Built
  with cuFFT LTO callbacks (``CUFFT_LTO_CALLBACKS``; CUDA 13 toolkits), the channels-last
  gather/cast, the gate and the store run inside cuFFT's kernels; otherwise, or where
  callback plans cannot be made at run time (see ``cufft_callback_failure()``), or with
  ``SPECTFORMER_CUFFT_CALLBACKS=0`` in the environment, a gate kernel runs between the
  transforms, with transposing pack/unpack kernels for the channels-last layout.

The ``cuda`` backend picks one per shape (``cuda_path``); ``cuda_cufftdx`` and ``cuda_cufft``
force one, so benchmarks and tests can see each on its own. The extension registers its
own low-level ops ``torch.ops.spectformer_cuda.spectral_gate_forward/backward`` (CUDA and
Meta kernels, no autograd); these functions call them from inside the public
``spectformer::spectral_gate`` op, which keeps the one public schema, its fake kernel and
its autograd formula.

Without the built extension (CPU-only installs) this module still imports; the
backends then report why they are unavailable.
"""

from __future__ import annotations

import functools
import importlib
from typing import Optional

import torch

from .backends import Backend, Reason, register_backend
from .contract import KERNEL_DTYPES

_EXTENSION = f"{__package__}._C"
try:
    # Importing it registers torch.ops.spectformer_cuda.
    _C = importlib.import_module(_EXTENSION)
except ModuleNotFoundError as error:
    if error.name != _EXTENSION:
        raise
    _C = None
    _LOAD_ERROR: Optional[str] = (
        f"the compiled extension {_EXTENSION} is not built (building it needs a CUDA toolkit "
        "and a CUDA build of torch at install time)"
    )
except (ImportError, OSError) as error:  # built, but it or its CUDA libraries do not load
    _C = None
    _LOAD_ERROR = f"the compiled extension {_EXTENSION} does not load: {type(error).__name__}: {error}"
else:
    _LOAD_ERROR = None

# Grids the cuFFTDx kernels are compiled for (mirrored from the extension; the source's list
# where the extension is absent, so that the dispatch rule stays testable).
SOURCE_CUFFTDX_GRIDS = ((7, 7), (12, 12), (14, 14), (24, 24), (28, 28), (48, 48), (56, 56))
CUFFTDX_GRIDS = SOURCE_CUFFTDX_GRIDS if _C is None else tuple(
    tuple(g) for g in getattr(_C, "cufftdx_grids", ()))
# Whether the extension was built with the cuFFT LTO callbacks.
CUFFT_LTO_CALLBACKS = False if _C is None else bool(getattr(_C, "cufft_lto_callbacks", False))


def cufft_callback_failure() -> str:
    """Why cuFFT callback plans could not be made in this process ("" if they always could,
    or the extension has no callbacks); the ``cufft`` path then used its gate kernel."""
    return "" if _C is None or not CUFFT_LTO_CALLBACKS else str(_C.cufft_callback_failure())


def cuda_path(height: int, width: int) -> str:
    """The implementation the ``cuda`` backend runs for an ``(H, W)`` grid: the cuFFTDx kernel
    where one is compiled, else cuFFT. Measured on an H100 (device time, batch 128): cuFFTDx
    took 34 against 286 us at 14x14x384 bf16 forward, 154 against 522 at 28x28x192 and 343
    against 690 at 56x56x64; only the 56x56x64 fp32 forward+backward was about even (1823
    against 1730 us)."""
    return "cufftdx" if (height, width) in CUFFTDX_GRIDS else "cufft"


def availability() -> Reason:
    if _C is None:
        return _LOAD_ERROR
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def supports(x: torch.Tensor, weight: torch.Tensor) -> Reason:
    if x.device.type != "cuda":
        return f"it runs on CUDA tensors, x is on {x.device}"
    if x.dtype not in KERNEL_DTYPES:
        return f"it takes float32, bfloat16 or float16 x, got {x.dtype}"
    return None


def supports_cufftdx(x: torch.Tensor, weight: torch.Tensor) -> Reason:
    reason = supports(x, weight)
    if reason is None and (x.shape[1], x.shape[2]) not in CUFFTDX_GRIDS:
        grids = ", ".join(f"{h}x{w}" for h, w in CUFFTDX_GRIDS) or "none (built without cuFFTDx)"
        reason = f"the cuFFTDx kernels are compiled for the grids {grids}, got {x.shape[1]}x{x.shape[2]}"
    return reason


def _forward(x: torch.Tensor, weight: torch.Tensor, path: str) -> torch.Tensor:
    return torch.ops.spectformer_cuda.spectral_gate_forward(x, weight, path)


def _backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, path: str):
    return tuple(torch.ops.spectformer_cuda.spectral_gate_backward(grad_y, x, weight, path))


def spectral_gate_cuda(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _forward(x, weight, cuda_path(x.shape[1], x.shape[2]))


def spectral_gate_cuda_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor):
    return _backward(grad_y, x, weight, cuda_path(x.shape[1], x.shape[2]))


register_backend(Backend(
    "cuda", spectral_gate_cuda, spectral_gate_cuda_backward,
    "CUDA C++ extension: cuFFTDx fused kernel on the model grids, cuFFT with a fused gate on "
    "every other grid",
    availability, supports,
))
# One backend per path, so benchmarks and tests can run each on its own.
for _path, _description, _supports in (
    ("cufftdx", "cuFFTDx fused kernel only (the compiled model grids)", supports_cufftdx),
    ("cufft", "cuFFT R2C -> gate kernel -> C2R path only", supports),
):
    register_backend(Backend(
        f"cuda_{_path}", functools.partial(_forward, path=_path),
        functools.partial(_backward, path=_path),
        f"CUDA C++ extension, {_description}", availability, _supports,
    ))
