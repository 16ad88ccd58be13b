"""Token labelling (Jiang et al., LV-ViT): dense per-token targets, the combined loss, MixToken.

Score maps
    One file per training image, ``<score root>/<class folder>/<image name up to its first
    dot>.pt``, holding a tensor ``(2, k, h, w)`` (usually float16): ``[0]`` the teacher's top-k
    scores at every position of an ``h x w`` map over the whole image, ``[1]`` their class
    indices (LV-ViT's ``generate_label.py`` format; ImageNet maps have k = 5).

Targets
    The top-k scores are scattered into a dense ``(classes, h, w)`` map (other classes score
    0), the region of the training crop is resampled to the model's last token grid
    ``S x S`` (bilinear samples averaged per cell, as ``roi_align``; the class-token target
    pools the whole crop), flipped with the image, and turned into distributions by a softmax
    over classes. Each item is ``(image, label, targets (1 + S*S, classes))``: row 0 is the
    class-token target, the rest the tokens in row-major order.

Loss
    ``cls_weight * CE(head(cls), target_0) + dense_weight * mean over tokens CE(aux_head(t),
    target_t)`` with soft targets (official: 1.0 and 0.5).

MixToken
    A box on the last token grid (area fraction ``1 - lam``, ``lam ~ Beta(1, 1)``) is cut from
    the batch flipped along its first axis; the model swaps the stage-1 tokens under the box
    (8x8 stage-1 tokens per last-grid token) and swaps the auxiliary outputs back, so token
    targets need no mixing; the class-token target becomes ``lam * t + (1 - lam) * t.flip(0)``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .augment import cutmix_box
from .data import ImageFolderDataset, random_resized_crop_box
from .errors import MissingPathError

log = logging.getLogger(__name__)

SCORE_MAP_SUFFIX = ".pt"


def score_map_path(score_root: str | Path, image_path: str | Path) -> Path:
    """Where the score map of ``image_path`` lives: ``<root>/<class folder>/<name before the first dot>.pt``."""
    image_path = Path(image_path)
    return Path(score_root) / image_path.parent.name / (image_path.name.split(".")[0] + SCORE_MAP_SUFFIX)


def load_score_map(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (k, h, w) float32, class indices (k, h, w) int64)`` from one score-map file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no score map {str(path)!r} for this image")
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, torch.Tensor) or stored.dim() != 4 or stored.shape[0] != 2:
        shape = tuple(stored.shape) if isinstance(stored, torch.Tensor) else type(stored).__name__
        raise ValueError(f"score map {str(path)!r} must hold a (2, k, h, w) tensor of "
                         f"top-k scores and class indices, got {shape}")
    return stored[0].float(), stored[1].float().round().long()


def dense_scores(scores: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k ``(k, h, w)`` -> ``(num_classes, h, w)``, zero where a class is not in the top k."""
    if indices.min() < 0 or indices.max() >= num_classes:
        raise ValueError(f"score map class indices span [{int(indices.min())}, {int(indices.max())}] "
                         f"but the model has {num_classes} classes")
    dense = scores.new_zeros(num_classes, *scores.shape[1:])
    return dense.scatter_(0, indices, scores)


def crop_scores(dense: torch.Tensor, box: Sequence[float], size: Sequence[int],
                flip: bool = False) -> torch.Tensor:
    """Scores of the crop ``box = (left, top, right, bottom)`` (fractions of the image) on an
    ``size = (S_h, S_w)`` grid: ``(1 + S_h * S_w, classes)``, the whole-crop mean first.

    Each cell averages ``n x n`` bilinear samples at its sub-cell centres, ``n`` growing with
    the map pixels a cell covers (``roi_align``'s adaptive sampling); ``flip`` mirrors the
    cells left-right, as the image was mirrored after cropping.
    """
    classes, map_h, map_w = dense.shape
    left, top, right, bottom = box
    out_h, out_w = size
    n_h = max(1, math.ceil((bottom - top) * map_h / out_h))
    n_w = max(1, math.ceil((right - left) * map_w / out_w))
    # Sample points (fractions of the image), then grid_sample coordinates in [-1, 1]
    # (align_corners=False: map pixel i covers [i, i + 1) / map size).
    ys = top + (bottom - top) * (torch.arange(out_h * n_h, dtype=torch.float64) + 0.5) / (out_h * n_h)
    xs = left + (right - left) * (torch.arange(out_w * n_w, dtype=torch.float64) + 0.5) / (out_w * n_w)
    gy, gx = torch.meshgrid(2 * ys - 1, 2 * xs - 1, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1).unsqueeze(0).to(dense.dtype)
    samples = F.grid_sample(dense.unsqueeze(0), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
    cells = F.avg_pool2d(samples, (n_h, n_w))[0]  # (classes, S_h, S_w)
    if flip:
        cells = cells.flip(-1)
    tokens = cells.flatten(1).transpose(0, 1)
    return torch.cat((tokens.mean(0, keepdim=True), tokens), dim=0)


def scores_to_targets(scores: torch.Tensor) -> torch.Tensor:
    """Scores ``(..., classes)`` -> target distributions (softmax over classes)."""
    return torch.softmax(scores.float(), dim=-1)


class TokenLabelDataset(Dataset):
    """Training images of an ``ImageFolderDataset`` with their dense targets.

    The image gets the usual random-resized crop and horizontal flip (then ``augment``,
    e.g. RandAugment, on [0, 1], then normalisation); the same crop box and flip are applied
    to the image's score map. Items: ``(image, label, targets (1 + S*S, classes))``.
    """

    def __init__(self, images: ImageFolderDataset, score_root: str | Path, num_classes: int,
                 grid: Sequence[int], augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.images = images
        self.score_root = Path(score_root)
        if not self.score_root.is_dir():
            raise MissingPathError("score_root", f"{str(self.score_root)!r} is not a folder")
        missing = [str(p) for p in (score_map_path(self.score_root, path) for path, _ in images.samples[:1])
                   if not p.is_file()]
        if missing:
            raise MissingPathError("score_root", f"{str(self.score_root)!r} must hold score maps as "
                                                 f"<class>/<image stem>{SCORE_MAP_SUFFIX}; "
                                                 f"{missing[0]!r} does not exist")
        self.num_classes, self.grid, self.augment = num_classes, tuple(grid), augment
        self.samples, self.classes = images.samples, images.classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        spec = self.images.spec
        try:
            with Image.open(path) as image:
                image = image.convert("L" if spec.in_chans == 1 else "RGB")
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
            log.warning("skipping unreadable image %s: %s", path, exc)
            return None
        width, height = image.size
        box = random_resized_crop_box(width, height)
        image = image.resize((spec.img_size, spec.img_size), Image.BICUBIC, box=box)
        flip = torch.rand(()).item() < 0.5
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.uint8)
        tensor = torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)
        tensor = tensor.float().div_(255.0)
        if self.augment is not None:
            tensor = self.augment(tensor)
        tensor = spec.normalise(tensor)
        if tensor.shape[0] != spec.in_chans:
            tensor = tensor.expand(spec.in_chans, -1, -1).contiguous()

        scores, indices = load_score_map(score_map_path(self.score_root, path))
        fractions = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
        cropped = crop_scores(dense_scores(scores, indices, self.num_classes), fractions, self.grid, flip)
        return tensor, label, scores_to_targets(cropped)


def mix_token_box(grid: Sequence[int]) -> tuple[float, tuple[int, int, int, int]]:
    """``(lam, (y0, y1, x0, x1))``: a MixToken box on the last token grid, ``lam ~ Beta(1, 1)``
    corrected to the share of tokens outside the (clipped) box."""
    height, width = grid
    lam = float(torch.rand(()))  # Beta(1, 1) is uniform
    y0, y1, x0, x1 = cutmix_box(height, width, lam)
    return 1.0 - (y1 - y0) * (x1 - x0) / (height * width), (y0, y1, x0, x1)


def token_label_loss(cls_logits: torch.Tensor, token_logits: torch.Tensor, targets: torch.Tensor,
                     lam: float = 1.0, cls_weight: float = 1.0, dense_weight: float = 0.5,
                     smoothing: float = 0.0) -> torch.Tensor:
    """The combined loss: class token against ``targets[:, 0]`` (mixed with the flipped batch
    by ``lam``), every token against ``targets[:, 1:]``; soft-target cross-entropy.

    ``cls_logits (B, C)``, ``token_logits (B, N, C)``, ``targets (B, 1 + N, C)``;
    ``smoothing`` blends every target with the uniform distribution.
    """
    b, n, c = token_logits.shape
    if targets.shape != (b, 1 + n, c):
        raise ValueError(f"token targets must be (B, 1 + N, classes) = {(b, 1 + n, c)} for this "
                         f"model, got {tuple(targets.shape)}; check the size of the target grid")
    targets = targets.float()
    if smoothing > 0:
        targets = targets * (1.0 - smoothing) + smoothing / c
    cls_target = targets[:, 0]
    if lam < 1.0:
        cls_target = lam * cls_target + (1.0 - lam) * cls_target.flip(0)

    def soft_ce(logits, target):
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()

    return (cls_weight * soft_ce(cls_logits, cls_target)
            + dense_weight * soft_ce(token_logits.reshape(-1, c), targets[:, 1:].reshape(-1, c)))
