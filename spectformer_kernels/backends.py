"""Backend registry: which implementations exist, which run here, and what ``auto`` picks.

A backend is a pair of plain functions ``forward(x, weight) -> y`` and
``backward(grad_y, x, weight) -> (grad_x, grad_weight)`` on a validated channels-last
``x (B, H, W, C)`` (any strides, ``B >= 1``) and ``weight (H, W//2+1, C, 2)`` in the compute
dtype (``contract.compute_dtype``), with ``grad_y`` in ``x``'s dtype: the op settles all of
that, and the output layout and dtypes, once for every backend (``ops.py``). Plus two questions: can it run on this
machine at all (``availability``) and can it take these particular inputs (``supports``).
Both answer ``None`` for yes, or a sentence saying why not. Each backend module calls
``register_backend`` when imported (``unregister_backend`` removes one); the op, the module, the tests and the benchmarks pick them up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

Reason = Optional[str]

ENV_VAR = "SPECTFORMER_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]
    description: str
    availability: Callable[[], Reason] = lambda: None
    supports: Callable[[torch.Tensor, torch.Tensor], Reason] = lambda x, weight: None
    # True if bf16/fp16 inputs are converted to fp32 before any arithmetic: under autocast
    # the op then hands it an fp32 ``x`` unrounded (rounding it first would only lose bits).
    # False for kernels that read 16-bit inputs as they are, where the narrow I/O is the point.
    widens_16bit: bool = False


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run on this machine or these inputs."""


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend; backend modules call this when they are imported."""
    if backend.name == "auto":
        raise ValueError("'auto' is reserved for automatic selection")
    _REGISTRY[backend.name] = backend


def unregister_backend(name: str) -> Backend:
    """Remove a registered backend and return it (``register_backend`` puts it back)."""
    get_backend(name)  # an unknown name fails, listing the valid ones
    return _REGISTRY.pop(name)


def registered_backends() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(repr(n) for n in ["auto", *_REGISTRY])
        raise ValueError(f"unknown backend {name!r}; valid backends are {valid}") from None


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, ``"auto"`` first."""
    return ["auto", *(n for n, b in _REGISTRY.items() if b.availability() is None)]


def requested_backend(backend: Optional[str]) -> str:
    """The argument if given, else ``$SPECTFORMER_BACKEND``, else ``"auto"``."""
    from_env = backend is None
    if backend is None:
        backend = os.environ.get(ENV_VAR, "").strip() or "auto"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    if backend != "auto":
        try:
            get_backend(backend)  # unknown names fail here, listing the valid ones
        except ValueError as exc:
            if from_env:  # say where the name came from
                raise ValueError(f"${ENV_VAR}: {exc}") from None
            raise
    return backend


def _usable(name: str, x: torch.Tensor, weight: torch.Tensor) -> Reason:
    backend = _REGISTRY.get(name)
    if backend is None:
        return "it is not registered"
    return backend.availability() or backend.supports(x, weight)


# ``auto``'s choice. Returns the backends to try in order; the first usable one wins, and
# ``reference`` always can.
# CPU, from measurements (2 threads, batch 16, benchmarks/results/spectral_gate_cpu.csv):
# ``dft`` beats ``reference`` at every benchmark grid, 7x7 to 56x56, in fp32 and bf16,
# forward and forward+backward, in most runs (1.2-3.6x, median of interleaved per-round
# ratios), but not in every run on a noisy machine (56x56x96: 0.6-1.0x late in full runs,
# 1.2-2.1x alone; README, "CPU results"). Above 64x64 nothing was measured and its
# O(H + W) work per element will lose to the FFT's O(log HW) somewhere: ``reference`` there.
# CUDA: the order comes from the static model (``python -m benchmarks.gpu_model``, H100
# SXM), which regenerates ``cuda_auto_table``: per shape and dtype the backends by predicted
# forward+backward time, never one predicted slower than ``reference``. Where an H100
# measured a different order, ``CUDA_MEASURED`` below overrides the model's entry for that
# exact shape (the model table stays generated).
DFT_MAX_TOKENS_CPU = 64 * 64

# Measured on an H100 (README, "GPU results"; benchmarks/results/spectral_gate_gpu.csv and
# kernel_profile_gpu.txt), fp32 at 14x14: cuFFTDx beats Triton both per call (forward+backward
# 479 against 887 us at 14x14x384, 405 against 906 us at 14x14x256) and in device time
# (153 against 260 us at 14x14x384, the one profiled), where the model predicted Triton first.
CUDA_MEASURED: dict = {
    (14, 14, 256, "fp32"): ("cuda_cufftdx", "triton", "cuda_cufft", "reference"),
    (14, 14, 384, "fp32"): ("cuda_cufftdx", "triton", "cuda_cufft", "reference"),
}


def cuda_candidates(h: int, w: int, c: int, dtype: torch.dtype) -> tuple:
    """The measured CUDA order for this shape (``CUDA_MEASURED``), else the order from
    ``cuda_auto_table``; a shape the model's table lacks takes the entry of the nearest grid
    (same dtype, closest H*W, then closest C)."""
    from .cuda_auto_table import CHOICE

    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    measured = CUDA_MEASURED.get((h, w, c, name))
    if measured is not None:
        return measured
    entries = [(key, order) for key, order in CHOICE.items() if key[3] == name]
    if not entries:
        return ("reference",)
    exact = dict(entries).get((h, w, c, name))
    if exact is not None:
        return exact
    _, order = min(entries, key=lambda e: (abs(e[0][0] * e[0][1] - h * w), e[0][:2] != (h, w),
                                           abs(e[0][2] - c)))
    return order


def auto_candidates(x: torch.Tensor, weight: torch.Tensor) -> tuple[str, ...]:
    _, h, w, c = x.shape
    if x.device.type == "cuda":
        order = cuda_candidates(h, w, c, x.dtype)
        return order if order[-1] == "reference" else (*order, "reference")
    if h * w <= DFT_MAX_TOKENS_CPU:
        return ("dft", "reference")
    return ("reference",)


def resolve_backend(backend: Optional[str], x: torch.Tensor, weight: torch.Tensor) -> str:
    """Concrete backend name for these inputs; raises if an explicit choice cannot run."""
    name = requested_backend(backend)
    if name != "auto":
        reason = _usable(name, x, weight)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {name!r} cannot run here: {reason}. "
                f"Available backends: {', '.join(available_backends())}"
            )
        return name
    for candidate in auto_candidates(x, weight):
        if _usable(candidate, x, weight) is None:
            return candidate
    return "reference"
