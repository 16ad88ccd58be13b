"""Hierarchical SpectFormer (SpectFormer-H): four stages, spectral early, attention late.

Layout and parameter names follow the official code, so its checkpoints load with
``strict=True``: ``patch_embed{1..4}`` (a convolutional stem, then strided convolutions),
``block{1..4}.{j}`` with the token mixer at ``attn`` (a spectral gating layer in the
spectral stages, ``q``/``kv``/``proj`` attention in the others) and a depthwise-conv MLP at
``mlp``, ``norm{1..4}``, ``post_network.0`` (class attention), ``head`` and ``aux_head``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .layers import (
    Mlp, ReplaceableHead, SplitQKVAttention, check_heads, check_per_stage, drop_path_or_identity,
    init_conv_fan_out, init_vit_weights, split_qkv_attention, stochastic_depth_rates, to_2tuple,
)
from .registry import build_model, register_model
from .spectral import BackendSwitchMixin, make_spectral_layer

# Block norms use eps 1e-6; the stem and downsampling norms keep LayerNorm's default 1e-5,
# as the official model does.
BLOCK_NORM_EPS = 1e-6


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class Stem(nn.Module):
    """Stride-4 convolutional stem: 7x7/2 and two 3x3 conv-BN-ReLU, then a 3x3/2 projection."""

    def __init__(self, in_chans: int, hidden: int, out_dim: int):
        super().__init__()
        layers = []
        for c_in, k, s in ((in_chans, 7, 2), (hidden, 3, 1), (hidden, 3, 1)):
            layers += [nn.Conv2d(c_in, hidden, k, stride=s, padding=k // 2, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    @staticmethod
    def out_size(size: int) -> int:
        return _conv_out(_conv_out(size, 7, 2, 3), 3, 2, 1)

    def forward(self, x: torch.Tensor):
        x = self.proj(self.conv(x))
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class DownSample(nn.Module):
    """3x3 stride-2 convolution between stages, then LayerNorm on the tokens."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    @staticmethod
    def out_size(size: int) -> int:
        return _conv_out(size, 3, 2, 1)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution applied to tokens laid out on their grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, *grid))
        return x.flatten(2).transpose(1, 2)


class ConvMlp(nn.Module):
    """fc1 -> depthwise 3x3 conv on the token grid -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), grid)))


class Block(nn.Module):
    """``x + dp(mix(norm1(x)))``, ``x + dp(mlp(norm2(x)))``; ``mix`` is spectral or attention."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float, mixer: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = mixer
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class ClassAttention(nn.Module):
    """The class token (first token) attends over all tokens; returns its update ``(B, 1, C)``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = check_heads(dim, num_heads)
        # Created kv, q, proj: another order would change the weights a seed initialises.
        self.kv = nn.Linear(dim, 2 * dim)
        self.q = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_qkv_attention(self, x[:, :1], x)


class ClassBlock(nn.Module):
    """Class-attention block: only the class token is updated (attention, then MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = ClassAttention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.attn(self.norm1(x))
        cls = cls + self.mlp(self.norm2(cls))
        return torch.cat((cls, x[:, 1:]), dim=1)


class SpectFormerH(BackendSwitchMixin, ReplaceableHead, nn.Module):
    """Hierarchical SpectFormer: strides 4/8/16/32, the first ``spectral_stages`` stages spectral.

    With ``token_label=True`` (the official models) an auxiliary head scores every patch
    token and ``forward`` returns ``head(cls) + 0.5 * max over tokens of aux_head(tokens)``,
    the official evaluation output; ``forward_dense`` returns both heads for
    token-labelling training. The spectral filters are sized for ``img_size``.
    """

    def __init__(
        self,
        img_size=224,
        in_chans: int = 3,
        num_classes: int = 1000,
        stem_hidden_dim: int = 32,
        embed_dims: Sequence[int] = (64, 128, 320, 448),
        num_heads: Sequence[int] = (2, 4, 10, 14),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        drop_path_rate: float = 0.0,
        spectral_stages: int = 2,
        spectral_layer: str = "fgn",
        backend: Optional[str] = None,
        token_label: bool = True,
    ):
        super().__init__()
        check_per_stage(4, embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios,
                        depths=depths)
        if not 0 <= spectral_stages <= 4:
            raise ValueError(f"spectral_stages must be in [0, 4], got {spectral_stages!r}")
        self.num_classes = num_classes
        self.num_features = embed_dims[-1]
        self.token_label = token_label
        self.spectral_layer = spectral_layer

        self.img_size = grid = to_2tuple(img_size, "img_size")
        self.in_chans = in_chans
        self.grid_sizes = []
        rates = stochastic_depth_rates(drop_path_rate, sum(depths))
        for i in range(4):
            embed = (Stem(in_chans, stem_hidden_dim, embed_dims[0]) if i == 0
                     else DownSample(embed_dims[i - 1], embed_dims[i]))
            grid = tuple(embed.out_size(s) for s in grid)
            self.grid_sizes.append(grid)
            dim = embed_dims[i]
            blocks = nn.ModuleList()
            for j in range(depths[i]):
                mixer = (make_spectral_layer(spectral_layer, dim, grid, backend) if i < spectral_stages
                         else SplitQKVAttention(dim, num_heads[i]))
                blocks.append(Block(dim, mlp_ratios[i], rates[sum(depths[:i]) + j], mixer))
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=BLOCK_NORM_EPS))

        self.post_network = nn.ModuleList([ClassBlock(embed_dims[-1], num_heads[-1], mlp_ratios[-1])])
        self.head = self.new_head(num_classes)
        if token_label:
            self.aux_head = self.new_head(num_classes)
        self.apply(init_vit_weights)
        self.apply(init_conv_fan_out)

    def no_weight_decay(self) -> set[str]:
        return set()

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.token_label:
            self.aux_head = self.new_head(num_classes)

    def forward_tokens(self, x: torch.Tensor, mix_box: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Images -> normalised tokens ``(B, 1 + N, C)``: the class token, then stage-4 tokens.

        ``mix_box = (y0, y1, x0, x1)`` on the stage-4 grid: MixToken swaps the stage-1 tokens
        under it (8x8 per stage-4 token) with those of the batch flipped along its first axis.
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_chans, *self.img_size):
            raise ValueError(
                f"expected images (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got shape {tuple(x.shape)}; build the model with img_size=... (and resize a "
                "checkpoint with load_checkpoint) to use another resolution"
            )
        b = x.shape[0]
        for i in range(4):
            x, grid = getattr(self, f"patch_embed{i + 1}")(x)
            if i == 0 and mix_box is not None:
                x = swap_box(x, grid, [v * MIX_TOKEN_SCALE for v in mix_box])
            for block in getattr(self, f"block{i + 1}"):
                x = block(x, grid)
            if i < 3:
                x = getattr(self, f"norm{i + 1}")(x)
                x = x.reshape(b, *grid, -1).permute(0, 3, 1, 2)
        x = torch.cat((x.mean(dim=1, keepdim=True), x), dim=1)  # the mean token as class token
        for block in self.post_network:
            x = block(x)
        return self.norm4(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the normalised class token ``(B, C)``."""
        return self.forward_tokens(x)[:, 0]

    def forward_dense(self, x: torch.Tensor, mix_box: Optional[Sequence[int]] = None):
        """``(head(cls) (B, classes), aux_head(tokens) (B, N, classes))`` for token labelling.

        With a MixToken ``mix_box`` the token outputs under the box are swapped back, so each
        token's output belongs to the image its target came from.
        """
        if not self.token_label:
            raise RuntimeError("forward_dense needs the auxiliary head: build with token_label=True")
        tokens = self.forward_tokens(x, mix_box)
        token_logits = self.aux_head(tokens[:, 1:])
        if mix_box is not None:
            token_logits = swap_box(token_logits, self.grid_sizes[-1], mix_box)
        return self.head(tokens[:, 0]), token_logits

    def forward(self, x: torch.Tensor, return_dense: bool = False,
                mix_box: Optional[Sequence[int]] = None):
        """Logits; ``return_dense=True`` gives ``forward_dense(x, mix_box)`` (through DDP and
        ``torch.compile`` wrappers too)."""
        if return_dense:
            return self.forward_dense(x, mix_box)
        if not self.token_label:
            return self.head(self.forward_features(x))
        cls_logits, token_logits = self.forward_dense(x)
        return cls_logits + 0.5 * token_logits.max(dim=1).values


# Stage-1 tokens per stage-4 token along each side (three stride-2 downsamplings).
MIX_TOKEN_SCALE = 8


def swap_box(tokens: torch.Tensor, grid: Sequence[int], box: Sequence[int]) -> torch.Tensor:
    """Tokens ``(B, H*W, C)`` on ``grid`` with those under ``box = (y0, y1, x0, x1)`` taken from
    the batch flipped along its first axis."""
    y0, y1, x0, x1 = box
    b, _, c = tokens.shape
    grid_tokens = tokens.reshape(b, *grid, c)
    mixed = grid_tokens.clone()
    mixed[:, y0:y1, x0:x1] = grid_tokens.flip(0)[:, y0:y1, x0:x1]
    return mixed.reshape(b, -1, c)


def _build(defaults: dict, overrides: dict) -> SpectFormerH:
    return build_model(SpectFormerH, defaults, overrides, first_conv="patch_embed1.conv.0")


@register_model
def spectformer_h_s(**overrides) -> SpectFormerH:
    return _build(dict(stem_hidden_dim=32, embed_dims=(64, 128, 320, 448), num_heads=(2, 4, 10, 14),
                       mlp_ratios=(8, 8, 4, 4), depths=(3, 4, 6, 3), drop_path_rate=0.1), overrides)


@register_model
def spectformer_h_b(**overrides) -> SpectFormerH:
    return _build(dict(stem_hidden_dim=64, embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16),
                       mlp_ratios=(8, 8, 4, 4), depths=(3, 4, 12, 3), drop_path_rate=0.1), overrides)


@register_model
def spectformer_h_l(**overrides) -> SpectFormerH:
    return _build(dict(stem_hidden_dim=64, embed_dims=(96, 192, 384, 512), num_heads=(3, 6, 12, 16),
                       mlp_ratios=(8, 8, 4, 4), depths=(3, 6, 18, 3), drop_path_rate=0.3), overrides)
