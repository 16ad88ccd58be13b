"""The op's contract in one place: accepted dtypes, shape rules, the half-spectrum weights
and the compute dtype. The op, every backend and the model zoo's other spectral layers take
these rules from here (the CUDA sources keep their own copy in ``csrc/gate_rules.cuh``).
The semantics behind them are in ``docs/design.md``, "The operation".
"""

from __future__ import annotations

import torch

# What ``spectral_gate`` accepts. fp64 is for gradcheck and the oracle; the kernels skip it.
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
WEIGHT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# What the compiled (Triton, CUDA) kernels take.
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the transforms run in: fp64 stays fp64 (gradcheck), everything else is
    computed (accumulated) in fp32, whatever the storage dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def half_spectrum_size(w: int) -> int:
    """``Wk``: the frequencies a real transform of ``w`` points keeps, ``W//2 + 1``."""
    return w // 2 + 1


def weight_shape(h: int, w: int, c: int) -> tuple[int, int, int, int]:
    """The filter's shape for an ``(h, w)`` grid of ``c`` channels: ``(H, W//2+1, C, 2)``."""
    return (h, half_spectrum_size(w), c, 2)


def self_conjugate_bins(w: int) -> tuple[int, ...]:
    """Half-spectrum columns equal to their own mirror: DC, and Nyquist when ``w`` is even.
    A real inverse ignores their imaginary parts (CPU ``irfft`` semantics)."""
    return (0, w // 2) if w % 2 == 0 and w > 1 else (0,)


def half_spectrum_weights(w: int, dtype: torch.dtype = torch.float64,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """``c_k`` of shape ``(Wk,)``: how often column ``k`` stands in the full spectrum, 1 for
    the self-conjugate bins and 2 for the others (each also stands for its mirror)."""
    c = torch.full((half_spectrum_size(w),), 2.0, dtype=dtype, device=device)
    c[list(self_conjugate_bins(w))] = 1.0
    return c


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_inputs(x, weight) -> None:
    """Fail early with a ``TypeError``/``ValueError`` naming the argument and what it expects."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if x.dtype not in X_DTYPES:
        raise TypeError(
            f"x must be a real floating tensor ({_dtype_names(X_DTYPES)}), got dtype {x.dtype}"
        )
    if weight.dtype not in WEIGHT_DTYPES:
        raise TypeError(
            "weight must be a real floating tensor holding (real, imag) in its last axis "
            f"({_dtype_names(WEIGHT_DTYPES)}), got dtype {weight.dtype}"
        )
    if x.dim() != 4:
        raise ValueError(
            f"x must have shape (B, H, W, C) (channels-last token grid), got shape {tuple(x.shape)}"
        )
    _, h, w, c = x.shape
    if h < 1 or w < 1 or c < 1:
        raise ValueError(f"x must have H, W, C >= 1, got shape {tuple(x.shape)}")
    expected = weight_shape(h, w, c)
    if tuple(weight.shape) != expected and tuple(weight.shape) == weight_shape(
            x.shape[2], x.shape[3], x.shape[1]):
        # The weight fits x read as (B, C, H, W): the input's layout is wrong, not the weight.
        raise ValueError(
            f"x of shape {tuple(x.shape)} looks channels-first (B, C, H, W); the op takes a "
            "channels-last grid (B, H, W, C): pass x.permute(0, 2, 3, 1)"
        )
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"weight must have shape (H, W//2+1, C, 2) = {expected} for x of shape "
            f"{tuple(x.shape)}, got shape {tuple(weight.shape)}"
        )
    if x.device != weight.device:
        raise ValueError(
            f"x and weight must be on the same device, got x on {x.device} and weight on {weight.device}"
        )
