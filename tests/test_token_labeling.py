"""Token labelling: score maps in LV-ViT's format, crop/flip consistency, the combined loss,
MixToken inside the hierarchical model, and a training run on a generated score-map folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spectformer
from spectformer import cli, config, train
from spectformer.data import ImageFolderDataset, ImageSpec
from spectformer.models.hierarchical import swap_box
from spectformer.token_labeling import (
    TokenLabelDataset, crop_scores, dense_scores, load_score_map, mix_token_box, score_map_path,
    token_label_loss,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_folder(root, score_root, per_class=3, size=(48, 40), map_side=6):
    """Images dark on the left half and bright on the right; their score maps put class 0
    on the left half of the map and class 1 on the right (top-2 of 3 classes, float16)."""
    from PIL import Image

    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, width // 2:] = 255
    cols = torch.arange(map_side).view(1, map_side).expand(map_side, map_side)
    left = cols < map_side // 2
    scores = torch.stack([torch.full((map_side, map_side), 6.0), torch.full((map_side, map_side), 1.0)])
    indices = torch.stack([torch.where(left, 0, 1), torch.where(left, 2, 2)]).float()
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (score_root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pixels).save(root / cls / f"img{i}.v1.png")
            torch.save(torch.stack([scores, indices]).half(), score_root / cls / f"img{i}.pt")


def test_score_map_files(tmp_path):
    assert score_map_path(tmp_path, "/data/train/n01/x_1.JPEG") == tmp_path / "n01" / "x_1.pt"
    assert score_map_path(tmp_path, "cls/img.v1.png") == tmp_path / "cls" / "img.pt"  # LV-ViT: first dot
    torch.save(torch.tensor([[[[2.5]]], [[[7.0]]]]).half(), tmp_path / "ok.pt")
    scores, indices = load_score_map(tmp_path / "ok.pt")
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64 and indices.item() == 7
    dense = dense_scores(scores, indices, 10)
    assert dense.shape == (10, 1, 1) and dense[7].item() == 2.5 and dense.sum().item() == 2.5
    with pytest.raises(ValueError, match="class indices"):
        dense_scores(scores, indices, 5)
    torch.save(torch.zeros(3, 4), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"score map '.*bad.pt' must hold a \(2, k, h, w\)"):
        load_score_map(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="no score map '.*missing.pt'"):
        load_score_map(tmp_path / "missing.pt")


def test_crop_scores_samples_the_crop_region():
    # A map whose single class scores the x coordinate (in map pixels, centres at i + 0.5):
    # bilinear sampling is exact for it away from the borders, so every cell averages to the
    # x of its centre.
    side = 16
    dense = (torch.arange(side, dtype=torch.float64) + 0.5).view(1, 1, side).expand(1, side, side)
    box = (0.25, 0.25, 0.75, 0.75)  # map pixels 4..12
    out = crop_scores(dense, box, (4, 4))
    assert out.shape == (17, 1)
    cell_x = 4 + (torch.arange(4, dtype=torch.float64) + 0.5) * 2
    torch.testing.assert_close(out[1:, 0].view(4, 4), cell_x.expand(4, 4))
    torch.testing.assert_close(out[0, 0], torch.tensor(8.0, dtype=torch.float64))  # whole-crop mean
    flipped = crop_scores(dense, box, (4, 4), flip=True)
    torch.testing.assert_close(flipped[1:, 0].view(4, 4), cell_x.flip(0).expand(4, 4))


def test_dataset_crops_and_flips_score_maps_with_the_image(tmp_path):
    write_folder(tmp_path / "train", tmp_path / "scores")
    spec = ImageSpec(in_chans=3, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = ImageFolderDataset(tmp_path / "train", spec, train=True)
    data = TokenLabelDataset(images, tmp_path / "scores", num_classes=3, grid=(4, 4))
    torch.manual_seed(0)
    checked, flipped = 0, 0
    for _ in range(8):
        for index in range(len(data)):
            image, label, targets = data[index]
            assert image.shape == (3, 32, 32) and targets.shape == (17, 3)
            torch.testing.assert_close(targets.sum(-1), torch.ones(17))
            brightness = F.avg_pool2d(image[:1].unsqueeze(0) * 0.5 + 0.5, 8)[0, 0].flatten()
            winner = targets[1:].argmax(-1)
            clear = (brightness < 0.1) | (brightness > 0.9)  # cells not straddling the edge
            # Dark cells must be labelled class 0 and bright cells class 1, flips included.
            assert torch.equal(winner[clear], (brightness[clear] > 0.5).long())
            checked += int(clear.sum())
            flipped += int(brightness.view(4, 4)[:, 0].mean() > brightness.view(4, 4)[:, -1].mean())
            assert label in (0, 1)
    assert checked > 200 and 5 < flipped < 43
    with pytest.raises(FileNotFoundError, match="^score_root '.*nowhere' is not a folder") as info:
        TokenLabelDataset(images, tmp_path / "nowhere", 3, (4, 4))
    assert info.value.setting == "score_root"
    with pytest.raises(FileNotFoundError, match=r"^score_root '.*' must hold score maps.*\.pt"):
        TokenLabelDataset(images, tmp_path / "train", 3, (4, 4))


def test_combined_loss():
    torch.manual_seed(0)
    cls_logits, token_logits = torch.randn(4, 5), torch.randn(4, 6, 5)
    targets = torch.softmax(torch.randn(4, 7, 5), -1)

    def ce(logits, target):
        return -(target * logits.log_softmax(-1)).sum(-1).mean()

    loss = token_label_loss(cls_logits, token_logits, targets)
    expected = ce(cls_logits, targets[:, 0]) + 0.5 * ce(token_logits.reshape(-1, 5), targets[:, 1:].reshape(-1, 5))
    torch.testing.assert_close(loss, expected)
    mixed = token_label_loss(cls_logits, token_logits, targets, lam=0.75, cls_weight=2.0, dense_weight=0.0)
    torch.testing.assert_close(mixed, 2.0 * ce(cls_logits, 0.75 * targets[:, 0] + 0.25 * targets.flip(0)[:, 0]))
    smooth = token_label_loss(cls_logits, token_logits, targets, smoothing=0.1)
    soft = targets * 0.9 + 0.02
    torch.testing.assert_close(smooth, ce(cls_logits, soft[:, 0]) + 0.5 * ce(token_logits.reshape(-1, 5),
                                                                            soft[:, 1:].reshape(-1, 5)))
    with pytest.raises(ValueError, match=r"token targets must be .* got \(4, 5, 5\)"):
        token_label_loss(cls_logits, token_logits, targets[:, :5])


def test_mix_token_box():
    torch.manual_seed(0)
    for _ in range(50):
        lam, (y0, y1, x0, x1) = mix_token_box((7, 7))
        assert 0 <= y0 <= y1 <= 7 and 0 <= x0 <= x1 <= 7
        assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 49)


def tiny_h(**overrides):
    config = dict(img_size=64, stem_hidden_dim=8, embed_dims=(16, 24, 32, 40), num_heads=(1, 2, 2, 4),
                  depths=(1, 1, 1, 1), num_classes=6)
    return spectformer.create_model("spectformer_h_s", **{**config, **overrides}).double().eval()


def test_mix_token_swaps_stage_1_tokens_and_unswaps_the_outputs():
    torch.manual_seed(0)
    model = tiny_h()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    box = (0, 1, 1, 2)  # one stage-4 token = 8x8 stage-1 tokens
    cls_logits, token_logits = model(x, return_dense=True, mix_box=box)
    # The same by hand: swap the stage-1 tokens with a hook, then swap the outputs back.
    hook = model.patch_embed1.register_forward_hook(
        lambda module, args, out: (swap_box(out[0], out[1], (0, 8, 8, 16)), out[1]))
    ref_cls, ref_tokens = model.forward_dense(x)
    hook.remove()
    torch.testing.assert_close(cls_logits, ref_cls)
    torch.testing.assert_close(token_logits, swap_box(ref_tokens, (2, 2), box))
    # A box over everything: the network sees the flipped batch, the tokens come back in place.
    plain_cls, plain_tokens = model.forward_dense(x)
    all_cls, all_tokens = model(x, return_dense=True, mix_box=(0, 2, 0, 2))
    torch.testing.assert_close(all_cls, plain_cls.flip(0))
    torch.testing.assert_close(all_tokens, plain_tokens)


def resolve(*argv):
    explicit, yaml_values = config.parse_train_args(list(argv))
    return config.resolve(explicit, yaml_values)


def test_token_label_flags_are_validated(tmp_path):
    data = tmp_path / "data"
    write_folder(data / "train", tmp_path / "scores", per_class=1)
    write_folder(data / "val", tmp_path / "unused", per_class=1)
    with pytest.raises(ValueError, match="--token-label-data needs an image-folder --data"):
        resolve("--model", "spectformer_h_s", "--data", "digits", "--token-label-data", str(tmp_path))
    with pytest.raises(ValueError, match="--mixup 0 --cutmix 0"):
        resolve("--model", "spectformer_h_s", "--data", str(data), "--token-label-data", str(tmp_path))
    with pytest.raises(ValueError, match="--dense-weight"):
        resolve("--model", "spectformer_h_s", "--data", str(data), "--dense-weight", "-1")


def test_training_with_token_labels(tmp_path, capsys):
    write_folder(tmp_path / "data" / "train", tmp_path / "scores", per_class=4)
    write_folder(tmp_path / "data" / "val", tmp_path / "unused", per_class=1)
    common = ["--data", str(tmp_path / "data"), "--token-label-data", str(tmp_path / "scores"),
              "--img-size", "64", "--num-classes", "3", "--batch-size", "4", "--epochs", "1",
              "--mixup", "0", "--cutmix", "0", "--workers", "0", "--aa", "rand-m9-mstd0.5-inc1",
              "--reprob", "0.25", "--min-lr", "0"]
    with pytest.raises(ValueError, match="auxiliary head"):
        train.main(["--model", "gfnet_h_ti", *common, "--output", str(tmp_path / "no")])
    with pytest.raises(ValueError, match="--token-label-size 7 does not match.*2x2"):
        train.main(["--model", "spectformer_h_s", *common, "--token-label-size", "7",
                    "--output", str(tmp_path / "no2")])
    # The library names the folder score_root; the command line names the flag that set it.
    nowhere = str(tmp_path / "nowhere")
    argv = ["--model", "spectformer_h_s", *common, "--token-label-data", nowhere,
            "--output", str(tmp_path / "no3")]
    assert cli.run(train.main, "spectformer.train", argv) == cli.ERROR_EXIT
    assert f"error: --token-label-data {nowhere!r} is not a folder" in capsys.readouterr().err
    out = tmp_path / "run"
    assert train.main(["--model", "spectformer_h_s", *common, "--token-label-size", "2",
                       "--output", str(out)]) == 0
    assert (out / "last.pt").is_file()
