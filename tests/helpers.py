"""Shared test utilities: fresh random inputs, relative error, the accuracy bars."""

from __future__ import annotations

import secrets

import torch

from spectformer_kernels import oracle

# Relative error against the float64 oracle (README, "Backends").
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-12}


# Grids every backend test covers: size 1, odd, non-square, non-power-of-two sides, and channel
# counts that are not a multiple of any block size; test files add their own cases.
AWKWARD_SHAPES = [
    (2, 1, 1, 3),
    (3, 5, 9, 7),
    (2, 7, 6, 5),
    (2, 11, 4, 13),
    (2, 14, 14, 33),
    (1, 12, 16, 10),
    (1, 28, 28, 17),
    (1, 56, 56, 9),
]


def fresh_seed() -> int:
    """A new seed every run (never the same inputs twice); printed in failure messages."""
    return secrets.randbits(31)


def make_inputs(shape, dtype=torch.float32, device="cpu", seed=None):
    """Random ``x``, ``weight`` (fp32, GFNet-like scale and unit scale mixed) and ``grad_y``."""
    b, h, w, c = shape
    gen = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    x = torch.randn(b, h, w, c, generator=gen).to(device=device, dtype=dtype)
    weight = torch.randn(h, w // 2 + 1, c, 2, generator=gen).to(device)
    grad = torch.randn(b, h, w, c, generator=gen).to(device=device, dtype=dtype)
    return x, weight, grad


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def assert_matches_oracle(x, weight, grad, outputs, label: str) -> None:
    """``outputs = (y, grad_x, grad_weight)`` of the gate at ``(x, weight)`` with output
    gradient ``grad``, each within the accuracy bar of ``x``'s dtype of the float64 oracle.
    A NaN is an element the kernel never wrote (kernel tests poison their outputs with NaN)."""
    tol = TOLERANCE[x.dtype]
    for name, got, want in zip(("y", "dx", "dK"), outputs, oracle(x, weight, grad)):
        assert torch.isfinite(got.float()).all(), f"{label} {name}: unwritten (NaN) elements"
        err = rel_err(got, want)
        assert err <= tol, f"{label} {name}: rel err {err:.2e} > {tol}"


def check_bf16_autocast_and_channels_last(model: torch.nn.Module, x: torch.Tensor) -> None:
    """A model in eval mode runs under bf16 autocast close to fp32, and channels-last inputs
    and weights give the fp32 result."""
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert rel_err(low, ref) < 5e-2
    model = model.to(memory_format=torch.channels_last)
    assert rel_err(model(x.to(memory_format=torch.channels_last)), ref) < 1e-5
