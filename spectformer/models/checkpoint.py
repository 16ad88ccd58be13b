"""``load_checkpoint``: official-layout checkpoints into zoo models, at any resolution."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

# Training checkpoints nest the weights under one of these keys (official vanilla: "model",
# hierarchical: "state_dict"), next to optimizer state, epoch and the argparse namespace.
CONTAINER_KEYS = ("model", "state_dict")
DDP_PREFIX = "module."


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The tensor dict inside a training checkpoint, with any DDP ``module.`` prefix removed."""
    state = checkpoint
    while isinstance(state, Mapping):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            "checkpoint must be a state dict of tensors, or hold one under "
            f"{' or '.join(repr(k) for k in CONTAINER_KEYS)}"
        )
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def resize_pos_embed(pos_embed: torch.Tensor, new_grid, old_grid=None) -> torch.Tensor:
    """``(1, h*w, D)`` learned positions on an ``old_grid`` (default: square) ->
    ``(1, h'*w', D)``, bicubic."""
    _, n, dim = pos_embed.shape
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"pos_embed with {n} positions is not a square grid; cannot resize it")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"pos_embed with {n} positions does not fill a {old_grid[0]}x{old_grid[1]} grid")
    grid = pos_embed.reshape(1, *old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)


def resize_complex_weight(weight: torch.Tensor, new_hw) -> torch.Tensor:
    """``(h, w, C, 2)`` filter seen as 2C channels on an (h, w) grid -> ``(h', w', C, 2)``,
    bicubic with ``align_corners=True`` (GFNet's fine-tuning recipe)."""
    h, w, c, two = weight.shape
    grid = weight.reshape(1, h, w, c * two).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_hw), mode="bicubic", align_corners=True)
    return grid.permute(0, 2, 3, 1).reshape(*new_hw, c, two).to(weight.dtype)


def _token_grid(model: nn.Module, num_tokens: int) -> tuple[int, int]:
    grid = getattr(model, "grid_size", None)
    if grid is not None and grid[0] * grid[1] == num_tokens:
        return tuple(grid)
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"cannot tell the token grid of a model with {num_tokens} positions")
    return side, side


def _checkpoint_grid(state: Mapping[str, torch.Tensor], num_tokens: int,
                     target_grid: tuple[int, int]) -> tuple[int, int]:
    """The token grid a checkpoint's ``pos_embed`` of ``num_tokens`` positions was trained on.

    The token count alone cannot tell 8x12 from 12x8, so the spectral filters decide: a
    ``complex_weight`` of shape ``(h, W//2+1, C, 2)`` on the same grid fixes ``h`` and hence
    ``W``. Without filters, a square count on a square model is taken as square; anything
    else is ambiguous and an error rather than a silently scrambled embedding.
    """
    grids = set()
    for key, value in state.items():
        if key.split(".")[-1] == "complex_weight" and value.dim() == 4:
            h, half_w = value.shape[0], value.shape[1]
            if num_tokens % h == 0 and (num_tokens // h) // 2 + 1 == half_w:
                grids.add((h, num_tokens // h))
    if len(grids) == 1:
        return grids.pop()
    side = math.isqrt(num_tokens)
    if not grids and side * side == num_tokens and target_grid[0] == target_grid[1]:
        return side, side
    found = ", ".join(f"{h}x{w}" for h, w in sorted(grids)) or "no spectral filter to tell"
    raise ValueError(
        f"cannot tell the token grid of the checkpoint's pos_embed ({num_tokens} positions; "
        f"{found}) for a {target_grid[0]}x{target_grid[1]} model; resize it before loading"
    )


def adapt_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize ``pos_embed`` and ``complex_weight`` tensors to ``model``'s token grids.

    ``pos_embed`` is resized whenever its grid differs, even at an equal token count (an
    8x12 grid into a 12x8 model); ``complex_weight`` when its shape differs. Anything else
    is passed through for ``load_state_dict`` to accept or reject.
    """
    targets = model.state_dict()
    adapted = {}
    for key, value in state.items():
        target = targets.get(key)
        if (target is not None and key.split(".")[-1] == "pos_embed" and value.dim() == 3
                and target.dim() == 3 and value.shape[-1] == target.shape[-1]):
            new_grid = _token_grid(model, target.shape[1])
            old_grid = _checkpoint_grid(state, value.shape[1], new_grid)
            if old_grid != new_grid:
                value = resize_pos_embed(value, new_grid, old_grid)
        elif (target is not None and value.shape != target.shape
              and key.split(".")[-1] == "complex_weight" and value.dim() == 4
              and value.shape[2:] == target.shape[2:]):
            value = resize_complex_weight(value, target.shape[:2])
        adapted[key] = value
    return adapted


def read_checkpoint(path: Union[str, os.PathLike], weights_only: bool = True):
    """``torch.load`` onto the CPU, allowing the argparse namespace official checkpoints
    store; a missing, empty or unreadable file is an error naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # truncated, text, another format: torch raises many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {str(path)!r} is not a readable PyTorch checkpoint "
                         f"(truncated or corrupt?): {reason}") from exc


def load_checkpoint(model: nn.Module, path_or_state_dict: Union[str, os.PathLike, Mapping],
                    strict: bool = True, weights_only: bool = True):
    """Load a checkpoint (a path, or an already loaded dict) into ``model``.

    Unwraps ``"model"`` / ``"state_dict"`` containers and DDP ``module.`` prefixes, and, when
    the checkpoint was trained at another resolution, resizes ``pos_embed`` (bicubic) and
    every ``complex_weight`` (bicubic, ``align_corners=True``) to the model's grids.
    ``weights_only=True`` unpickles nothing but tensors and plain containers (the argparse
    namespace official checkpoints store is allowed too). Returns ``load_state_dict``'s
    result (missing and unexpected keys).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        checkpoint = read_checkpoint(path_or_state_dict, weights_only=weights_only)
    elif isinstance(path_or_state_dict, Mapping):
        checkpoint = path_or_state_dict
    else:
        raise TypeError(
            "path_or_state_dict must be a file path or a state dict, "
            f"got {type(path_or_state_dict).__name__}"
        )
    state = adapt_state_dict(unwrap_state_dict(checkpoint), model)
    return model.load_state_dict(state, strict=strict)
