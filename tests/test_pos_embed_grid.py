"""Checkpoint position embeddings are resized by grid shape, never by token count alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spectformer


def _positions(h: int, w: int, dim: int) -> torch.Tensor:
    # Position (i, j) holds i in even channels and j in odd ones: a transposed or scrambled
    # grid is visible at once.
    rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    grid = torch.stack([rows, cols] * (dim // 2), dim=-1)
    return grid.reshape(1, h * w, dim)


def test_transposed_grid_with_the_same_token_count_is_resized():
    source = spectformer.create_model("spectformer_digits", img_size=(32, 48))  # 8x12 grid
    state = source.state_dict()
    state["pos_embed"] = _positions(8, 12, state["pos_embed"].shape[-1])
    target = spectformer.create_model("spectformer_digits", img_size=(48, 32))  # 12x8 grid
    spectformer.load_checkpoint(target, state)
    expected = F.interpolate(state["pos_embed"].reshape(1, 8, 12, -1).permute(0, 3, 1, 2),
                             size=(12, 8), mode="bicubic", align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 96, -1)
    torch.testing.assert_close(target.pos_embed.detach(), expected)


def test_same_grid_loads_unchanged():
    source = spectformer.create_model("spectformer_digits", img_size=(32, 48))
    target = spectformer.create_model("spectformer_digits", img_size=(32, 48))
    spectformer.load_checkpoint(target, source.state_dict())
    assert torch.equal(target.pos_embed, source.pos_embed)


def test_grid_that_cannot_be_told_is_an_error():
    source = spectformer.create_model("spectformer_digits", img_size=(32, 48))
    # Without spectral filters nothing says whether 96 positions were 8x12 or 12x8.
    state = {k: v for k, v in source.state_dict().items() if "complex_weight" not in k}
    target = spectformer.create_model("spectformer_digits", img_size=(48, 32))
    with pytest.raises(ValueError, match="cannot tell the token grid.*96 positions"):
        spectformer.load_checkpoint(target, state, strict=False)
