"""Random erasing on normalised image batches (training settings ``reprob``, ``remode``, ``recount``).

As timm applies it (Zhong et al., "Random Erasing Data Augmentation"): each image, with
probability ``prob``, gets ``count`` rectangles (``count`` uniform in ``[1, max_count]``)
whose total area is a uniform fraction ``[0.02, 1/3]`` of the image, split evenly between
them, with a log-uniform aspect ratio in ``[0.3, 1/0.3]`` (ten tries per rectangle to fit).
The rectangle is filled, in normalised units, with zeros (``const``), one normal colour per
channel (``rand``) or normal noise per pixel (``pixel``). It runs after normalisation and
before mixup. Random draws come from torch's global generator (saved with checkpoints).
"""

from __future__ import annotations

import math

import torch

from .errors import SettingError

ERASE_MODES = ("const", "rand", "pixel")


class RandomErasing:
    def __init__(self, prob: float = 0.25, mode: str = "pixel", max_count: int = 1,
                 min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3):
        if not 0.0 <= prob <= 1.0:
            raise SettingError("prob", f"(random erasing probability) must be in [0, 1], "
                                       f"got {prob}")
        if mode not in ERASE_MODES:
            raise SettingError("mode", f"must be one of {', '.join(ERASE_MODES)}, got {mode!r}")
        if not isinstance(max_count, int) or max_count < 1:
            raise SettingError("max_count", f"(rectangles per image, at most) must be an int "
                                            f">= 1, got {max_count!r}")
        if not 0.0 < min_area <= max_area <= 1.0:
            raise ValueError(f"need 0 < min_area <= max_area <= 1, got {min_area} and {max_area}")
        self.prob, self.mode, self.max_count = prob, mode, max_count
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))

    def __repr__(self) -> str:
        return f"RandomErasing(prob={self.prob}, mode={self.mode!r}, max_count={self.max_count})"

    @staticmethod
    def _uniform(lo: float, hi: float) -> float:
        return float(torch.empty(()).uniform_(lo, hi))

    def _fill(self, chans: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        if self.mode == "pixel":
            return torch.randn(chans, h, w, dtype=like.dtype, device=like.device)
        if self.mode == "rand":
            return torch.randn(chans, 1, 1, dtype=like.dtype, device=like.device).expand(chans, h, w)
        return like.new_zeros(chans, 1, 1).expand(chans, h, w)

    def erase_(self, image: torch.Tensor) -> torch.Tensor:
        """Erase in place on one normalised image ``(C, H, W)``; returns it."""
        if torch.rand(()).item() >= self.prob:
            return image
        chans, height, width = image.shape
        count = 1 if self.max_count == 1 else int(torch.randint(1, self.max_count + 1, ()))
        for _ in range(count):
            for _attempt in range(10):
                area = self._uniform(self.min_area, self.max_area) * height * width / count
                aspect = math.exp(self._uniform(*self.log_aspect))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if 0 < h < height and 0 < w < width:
                    top = int(torch.randint(0, height - h + 1, ()))
                    left = int(torch.randint(0, width - w + 1, ()))
                    image[:, top:top + h, left:left + w] = self._fill(chans, h, w, image)
                    break
        return image

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """A batch ``(B, C, H, W)`` or one image ``(C, H, W)``; returns an erased copy."""
        if images.dim() not in (3, 4):
            raise ValueError(f"random erasing expects (B, C, H, W) or (C, H, W), got shape "
                             f"{tuple(images.shape)}")
        out = images.clone()
        for image in (out.unsqueeze(0) if out.dim() == 3 else out):
            self.erase_(image)
        return out
