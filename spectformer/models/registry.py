"""timm-style model registry: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def default_cfg(**overrides) -> dict:
    """The evaluation/pre-processing config every model carries as ``model.default_cfg``."""
    cfg = {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    cfg.update(overrides)
    return cfg


def build_model(cls: Callable[..., nn.Module], defaults: dict, overrides: dict,
                **cfg_overrides) -> nn.Module:
    """``cls(**defaults, **overrides)`` carrying its ``default_cfg``: the input size and class
    count it was built for, plus ``cfg_overrides`` (first conv, normalisation, crop)."""
    from .layers import to_2tuple

    config = {**defaults, **overrides}
    model = cls(**config)
    img = to_2tuple(config.get("img_size", 224), "img_size")
    model.default_cfg = default_cfg(num_classes=model.num_classes,
                                    input_size=(config.get("in_chans", 3), *img), **cfg_overrides)
    return model


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``builder(**overrides) -> nn.Module`` under its function name."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"a model named {name!r} is already registered")
    _BUILDERS[name] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides replace its configuration values.

    Common overrides: ``num_classes``, ``img_size``, ``in_chans``, ``drop_path_rate``,
    ``spectral_layer`` (``fgn``/``fn``/``afno``/``wgn``), ``backend``; vanilla models also
    take ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``alpha``. The model's
    ``default_cfg`` follows the overrides (input size, number of classes).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    builder = _BUILDERS.get(name)
    if builder is None:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}. Registered models: {', '.join(list_models())}"
        )
    return builder(**overrides)
