"""Pillow images of any common mode -> the model's channels, with the value range kept.

``convert("RGB")`` alone is wrong for deep images: a 16-bit PNG (``I;16``) is clipped at 255
(almost all white) and a float TIFF (``F``) in [0, 1] becomes black. Here 8-bit images
(``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, ...) go through
Pillow's conversions, with alpha dropped; deep single-band images become a float band in
[0, 1]: 16-bit and 32-bit integers divided by 65535, floats taken as [0, 1]. Values outside
[0, 1] are clipped.
"""

from __future__ import annotations

import numpy as np

# Full scale of each deep integer mode. ``I`` (32-bit) is how 16-bit data usually arrives
# (older Pillow, TIFF), so it is read on the 16-bit scale too.
DEEP_INTEGER_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0,
                      "I": 65535.0}


def is_deep(mode: str) -> bool:
    return mode in DEEP_INTEGER_SCALE or mode == "F"


def to_eight_bit(image, in_chans: int):
    """An 8-bit image as ``L`` (one channel) or ``RGB``; palettes and alpha handled."""
    if image.mode in ("P", "PA"):
        # A palette may carry transparency; Pillow asks for RGBA first.
        image = image.convert("RGBA")
    return image.convert("L" if in_chans == 1 else "RGB")


def to_float_band(image):
    """A deep single-band image as a Pillow ``F`` image with values in [0, 1]."""
    from PIL import Image

    array = np.asarray(image)
    if image.mode == "F":
        values = array.astype(np.float32)
    else:
        values = array.astype(np.float32) / DEEP_INTEGER_SCALE[image.mode]
    values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    return Image.fromarray(np.clip(values, 0.0, 1.0).astype(np.float32))


def prepare(image, in_chans: int) -> tuple[list, float]:
    """``(bands or one image, divisor)``: apply the same geometry to each, stack the arrays,
    divide by ``divisor`` to get [0, 1]. Deep images give one ``F`` band (repeated later to
    the model's channels); 8-bit ones one ``L``/``RGB`` image and the divisor 255."""
    if is_deep(image.mode):
        return [to_float_band(image)], 1.0
    return [to_eight_bit(image, in_chans)], 255.0
