"""The op's errors blame the right thing: the input's layout, the environment variable."""

from __future__ import annotations

import pytest
import torch

import spectformer_kernels as sk


def test_channels_first_input_is_named_as_such():
    weight = torch.randn(14, 8, 32, 2)
    with pytest.raises(ValueError, match=r"looks channels-first.*permute\(0, 2, 3, 1\)"):
        sk.spectral_gate(torch.randn(2, 32, 14, 14), weight)
    with pytest.raises(ValueError, match="weight must have shape"):  # a real weight mismatch
        sk.spectral_gate(torch.randn(2, 14, 14, 32), torch.randn(14, 8, 16, 2))


def test_unknown_backend_from_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("SPECTFORMER_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"\$SPECTFORMER_BACKEND: unknown backend 'fastest'"):
        sk.spectral_gate(torch.randn(1, 4, 4, 2), torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match="^unknown backend 'fast'"):  # an argument stays as is
        sk.spectral_gate(torch.randn(1, 4, 4, 2), torch.randn(4, 3, 2, 2), backend="fast")
