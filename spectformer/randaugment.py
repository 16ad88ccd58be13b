"""RandAugment with timm's policy strings (``rand-m9-mstd0.5-inc1``), written in torch ops.

The recipe DeiT, GFNet and SpectFormer train with: for every image, ``n`` operations drawn
uniformly (with replacement) from the 15 below, each applied with probability ``p``, at a
magnitude ``m`` out of ``mmax`` (10) perturbed per application by Gaussian noise of std
``mstd`` and clipped to ``[0, mmax]``. The operations and their magnitude-to-argument maps
are timm's (``timm.data.auto_augment``); the images are 8-bit, so every operation works on
values 0..255 and rounds its result as an 8-bit image would be stored. Geometric operations
resample bicubically and fill uncovered pixels with the data set's mean colour.

Policy string: ``rand`` then dash-separated sections in any order:
``m<int>`` magnitude (default 10), ``n<int>`` operations per image (2), ``mstd<float>``
magnitude noise (0; above 100 means uniform in ``[0, m]``), ``mmax<int>`` magnitude bound
(10), ``inc<0|1>`` the "increasing" operation set, whose severity grows with the magnitude
(0), ``p<float>`` probability of applying each drawn operation (0.5).

Random draws come from torch's global generator, like the other data transforms here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import SettingError

LEVEL_DENOM = 10.0
BASE_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
            "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
            "TranslateYRel")
# inc1 swaps six operations for versions whose severity increases with the magnitude: the
# same operation, with another magnitude-to-argument map (LEVEL_TO_ARG).
INCREASING = {"Posterize": "PosterizeIncreasing", "Solarize": "SolarizeIncreasing",
              "Color": "ColorIncreasing", "Contrast": "ContrastIncreasing",
              "Brightness": "BrightnessIncreasing", "Sharpness": "SharpnessIncreasing"}
INCREASING_OPS = tuple(INCREASING.get(op, op) for op in BASE_OPS)


@dataclass(frozen=True)
class RandAugmentPolicy:
    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False
    prob: float = 0.5

    @property
    def ops(self) -> tuple[str, ...]:
        return INCREASING_OPS if self.increasing else BASE_OPS


_SECTION = re.compile(r"^(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?|\.\d+|inf)$")


def parse_policy(spec: str) -> RandAugmentPolicy:
    """``"rand-m9-mstd0.5-inc1"`` -> ``RandAugmentPolicy``; a ``SettingError`` about
    ``policy`` naming the bad section for anything malformed."""
    def bad(why: str) -> SettingError:
        return SettingError("policy", f"{spec!r}: {why}; expected 'rand' followed by "
                                      "dash-separated sections m<int>, n<int>, mstd<float>, "
                                      "mmax<int>, inc<0|1>, p<float>, e.g. 'rand-m9-mstd0.5-inc1'")

    if not isinstance(spec, str):
        raise TypeError(f"policy must be a string, got {type(spec).__name__}")
    parts = spec.strip().split("-")
    if parts[0] != "rand":
        raise bad("only RandAugment ('rand-...') policies are supported")
    values: dict = {}
    for section in parts[1:]:
        match = _SECTION.match(section)
        if match is None:
            raise bad(f"unknown section {section!r}")
        key, text = match.groups()
        if key in values:
            raise bad(f"section {key!r} given twice")
        number = float(text)
        if key in ("m", "n", "mmax", "inc") and not number.is_integer():
            raise bad(f"{key} must be an integer, got {text!r}")
        values[key] = number
    mstd = values.get("mstd", 0.0)
    policy = RandAugmentPolicy(
        magnitude=values.get("m", LEVEL_DENOM),
        num_layers=int(values.get("n", 2)),
        magnitude_std=math.inf if mstd > 100 else mstd,
        magnitude_max=values.get("mmax", LEVEL_DENOM),
        increasing=bool(values.get("inc", 0)),
        prob=values.get("p", 0.5),
    )
    if values.get("inc", 0) not in (0, 1):
        raise bad("inc must be 0 or 1")
    if policy.num_layers < 1:
        raise bad("n (operations per image) must be >= 1")
    if not 0.0 <= policy.prob <= 1.0:
        raise bad("p must be in [0, 1]")
    return policy


# -- the operations, on (C, H, W) float tensors holding 8-bit values 0..255 ----------------


def _store(img: torch.Tensor) -> torch.Tensor:
    """Round and clip as an 8-bit image stores the result."""
    return img.round().clamp_(0.0, 255.0)


def _grey(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (the 'L' conversion), ``(1, H, W)``; grey images pass through."""
    if img.shape[0] != 3:
        return img[:1]
    weights = img.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return _store((img * weights).sum(0, keepdim=True))


def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: float) -> torch.Tensor:
    return _store(degenerate + factor * (img - degenerate))


def auto_contrast(img: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to the full 0..255 range (constant channels are left alone)."""
    lo = img.amin(dim=(1, 2), keepdim=True)
    hi = img.amax(dim=(1, 2), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    offset = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return _store((img - offset) * scale)


def equalize(img: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation with the classic 8-bit lookup table."""
    out = []
    for channel in img:
        hist = torch.bincount(channel.long().flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = int((nonzero.sum() - nonzero[-1]).item()) // 255
        if step == 0:
            out.append(channel)
            continue
        # lut[i] = (step // 2 + number of pixels below level i) // step
        below = torch.cumsum(hist, 0) - hist
        lut = ((below + step // 2) // step).clamp_(max=255).to(img.dtype)
        out.append(lut[channel.long()])
    return torch.stack(out)


def invert(img: torch.Tensor) -> torch.Tensor:
    return 255.0 - img


def posterize(img: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of each value."""
    if bits >= 8:
        return img
    quantum = 2.0 ** (8 - bits)
    return torch.floor(img / quantum) * quantum


def solarize(img: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(img >= threshold, 255.0 - img, img)


def solarize_add(img: torch.Tensor, add: float, threshold: float = 128.0) -> torch.Tensor:
    return torch.where(img < threshold, (img + add).clamp_(max=255.0), img)


def color(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(_grey(img).expand_as(img), img, factor)


def contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    mean = torch.floor(_grey(img).mean() + 0.5)
    return _blend(mean.expand_as(img), img, factor)


def brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(torch.zeros_like(img), img, factor)


def sharpness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with a 3x3 smoothed copy (centre weight 5, neighbours 1); border pixels unchanged."""
    if min(img.shape[1:]) < 3:
        return img
    kernel = img.new_ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(img.shape[0], 1, 3, 3)
    smooth = _store(F.conv2d(img.unsqueeze(0), kernel, groups=img.shape[0])[0])
    degenerate = img.clone()
    degenerate[:, 1:-1, 1:-1] = smooth
    return _blend(degenerate, img, factor)


def affine(img: torch.Tensor, matrix: Sequence[float], fill: torch.Tensor,
           mode: str = "bicubic") -> torch.Tensor:
    """Resample with ``matrix = (a, b, c, d, e, f)`` mapping each output pixel centre
    ``(x, y)`` (pixel ``i`` spans ``[i, i + 1)``) to the input point ``(a x + b y + c,
    d x + e y + f)``; output pixels whose input point falls outside the image get ``fill``."""
    _, h, w = img.shape
    a, b, c, d, e, f = matrix
    ys = torch.arange(h, dtype=img.dtype, device=img.device) + 0.5
    xs = torch.arange(w, dtype=img.dtype, device=img.device) + 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    src_x, src_y = a * x + b * y + c, d * x + e * y + f
    grid = torch.stack((2.0 * src_x / w - 1.0, 2.0 * src_y / h - 1.0), dim=-1).unsqueeze(0)
    out = F.grid_sample(img.unsqueeze(0), grid, mode=mode, padding_mode="border",
                        align_corners=False)[0]
    outside = (src_x < 0) | (src_x > w) | (src_y < 0) | (src_y > h)
    return _store(torch.where(outside, fill.view(-1, 1, 1), out))


def rotate(img: torch.Tensor, degrees: float, fill: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise rotation about the image centre."""
    _, h, w = img.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    # Output point p (relative to the centre) shows the input at R(theta) p (y points down).
    return affine(img, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy), fill)


def shear_x(img: torch.Tensor, factor: float, fill: torch.Tensor) -> torch.Tensor:
    return affine(img, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(img: torch.Tensor, factor: float, fill: torch.Tensor) -> torch.Tensor:
    return affine(img, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x_rel(img: torch.Tensor, fraction: float, fill: torch.Tensor) -> torch.Tensor:
    return affine(img, (1.0, 0.0, fraction * img.shape[2], 0.0, 1.0, 0.0), fill)


def translate_y_rel(img: torch.Tensor, fraction: float, fill: torch.Tensor) -> torch.Tensor:
    return affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * img.shape[1]), fill)


# -- magnitude (0..10) -> argument, as timm maps them ----------------------------------------


def _random_sign(value: float) -> float:
    return -value if torch.rand(()).item() < 0.5 else value


def _enhance(level: float) -> float:
    return level / LEVEL_DENOM * 1.8 + 0.1


def _enhance_increasing(level: float) -> float:
    return max(0.1, 1.0 + _random_sign(level / LEVEL_DENOM * 0.9))


LEVEL_TO_ARG: dict[str, Callable[[float], float]] = {
    "Rotate": lambda level: _random_sign(level / LEVEL_DENOM * 30.0),
    "Posterize": lambda level: int(level / LEVEL_DENOM * 4),
    "PosterizeIncreasing": lambda level: 4 - int(level / LEVEL_DENOM * 4),
    "Solarize": lambda level: min(256, int(level / LEVEL_DENOM * 256)),
    "SolarizeIncreasing": lambda level: 256 - min(256, int(level / LEVEL_DENOM * 256)),
    "SolarizeAdd": lambda level: min(128, int(level / LEVEL_DENOM * 110)),
    "Color": _enhance,
    "Contrast": _enhance,
    "Brightness": _enhance,
    "Sharpness": _enhance,
    "ColorIncreasing": _enhance_increasing,
    "ContrastIncreasing": _enhance_increasing,
    "BrightnessIncreasing": _enhance_increasing,
    "SharpnessIncreasing": _enhance_increasing,
    "ShearX": lambda level: _random_sign(level / LEVEL_DENOM * 0.3),
    "ShearY": lambda level: _random_sign(level / LEVEL_DENOM * 0.3),
    "TranslateXRel": lambda level: _random_sign(level / LEVEL_DENOM * 0.45),
    "TranslateYRel": lambda level: _random_sign(level / LEVEL_DENOM * 0.45),
}

# The operations by what they take besides the image: nothing, the argument, or the argument
# and the fill colour. An increasing version applies its base operation.
_NO_ARG = {"AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert}
_ARG = {"Posterize": posterize, "Solarize": solarize, "SolarizeAdd": solarize_add, "Color": color,
        "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness}
_ARG_AND_FILL = {"Rotate": rotate, "ShearX": shear_x, "ShearY": shear_y,
                 "TranslateXRel": translate_x_rel, "TranslateYRel": translate_y_rel}
_BASE_OP = {increasing: base for base, increasing in INCREASING.items()}


def apply_op(name: str, img: torch.Tensor, magnitude: float, fill: torch.Tensor) -> torch.Tensor:
    """One named operation at ``magnitude`` (0..mmax) on 0..255 values ``(C, H, W)``."""
    op = _BASE_OP.get(name, name)
    if op in _NO_ARG:
        return _NO_ARG[op](img)
    arg = LEVEL_TO_ARG[name](magnitude)
    return _ARG[op](img, arg) if op in _ARG else _ARG_AND_FILL[op](img, arg, fill)


class RandAugment:
    """``RandAugment("rand-m9-mstd0.5-inc1", fill=mean)(image)`` on ``(C, H, W)`` in [0, 1].

    ``fill`` is the colour (per channel, in [0, 1]) of pixels that rotation, shear and
    translation uncover: the normalisation mean, as timm uses. Returns a new tensor in [0, 1].
    """

    def __init__(self, policy: str | RandAugmentPolicy, fill: Sequence[float] = (0.5, 0.5, 0.5)):
        self.policy = parse_policy(policy) if isinstance(policy, str) else policy
        self.fill = tuple(float(round(255 * v)) for v in fill)

    def __repr__(self) -> str:
        return f"RandAugment({self.policy})"

    def _magnitude(self) -> float:
        p = self.policy
        magnitude = p.magnitude
        if p.magnitude_std == math.inf:
            magnitude = float(torch.empty(()).uniform_(0.0, magnitude))
        elif p.magnitude_std > 0:
            magnitude = float(torch.normal(torch.tensor(magnitude), torch.tensor(p.magnitude_std)))
        return max(0.0, min(magnitude, p.magnitude_max))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 3:
            raise ValueError(f"RandAugment expects one image (C, H, W), got shape {tuple(image.shape)}")
        dtype = image.dtype
        img = _store(image.float() * 255.0)
        fill = img.new_tensor(self.fill if len(self.fill) == img.shape[0] else self.fill[:1] * img.shape[0])
        ops = self.policy.ops
        for index in torch.randint(len(ops), (self.policy.num_layers,)).tolist():
            if self.policy.prob < 1.0 and torch.rand(()).item() >= self.policy.prob:
                continue
            img = apply_op(ops[index], img, self._magnitude(), fill)
        return (img / 255.0).to(dtype)
