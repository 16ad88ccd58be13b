"""GFNet-H: the hierarchical, all-spectral GFNet (``GFNetPyramid`` of the official GFNet code).

Four stages at strides 4, 8, 16 and 32 (56, 28, 14 and 7 tokens a side at 224), every block
a spectral block. Layout and parameter names follow the official model, so its checkpoints
(``{"model": state_dict}``) load with ``strict=True``:

* ``patch_embed.0.proj``: 4x4 stride-4 patch embedding; ``patch_embed.{1,2,3}.proj``: 2x2
  stride-2 convolutions between stages (no norm after either);
* ``pos_embed`` ``(1, N1, D0)``: learned positions on the stage-1 grid only;
* ``blocks.{stage}.{j}``: ``norm1``, ``filter.complex_weight`` ``(h, h//2+1, D, 2)``,
  ``norm2``, ``mlp.fc1``/``mlp.fc2`` and, with layer scale (the official default),
  ``gamma`` ``(D,)``: ``x + drop_path(gamma * mlp(norm2(filter(norm1(x)))))``;
* ``norm``, then the mean over tokens and ``head``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .layers import (
    ReplaceableHead, check_per_stage, classifier, init_vit_weights, stochastic_depth_rates,
)
from .registry import build_model, register_model
from .spectral import BackendSwitchMixin
from .vanilla import PatchEmbed, SpectralBlock

STAGES = 4


class LayerScaleSpectralBlock(SpectralBlock):
    """A spectral block whose residual branch is scaled per channel by a learned ``gamma``."""

    def __init__(self, dim, grid, mlp_ratio, drop, drop_path, spectral_layer, backend,
                 init_values: float):
        super().__init__(dim, grid, mlp_ratio, drop, drop_path, spectral_layer, backend)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor, grid) -> torch.Tensor:
        branch = self.mlp(self.norm2(self.filter(self.norm1(x), grid)))
        return x + self.drop_path(self.gamma * branch)


class DownLayer(nn.Module):
    """Tokens on a grid -> 2x2 stride-2 convolution -> tokens on the halved grid."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        b, _, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *grid)
        return self.proj(x).flatten(2).transpose(1, 2)


class GFNetH(BackendSwitchMixin, ReplaceableHead, nn.Module):
    """Hierarchical GFNet. ``layer_scale=False`` is the official ``no_layerscale`` variant.

    Stage grids follow the convolutions: ``img_size // 4``, then halved (rounding down) per
    stage, as the official ``sizes = [56, 28, 14, 7] * img_size // 224``. The spectral
    filters are sized for ``img_size``; ``load_checkpoint`` resizes them (and ``pos_embed``)
    from a checkpoint trained at another resolution.
    """

    def __init__(
        self,
        img_size=224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 3, 10, 3),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale: bool = True,
        init_values: float = 1e-3,
        spectral_layer: str = "fgn",
        backend: Optional[str] = None,
    ):
        super().__init__()
        check_per_stage(STAGES, embed_dims=embed_dims, depths=depths, mlp_ratios=mlp_ratios)
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dims[-1]
        self.spectral_layer = spectral_layer
        self.layer_scale = layer_scale

        stem = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0])
        self.img_size, self.in_chans = stem.img_size, in_chans
        self.patch_embed = nn.ModuleList([stem])
        grid = stem.grid_size
        self.grid_sizes = [grid]
        for i in range(1, STAGES):
            self.patch_embed.append(DownLayer(embed_dims[i - 1], embed_dims[i]))
            grid = tuple(s // 2 for s in grid)
            if min(grid) < 1:
                raise ValueError(f"img_size {self.img_size} is too small for {STAGES} stages "
                                 f"(stride {patch_size * 2 ** (STAGES - 1)})")
            self.grid_sizes.append(grid)
        self.grid_size = self.grid_sizes[0]  # where pos_embed lives (checkpoint resizing)
        self.pos_embed = nn.Parameter(torch.zeros(1, stem.num_patches, embed_dims[0]))
        self.pos_drop = nn.Dropout(drop_rate)

        rates = stochastic_depth_rates(drop_path_rate, sum(depths))
        self.blocks = nn.ModuleList()
        for i in range(STAGES):
            stage = nn.ModuleList()
            for j in range(depths[i]):
                args = (embed_dims[i], self.grid_sizes[i], mlp_ratios[i], drop_rate,
                        rates[sum(depths[:i]) + j], spectral_layer, backend)
                stage.append(LayerScaleSpectralBlock(*args, init_values=init_values) if layer_scale
                             else SpectralBlock(*args))
            self.blocks.append(stage)
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.head = classifier(embed_dims[-1], num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)  # convolutions keep PyTorch's default, as in the official code

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled features ``(B, D3)`` (final norm, then mean over stage-4 tokens)."""
        x = self.pos_drop(self.patch_embed[0](x) + self.pos_embed)
        for i in range(STAGES):
            if i > 0:
                x = self.patch_embed[i](x, self.grid_sizes[i - 1])
            for block in self.blocks[i]:
                x = block(x, self.grid_sizes[i])
        return self.norm(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _build(defaults: dict, overrides: dict) -> GFNetH:
    return build_model(GFNetH, defaults, overrides, first_conv="patch_embed.0.proj")


# Configurations of the official training script (``--arch gfnet-h-ti / -s / -b``).
@register_model
def gfnet_h_ti(**overrides) -> GFNetH:
    return _build(dict(embed_dims=(64, 128, 256, 512), depths=(3, 3, 10, 3),
                       drop_path_rate=0.1, init_values=1e-3), overrides)


@register_model
def gfnet_h_s(**overrides) -> GFNetH:
    return _build(dict(embed_dims=(96, 192, 384, 768), depths=(3, 3, 10, 3),
                       drop_path_rate=0.2, init_values=1e-5), overrides)


@register_model
def gfnet_h_b(**overrides) -> GFNetH:
    return _build(dict(embed_dims=(96, 192, 384, 768), depths=(3, 3, 27, 3),
                       drop_path_rate=0.4, init_values=1e-6), overrides)
