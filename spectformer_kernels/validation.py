"""Input checks shared by the functional op and the module: fail early, name the argument."""

from __future__ import annotations

import torch

X_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
WEIGHT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def expected_weight_shape(h: int, w: int, c: int) -> tuple[int, int, int, int]:
    return (h, w // 2 + 1, c, 2)


def check_spectral_gate_inputs(x, weight) -> None:
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
    expected = expected_weight_shape(h, w, c)
    if tuple(weight.shape) != expected and tuple(weight.shape) == expected_weight_shape(
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
