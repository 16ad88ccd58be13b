"""Vanilla (isotropic) SpectFormer and, with ``alpha = depth``, GFNet.

Layout and parameter names follow the official SpectFormer code, so its checkpoints load
with ``strict=True``: ``patch_embed.proj``, ``pos_embed`` (no class token), ``blocks.{i}``
(the first ``alpha`` spectral, the rest attention), ``norm``, ``head``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import (
    FusedQKVAttention, Mlp, ReplaceableHead, classifier, drop_path_or_identity, init_vit_weights,
    stochastic_depth_rates, to_2tuple,
)
from .registry import build_model, register_model
from .spectral import BackendSwitchMixin, make_spectral_layer


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> linear embedding, as tokens ``(B, N, D)``."""

    def __init__(self, img_size, patch_size, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = to_2tuple(img_size, "img_size")
        self.patch_size = to_2tuple(patch_size, "patch_size")
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(
                f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}"
            )
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[2:]) != self.img_size or x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"expected images (B, {self.proj.in_channels}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got shape {tuple(x.shape)}; build the model with img_size=... (and resize a "
                "checkpoint with load_checkpoint) to use another resolution"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class SpectralBlock(nn.Module):
    """``x + drop_path(mlp(norm2(filter(norm1(x)))))``: filter and MLP in one residual."""

    def __init__(self, dim, grid, mlp_ratio, drop, drop_path, spectral_layer, backend):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.filter = make_spectral_layer(spectral_layer, dim, grid, backend)
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, grid) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(self.filter(self.norm1(x), grid))))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: attention and MLP, each with its own residual."""

    def __init__(self, dim, num_heads, mlp_ratio, drop, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.attn = FusedQKVAttention(dim, num_heads, drop)

    def forward(self, x: torch.Tensor, grid) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SpectFormer(BackendSwitchMixin, ReplaceableHead, nn.Module):
    """Isotropic SpectFormer: patch embedding + ``alpha`` spectral blocks + attention blocks.

    ``alpha=0`` is a DeiT-like pure-attention model without class token, ``alpha=depth``
    is GFNet. The spectral filters are sized for the token grid of ``img_size``; to run at
    another resolution build the model for it and resize weights with ``load_checkpoint``.
    """

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        alpha: int = 4,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        spectral_layer: str = "fgn",
        backend: Optional[str] = None,
    ):
        super().__init__()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        if not isinstance(alpha, int) or not 0 <= alpha <= depth:
            raise ValueError(f"alpha (number of spectral blocks) must be in [0, depth={depth}], got {alpha!r}")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.alpha = alpha
        self.spectral_layer = spectral_layer

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = stochastic_depth_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            SpectralBlock(embed_dim, self.grid_size, mlp_ratio, drop_rate, rates[i], spectral_layer, backend)
            if i < alpha else
            AttentionBlock(embed_dim, num_heads, mlp_ratio, drop_rate, rates[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = classifier(embed_dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled features ``(B, D)`` (final norm, then mean over tokens)."""
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for block in self.blocks:
            x = block(x, self.grid_size)
        return self.norm(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _build(name: str, defaults: dict, overrides: dict, all_spectral: bool = False) -> SpectFormer:
    if all_spectral and "alpha" not in overrides:
        # GFNet stays all-spectral when its depth changes.
        defaults = {**defaults, "alpha": overrides.get("depth", defaults["depth"])}
    return build_model(SpectFormer, defaults, overrides, **_CFG_EXTRAS.get(name, {}))


_CFG_EXTRAS = {
    # 8x8 grey digits upscaled to 32x32: one channel, no crop.
    "spectformer_digits": {"mean": (0.5,), "std": (0.5,), "crop_pct": 1.0},
}


@register_model
def spectformer_t(**overrides) -> SpectFormer:
    return _build("spectformer_t", dict(embed_dim=256, depth=12, num_heads=4, alpha=4), overrides)


@register_model
def spectformer_xs(**overrides) -> SpectFormer:
    return _build("spectformer_xs", dict(embed_dim=384, depth=12, num_heads=6, alpha=4), overrides)


@register_model
def spectformer_s(**overrides) -> SpectFormer:
    return _build("spectformer_s", dict(embed_dim=384, depth=19, num_heads=6, alpha=4,
                                        drop_path_rate=0.15), overrides)


@register_model
def spectformer_b(**overrides) -> SpectFormer:
    return _build("spectformer_b", dict(embed_dim=512, depth=19, num_heads=8, alpha=4,
                                        drop_path_rate=0.25), overrides)


# GFNet: the same skeleton with every block spectral (alpha = depth).
@register_model
def gfnet_ti(**overrides) -> SpectFormer:
    return _build("gfnet_ti", dict(embed_dim=256, depth=12, num_heads=4), overrides,
                  all_spectral=True)


@register_model
def gfnet_xs(**overrides) -> SpectFormer:
    return _build("gfnet_xs", dict(embed_dim=384, depth=12, num_heads=6), overrides,
                  all_spectral=True)


@register_model
def gfnet_s(**overrides) -> SpectFormer:
    return _build("gfnet_s", dict(embed_dim=384, depth=19, num_heads=6,
                                  drop_path_rate=0.15), overrides, all_spectral=True)


@register_model
def gfnet_b(**overrides) -> SpectFormer:
    return _build("gfnet_b", dict(embed_dim=512, depth=19, num_heads=8,
                                  drop_path_rate=0.25), overrides, all_spectral=True)


@register_model
def spectformer_digits(**overrides) -> SpectFormer:
    """A small SpectFormer for scikit-learn's 8x8 digits upscaled to 32x32 (1 channel)."""
    return _build("spectformer_digits", dict(img_size=32, patch_size=4, in_chans=1, num_classes=10,
                                             embed_dim=96, depth=6, num_heads=3, alpha=2), overrides)
