"""Data for training and validation: scikit-learn's digits, synthetic images, ImageFolder.

All three produce ``(image (C, H, W) float32 normalised with the model's mean/std, label)``.
Torchvision is not required: the ImageFolder transforms (random-resized-crop + flip for
training, resize + centre crop for evaluation) are written here on top of Pillow.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from . import image_modes
from .errors import SettingError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageSpec:
    """What the model expects: channels, square side, normalisation."""

    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(..., C, H, W)`` in [0, 1] -> normalised; the channel count must already match."""
        mean = torch.tensor(self.mean, dtype=images.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(-1, 1, 1)
        return (images - mean) / std


def _per_channel(values: Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    # Three-channel statistics on a one-channel model (or vice versa): use their mean.
    log.warning("model %s has %d values for %d channels; using their mean", what, len(values), in_chans)
    return (sum(values) / len(values),) * in_chans


def image_spec(default_cfg: dict, img_size: Optional[int] = None) -> ImageSpec:
    in_chans, height, _ = default_cfg.get("input_size", (3, 224, 224))
    return ImageSpec(
        in_chans=int(in_chans),
        img_size=int(img_size or height),
        mean=_per_channel(default_cfg.get("mean", (0.485, 0.456, 0.406)), in_chans, "mean"),
        std=_per_channel(default_cfg.get("std", (0.229, 0.224, 0.225)), in_chans, "std"),
    )


# --------------------------------------------------------------------------------- digits


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split: 20% of each class for validation, by a seeded permutation.

    Returns ``(train_images, train_labels, val_images, val_labels)``, images ``(N, 8, 8)`` in
    [0, 1]. ``RandomState`` (not ``default_rng``) keeps the split identical across numpy versions.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    val_idx = []
    for cls in range(10):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        val_idx.extend(members[: round(len(members) * DIGITS_VAL_FRACTION)])
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[np.asarray(val_idx)] = True
    return images[~is_val], labels[~is_val], images[is_val], labels[is_val]


class UpscaledImages(Dataset):
    """Small in-memory grey images, upscaled (bilinear) to the model's size on access.

    ``augment`` (e.g. ``RandAugment``) maps the upscaled image in [0, 1] before normalisation.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: ImageSpec,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, h, w)
        self.labels = torch.from_numpy(labels)
        self.spec = spec
        self.augment = augment
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        size = self.spec.img_size
        image = F.interpolate(self.images[index : index + 1], size=(size, size),
                              mode="bilinear", align_corners=False)[0]
        image = image.expand(self.spec.in_chans, size, size)
        if self.augment is not None:
            image = self.augment(image)
        return self.spec.normalise(image), int(self.labels[index])


# ------------------------------------------------------------------------------ synthetic


class SyntheticImages(Dataset):
    """Random normal images and labels; item ``i`` is a fixed function of ``(seed, i)``."""

    def __init__(self, length: int, num_classes: int, spec: ImageSpec, seed: int = 0):
        if length < 1:
            raise ValueError(f"synthetic data size must be >= 1, got {length}")
        self.length, self.num_classes, self.spec, self.seed = length, num_classes, spec, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        size = self.spec.img_size
        image = torch.randn(self.spec.in_chans, size, size, generator=gen)
        return image, int(torch.randint(self.num_classes, (), generator=gen))


# ---------------------------------------------------------------------------- ImageFolder


def random_resized_crop_box(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """``(left, top, right, bottom)`` of a random crop with area fraction in ``scale`` and
    aspect ratio in ``ratio`` (log-uniform); the whole image's centre crop if ten draws fail."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(()).uniform_(*scale))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, ()))
            top = int(torch.randint(0, height - h + 1, ()))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` read with Pillow; unreadable images are reported and skipped.

    An unreadable image makes ``__getitem__`` return ``None`` after logging a warning with
    its path; ``collate_skip_unreadable`` then leaves it out of the batch.
    """

    def __init__(self, root: str | Path, spec: ImageSpec, train: bool, crop_pct: float = 0.875,
                 classes: Optional[list[str]] = None,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        discovering = classes is None
        if classes is None:
            classes = found
        else:
            extra = sorted(set(found) - set(classes))
            if extra:
                raise ValueError(f"{str(self.root)!r} has classes missing from the training "
                                 f"folder: {', '.join(extra)}")
        if not classes:
            raise ValueError(f"image folder {str(self.root)!r} has no class sub-folders")
        self.classes = classes
        self.num_classes = len(classes)
        self.samples = [
            (path, label)
            for label, name in enumerate(classes)
            if (self.root / name).is_dir()
            for path in sorted((self.root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        ]
        if not self.samples:
            raise ValueError(f"image folder {str(self.root)!r} holds no images "
                             f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
        if discovering:
            # An empty folder would still count as a class: a head with a dead output.
            filled = {label for _, label in self.samples}
            empty = [str(self.root / name) for label, name in enumerate(classes) if label not in filled]
            if empty:
                raise ValueError(f"class folder {empty[0]!r} holds no images (extensions "
                                 f"{', '.join(IMAGE_EXTENSIONS)})"
                                 + (f"; {len(empty) - 1} more are empty" if len(empty) > 1 else ""))
        self.spec, self.train, self.crop_pct = spec, train, crop_pct
        self.augment = augment  # training only: maps the cropped image in [0, 1]
        self.unreadable: list[str] = []  # paths skipped by this process (workers keep their own)

    def __len__(self) -> int:
        return len(self.samples)

    def _transform(self, images: list, divisor: float) -> torch.Tensor:
        """The same crop, resize and flip applied to each image (or band), stacked to
        ``(C, H, W)`` in [0, 1] and normalised."""
        from PIL import Image

        size = self.spec.img_size
        if self.train:
            box = random_resized_crop_box(*images[0].size)
            flip = torch.rand(()).item() < 0.5

            def geometry(image):
                image = image.resize((size, size), Image.BICUBIC, box=box)
                return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image
        else:
            short = int(math.floor(size / self.crop_pct))
            width, height = images[0].size
            scale = short / min(width, height)
            resized = (max(size, round(width * scale)), max(size, round(height * scale)))
            left, top = (resized[0] - size) // 2, (resized[1] - size) // 2

            def geometry(image):
                image = image.resize(resized, Image.BICUBIC)
                return image.crop((left, top, left + size, top + size))
        arrays = []
        for image in images:
            array = np.asarray(geometry(image), dtype=np.float32)
            arrays.append(array[:, :, None] if array.ndim == 2 else array)
        # Bicubic overshoots on float bands; 8-bit ones are already clipped by Pillow.
        array = np.clip(np.concatenate(arrays, axis=2) / divisor, 0.0, 1.0)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
        if self.train and self.augment is not None:
            tensor = self.augment(tensor)
        return self.spec.normalise(tensor)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                images, divisor = image_modes.prepare(image, self.spec.in_chans)
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
            self.unreadable.append(str(path))
            log.warning("skipping unreadable image %s: %s", path, exc)
            return None
        tensor = self._transform(images, divisor)
        if tensor.shape[0] != self.spec.in_chans:
            tensor = tensor.expand(self.spec.in_chans, -1, -1).contiguous()
        return tensor, label


def collate_skip_unreadable(batch):
    """Default collation, minus the ``None`` entries of unreadable images."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return torch.utils.data.default_collate(kept)


# ------------------------------------------------------------------------------ samplers


class ShardSampler(Sampler[int]):
    """This rank's share of the indices, reshuffled per epoch from ``(seed, epoch)`` alone.

    Training (``pad=True``) repeats a few indices so every rank gets the same count, as
    ``DistributedSampler`` does; evaluation (``pad=False``) counts every image exactly once.
    ``set_epoch(epoch, skip)`` also drops the first ``skip`` indices, so a run resumed in
    the middle of an epoch sees exactly the batches it had not yet seen.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, pad: bool = True):
        self.length, self.num_replicas, self.rank = length, num_replicas, rank
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=gen).tolist()
        else:
            order = list(range(self.length))
        if self.pad:
            total = math.ceil(self.length / self.num_replicas) * self.num_replicas
            order += order[: total - self.length]
        return order[self.rank :: self.num_replicas]

    def per_epoch(self) -> int:
        """Indices this rank draws in a full epoch."""
        if self.pad:
            return math.ceil(self.length / self.num_replicas)
        return len(range(self.rank, self.length, self.num_replicas))

    def __iter__(self):
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return max(self.per_epoch() - self.skip, 0)


# ------------------------------------------------------------------------------- builders


def class_count(data: str) -> Optional[int]:
    """Classes in ``data`` without loading it; ``None`` for synthetic (the model decides)."""
    if data == "digits":
        return 10
    if data == "synthetic":
        return None
    train = Path(data) / "train"
    return sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else None


@dataclass
class Datasets:
    train: Dataset
    val: Dataset
    num_classes: int
    in_memory: bool  # cheap to index: worker processes would only add overhead


def check_source(data: str, num_classes: Optional[int]) -> None:
    """``data`` is 'digits', 'synthetic' or a folder with train/ and val/ (not scanned), and
    ``num_classes`` fits it; a ``SettingError`` naming ``data`` or ``num_classes`` if not."""
    if data == "digits":
        if num_classes is not None and num_classes < 10:
            raise SettingError("num_classes", f"{num_classes} is too small for the digits data "
                                              "set (10 classes)")
        return
    if data == "synthetic":
        if num_classes is None:
            raise SettingError("num_classes", "is required for synthetic data, which has no "
                                              "class count of its own")
        return
    root = Path(data)
    if not root.is_dir():
        raise SettingError("data", f"{data!r} is neither 'digits', 'synthetic' nor an existing "
                                   "folder")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise SettingError("data", f"{data!r} must contain {split}/<class>/<images> "
                                       "(ImageFolder layout)")


def build_datasets(data: str, spec: ImageSpec, num_classes: Optional[int], seed: int,
                   synthetic_train_size: int = 1281, synthetic_val_size: int = 256,
                   crop_pct: float = 0.875,
                   train_augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Datasets:
    """The train and validation sets of ``data``. ``train_augment`` (e.g. ``RandAugment``)
    maps training images in [0, 1] before normalisation; synthetic data is not augmented."""
    check_source(data, num_classes)
    if data == "digits":
        train_x, train_y, val_x, val_y = digits_split()
        return Datasets(UpscaledImages(train_x, train_y, spec, augment=train_augment),
                        UpscaledImages(val_x, val_y, spec),
                        num_classes or 10, in_memory=True)
    if data == "synthetic":
        return Datasets(SyntheticImages(synthetic_train_size, num_classes, spec, seed),
                        SyntheticImages(synthetic_val_size, num_classes, spec, seed + 1),
                        num_classes, in_memory=True)
    root = Path(data)
    train = ImageFolderDataset(root / "train", spec, train=True, crop_pct=crop_pct,
                               augment=train_augment)
    val = ImageFolderDataset(root / "val", spec, train=False, crop_pct=crop_pct, classes=train.classes)
    if num_classes is not None and num_classes < train.num_classes:
        raise SettingError("num_classes", f"{num_classes} is smaller than the {train.num_classes} "
                                          f"classes in {str(root / 'train')!r}")
    return Datasets(train, val, num_classes or train.num_classes, in_memory=False)
