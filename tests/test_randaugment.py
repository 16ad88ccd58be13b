"""RandAugment (timm policy strings, torch ops) and random erasing, and their training flags.

Expected values are worked out by hand from the operations' definitions (timm's magnitude
maps, the 8-bit histogram equalisation, PIL's affine conventions).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from spectformer import config, train
from spectformer.randaugment import (
    BASE_OPS, INCREASING_OPS, LEVEL_TO_ARG, RandAugment, apply_op, auto_contrast, brightness, color,
    contrast, equalize, invert, parse_policy, posterize, rotate, shear_x, solarize, solarize_add,
    translate_x_rel, translate_y_rel,
)
from spectformer.random_erasing import RandomErasing


pytestmark = pytest.mark.usefixtures("one_thread")


def image255(chans=3, h=12, w=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (chans, h, w), generator=gen).float()


# -- the policy string ----------------------------------------------------------------------

def test_parse_the_official_policy():
    policy = parse_policy("rand-m9-mstd0.5-inc1")
    assert (policy.magnitude, policy.num_layers, policy.magnitude_std, policy.magnitude_max,
            policy.increasing, policy.prob) == (9, 2, 0.5, 10, True, 0.5)
    assert policy.ops == INCREASING_OPS and len(policy.ops) == 15
    other = parse_policy("rand-n3-m10-mmax12-p1.0-inc0")
    assert (other.num_layers, other.magnitude, other.magnitude_max, other.prob) == (3, 10, 12, 1.0)
    assert other.ops == BASE_OPS
    assert parse_policy("rand-mstd101").magnitude_std == math.inf  # uniform magnitudes
    assert parse_policy("rand").magnitude == 10


@pytest.mark.parametrize("bad,why", [
    ("auto-m9", "only RandAugment"), ("rand-x9", "unknown section 'x9'"),
    ("rand-m9.5", "m must be an integer"), ("rand-m9-m8", "given twice"),
    ("rand-inc2", "inc must be 0 or 1"), ("rand-p2", "p must be in"), ("rand-n0", "n "),
    ("rand-m", "unknown section 'm'"), ("rand--m9", "unknown section ''"),
])
def test_malformed_policies_name_the_setting(bad, why):
    with pytest.raises(ValueError, match=r"^policy '.*'.*" + why.replace("(", r"\(")) as info:
        parse_policy(bad)
    assert info.value.setting == "policy"


# -- the operations -------------------------------------------------------------------------

def test_pixel_operations():
    img = image255()
    assert torch.equal(invert(img), 255 - img)
    assert set(posterize(img, 1).unique().tolist()) <= {0.0, 128.0}
    assert torch.equal(posterize(img, 8), img)
    assert torch.equal(posterize(img, 0), torch.zeros_like(img))
    assert torch.equal(solarize(img, 128), torch.where(img >= 128, 255 - img, img))
    assert torch.equal(solarize(img, 256), img)
    assert torch.equal(solarize_add(img, 100), torch.where(img < 128, (img + 100).clamp(max=255), img))
    stretched = auto_contrast(img * 0.5 + 20)
    assert stretched.amin(dim=(1, 2)).tolist() == [0] * 3 and stretched.amax(dim=(1, 2)).tolist() == [255] * 3
    flat = torch.full((1, 4, 4), 77.0)
    assert torch.equal(auto_contrast(flat), flat)


def test_equalize_lookup_table():
    ramp = torch.arange(256.0).view(1, 16, 16)
    assert torch.equal(equalize(ramp), ramp)  # a flat histogram is already equalised
    two = torch.tensor([10.0, 20.0]).repeat_interleave(512).view(1, 32, 32)
    # step = (1024 - 512) // 255 = 2; level 10 -> (1 + 0) // 2 = 0, level 20 -> (1 + 512) // 2 = 256 -> 255
    assert torch.equal(equalize(two).unique(), torch.tensor([0.0, 255.0]))


def test_enhance_operations_blend_towards_their_degenerate_image():
    img = image255()
    for op in (color, contrast, brightness):
        assert torch.equal(op(img, 1.0), img)
    assert torch.equal(brightness(img, 0.0), torch.zeros_like(img))
    grey = color(img, 0.0)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    luma = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).round()
    assert torch.equal(grey[0], luma)
    assert contrast(img, 0.0).unique().numel() == 1
    assert torch.equal(brightness(img, 1.9), (img * 1.9).round().clamp(0, 255))


def test_geometric_operations():
    img = image255(h=8, w=8)
    fill = torch.tensor([1.0, 2.0, 3.0])
    # A quarter turn maps pixel centres onto pixel centres: exact, and counter-clockwise.
    assert torch.equal(rotate(img, 90.0, fill), torch.rot90(img, 1, dims=(1, 2)))
    assert torch.equal(rotate(img, 0.0, fill), img)
    assert torch.equal(shear_x(img, 0.0, fill), img)
    # Output x shows input x + 0.25 * 8 = x + 2: the image moves left, the mean colour fills.
    moved = translate_x_rel(img, 0.25, fill)
    assert torch.equal(moved[:, :, :6], img[:, :, 2:])
    assert torch.equal(moved[:, :, 6:], fill.view(3, 1, 1).expand(3, 8, 2))
    down = translate_y_rel(img, -0.25, fill)
    assert torch.equal(down[:, 2:], img[:, :6]) and torch.equal(down[:, :2], fill.view(3, 1, 1).expand(3, 2, 8))


def test_magnitude_maps_follow_timm():
    torch.manual_seed(0)
    assert abs(LEVEL_TO_ARG["Rotate"](9)) == pytest.approx(27.0)
    assert abs(LEVEL_TO_ARG["ShearX"](9)) == pytest.approx(0.27)
    assert abs(LEVEL_TO_ARG["TranslateYRel"](10)) == pytest.approx(0.45)
    assert LEVEL_TO_ARG["PosterizeIncreasing"](9) == 1
    assert LEVEL_TO_ARG["SolarizeIncreasing"](9) == 256 - 230
    assert LEVEL_TO_ARG["SolarizeAdd"](9) == 99
    assert LEVEL_TO_ARG["Color"](9) == pytest.approx(1.72)
    assert {round(LEVEL_TO_ARG["ContrastIncreasing"](9), 6) for _ in range(40)} == {0.19, 1.81}
    signs = {math.copysign(1, LEVEL_TO_ARG["Rotate"](5)) for _ in range(40)}
    assert signs == {-1.0, 1.0}


@pytest.mark.parametrize("name", sorted(set(BASE_OPS) | set(INCREASING_OPS)))
@pytest.mark.parametrize("chans", [1, 3])
def test_every_operation_keeps_an_8_bit_image(name, chans):
    torch.manual_seed(0)
    img = image255(chans)
    out = apply_op(name, img, 9.0, torch.full((chans,), 124.0))
    assert out.shape == img.shape and out.dtype == img.dtype
    assert out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())


def test_rand_augment_on_images_in_unit_range():
    policy = "rand-m9-mstd0.5-inc1"
    image = torch.rand(3, 16, 16)
    torch.manual_seed(3)
    first = RandAugment(policy, fill=(0.485, 0.456, 0.406))(image)
    torch.manual_seed(3)
    again = RandAugment(policy, fill=(0.485, 0.456, 0.406))(image)
    assert torch.equal(first, again)  # all draws come from torch's generator
    assert first.shape == image.shape and first.dtype == image.dtype
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first * 255, (first * 255).round(), atol=1e-4, rtol=0)
    always = RandAugment("rand-m9-p1.0")
    changed = sum(not torch.allclose(always(image), image, atol=1 / 255) for _ in range(10))
    assert changed >= 8
    grey = RandAugment(policy, fill=(0.5,))(torch.rand(1, 8, 8))
    assert grey.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="one image"):
        always(torch.rand(2, 3, 8, 8))


def test_magnitude_noise_is_clipped():
    torch.manual_seed(0)
    noisy = RandAugment("rand-m9-mstd2")
    draws = torch.tensor([noisy._magnitude() for _ in range(2000)])
    assert draws.min() >= 0 and draws.max() == 10  # clipped at mmax
    assert 8.3 < draws.mean() < 9.0
    uniform = torch.tensor([RandAugment("rand-m8-mstd101")._magnitude() for _ in range(500)])
    assert uniform.min() >= 0 and uniform.max() <= 8 and 3.3 < uniform.mean() < 4.7


# -- random erasing -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["const", "rand", "pixel"])
def test_random_erasing_rectangles(mode):
    torch.manual_seed(0)
    eraser = RandomErasing(prob=1.0, mode=mode, max_count=1)
    images = torch.full((16, 3, 20, 30), 7.0)
    erased = eraser(images)
    assert torch.equal(images, torch.full_like(images, 7.0))  # the input is left alone
    for image in erased:
        mask = (image != 7.0).any(0)
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == h * w  # one filled rectangle
        assert 0.02 * 600 - 2 * (h + w) <= h * w <= 600 / 3 + 2 * (h + w)
        patch = image[:, mask]
        if mode == "const":
            assert torch.equal(patch, torch.zeros_like(patch))
        elif mode == "rand":
            assert torch.equal(patch, patch[:, :1].expand_as(patch))
        else:
            assert patch.std() > 0.5


def test_random_erasing_probability_count_and_errors():
    torch.manual_seed(0)
    images = torch.full((200, 1, 16, 16), 3.0)
    erased = RandomErasing(prob=0.25, mode="const")(images)
    share = (erased != 3.0).flatten(1).any(1).float().mean().item()
    assert 0.15 < share < 0.35
    single = RandomErasing(prob=1.0, mode="const", max_count=3)(torch.ones(1, 40, 40))
    assert single.shape == (1, 40, 40) and (single == 0).any()
    assert torch.equal(RandomErasing(prob=0.0)(images), images)
    # Library errors name the parameter and the value; the flags are the command line's.
    for setting, value in [("prob", 1.5), ("mode", "noise"), ("max_count", 0)]:
        with pytest.raises(ValueError, match=f"^{setting} .*got {re.escape(repr(value))}$") as info:
            RandomErasing(**{setting: value})
        assert info.value.setting == setting and "--" not in str(info.value)


# -- training flags -------------------------------------------------------------------------

def resolve(*argv):
    explicit, yaml_values = config.parse_train_args(["--model", "spectformer_digits", "--data",
                                                     "digits", *argv])
    return config.resolve(explicit, yaml_values)


def test_flags_are_validated():
    cfg = resolve("--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--remode", "const",
                  "--recount", "2")
    assert (cfg.aa, cfg.reprob, cfg.remode, cfg.recount) == ("rand-m9-mstd0.5-inc1", 0.25, "const", 2)
    assert resolve("--aa", "none").aa is None and resolve().aa is None and resolve().reprob == 0
    with pytest.raises(ValueError, match="--aa 'rand-m9-foo'.*unknown section 'foo'"):
        resolve("--aa", "rand-m9-foo")
    with pytest.raises(ValueError, match="--reprob"):
        resolve("--reprob", "1.5")
    with pytest.raises(ValueError, match="--remode"):
        resolve("--remode", "zeros")


def test_digits_trains_with_rand_augment_and_random_erasing(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "spectformer_digits", "--data", "digits", "--img-size", "16",
            "--epochs", "1", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25",
            "--output", str(out)]
    assert train.main(args) == 0
    saved = (out / "config.yaml").read_text()
    assert "aa: rand-m9-mstd0.5-inc1" in saved and "reprob: 0.25" in saved
