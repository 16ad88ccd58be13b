"""ImageFolder images of every common Pillow mode reach the model with their range kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spectformer import data

SIZE = 16
# A left-to-right ramp from black to white; every mode below encodes it.
RAMP = np.tile(np.linspace(0.0, 1.0, SIZE, dtype=np.float64), (SIZE, 1))


def _eight_bit(mode: str) -> Image.Image:
    grey = Image.fromarray(np.round(RAMP * 255).astype(np.uint8))
    if mode == "P":
        return grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    if mode == "RGBA":
        rgba = grey.convert("RGBA")
        rgba.putalpha(Image.new("L", rgba.size, 90))
        return rgba
    return grey.convert(mode)


def _make(mode: str) -> tuple[Image.Image, str]:
    if mode == "I;16":
        return Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)), "png"
    if mode == "I":
        return Image.fromarray(np.round(RAMP * 65535).astype(np.int32)), "tiff"
    if mode == "F":
        return Image.fromarray(RAMP.astype(np.float32)), "tiff"
    return _eight_bit(mode), ("tiff" if mode == "CMYK" else "png")


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("mode", ["I;16", "I", "F", "L", "LA", "P", "RGB", "RGBA", "CMYK"])
def test_every_mode_keeps_its_range(tmp_path, mode, in_chans):
    image, suffix = _make(mode)
    folder = tmp_path / "cls"
    folder.mkdir()
    image.save(folder / f"ramp.{suffix}")
    with Image.open(folder / f"ramp.{suffix}") as reread:
        assert reread.mode == mode  # the file really is in the mode under test
    spec = data.ImageSpec(in_chans=in_chans, img_size=SIZE, mean=(0.0,) * in_chans,
                          std=(1.0,) * in_chans)
    dataset = data.ImageFolderDataset(tmp_path, spec, train=False, crop_pct=1.0)
    tensor, label = dataset[0]
    assert tensor.shape == (in_chans, SIZE, SIZE) and label == 0
    expected = torch.from_numpy(RAMP).float().expand(in_chans, SIZE, SIZE)
    torch.testing.assert_close(tensor, expected, atol=1.5 / 255, rtol=0)


def test_training_crops_of_a_deep_image_stay_in_range(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)).save(folder / "a.png")
    spec = data.ImageSpec(in_chans=3, img_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    dataset = data.ImageFolderDataset(tmp_path, spec, train=True)
    torch.manual_seed(0)
    for _ in range(5):
        tensor, _ = dataset[0]
        assert 0.0 <= tensor.min() and tensor.max() <= 1.0 and tensor.std() > 0.05


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    spec = data.ImageSpec(in_chans=3, img_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    with pytest.raises(ValueError, match=r"class folder .*dog.* holds no images"):
        data.ImageFolderDataset(tmp_path, spec, train=True)
