"""Building blocks shared by the vanilla and hierarchical models (no timm dependency)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


def drop_path_or_identity(p: float) -> nn.Module:
    # nn.Identity when 0 keeps the module tree (and its repr) identical to the official one.
    return DropPath(p) if p > 0.0 else nn.Identity()


def stochastic_depth_rates(rate: float, depth: int) -> list[float]:
    """Linearly rising rates over all blocks, as ``torch.linspace(0, rate, depth)``."""
    return torch.linspace(0, rate, depth, device="cpu").tolist()


class Mlp(nn.Module):
    """fc1 -> GELU -> (dropout) -> fc2 -> (dropout)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def check_heads(dim: int, num_heads: int) -> int:
    if not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads must be a positive divisor of the width {dim}, got {num_heads!r}")
    return dim // num_heads


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over ``(B, heads, N, d)``; fused where the device has it."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)


class FusedQKVAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (vanilla SpectFormer / DeiT)."""

    def __init__(self, dim: int, num_heads: int, drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = check_heads(dim, num_heads)
        self.drop = drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, self.drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class SplitQKVAttention(nn.Module):
    """Multi-head self-attention with separate ``q`` and ``kv`` projections (SpectFormer-H)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = check_heads(dim, num_heads)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, spatial_size=None) -> torch.Tensor:
        return split_qkv_attention(self, x, x)


def split_qkv_attention(layer: nn.Module, queries: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``queries (B, M, C)`` attend over ``x (B, N, C)`` through ``layer``'s ``q``, ``kv`` and
    ``proj`` projections and ``num_heads`` heads; returns ``(B, M, C)``."""
    b, n, c = x.shape
    m = queries.shape[1]
    q = layer.q(queries).reshape(b, m, layer.num_heads, layer.head_dim).transpose(1, 2)
    k, v = layer.kv(x).reshape(b, n, 2, layer.num_heads, layer.head_dim).permute(2, 0, 3, 1, 4)
    return layer.proj(attention(q, k, v, 0.0).transpose(1, 2).reshape(b, m, c))


def check_per_stage(stages: int, **values) -> None:
    """Each of ``values`` (a sequence per argument name) gives one value per stage."""
    for arg, value in values.items():
        if len(value) != stages:
            raise ValueError(f"{arg} must give one value for each of the {stages} stages, "
                             f"got {value!r}")


def classifier(num_features: int, num_classes: int) -> nn.Module:
    """A linear classifier, or none for ``num_classes=0`` (the pooled features come out).
    Not initialised: a model initialises all its layers in one pass."""
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


class ReplaceableHead:
    """``reset_classifier(num_classes)``: a new, initialised ``head`` on ``num_features``."""

    def new_head(self, num_classes: int) -> nn.Module:
        head = classifier(self.num_features, num_classes)
        init_vit_weights(head)
        return head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = self.new_head(num_classes)


def init_vit_weights(module: nn.Module) -> None:
    """Linear: trunc-normal std 0.02, zero bias; LayerNorm: ones and zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_conv_fan_out(module: nn.Module) -> None:
    """He-normal on fan-out for convolutions (the hierarchical models' convention)."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def to_2tuple(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair
