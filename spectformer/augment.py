"""Batch-level augmentation: mixup, cutmix and label smoothing, producing soft targets.

Follows the recipe DeiT/GFNet/SpectFormer train with (mixup 0.8, cutmix 1.0, switch
probability 0.5, label smoothing 0.1, one mixing coefficient per batch, each image paired
with the batch flipped). Random draws come from torch's global generator, so a checkpoint's
saved RNG state reproduces them exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``(B,)`` class indices -> ``(B, num_classes)`` rows summing to one."""
    off = smoothing / num_classes
    soft = torch.full((target.shape[0], num_classes), off, device=target.device)
    return soft.scatter_(1, target.long().unsqueeze(1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly at random and clipped."""
    cut_ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
    cy = int(torch.randint(0, height, ()).item())
    cx = int(torch.randint(0, width, ()).item())
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


class MixupCutmix:
    """Mixes a batch ``(B, C, H, W)`` with its reverse and returns ``(images, soft targets)``.

    ``mixup_alpha`` / ``cutmix_alpha`` are the Beta distribution parameters (0 disables
    each); ``prob`` is the chance a batch is mixed at all; ``switch_prob`` the chance of cutmix
    rather than mixup when both are enabled. With both disabled it only smooths labels.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, "
                             f"got {mixup_alpha} and {cutmix_alpha}")
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing = label_smoothing

    @property
    def mixes(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _draw(self) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch; ``lam == 1`` means no mixing."""
        if not self.mixes or torch.rand(()).item() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = torch.rand(()).item() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
        return float(beta.sample()), use_cutmix

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        if target.shape != images.shape[:1]:
            raise ValueError(f"target must be (B,) = {tuple(images.shape[:1])} class indices, "
                             f"got shape {tuple(target.shape)}")
        soft = smooth_one_hot(target, self.num_classes, self.label_smoothing)
        lam, use_cutmix = self._draw()
        if lam == 1.0:
            return images, soft
        partner = images.flip(0)
        if use_cutmix:
            y0, y1, x0, x1 = cutmix_box(images.shape[-2], images.shape[-1], lam)
            images = images.clone()
            images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            # The clipped box may be smaller than asked: weight labels by the area actually cut.
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])
        else:
            images = images * lam + partner * (1.0 - lam)
        return images, soft * lam + soft.flip(0) * (1.0 - lam)


def soft_target_cross_entropy(logits: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-soft_target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
