"""The official recipes shipped in recipes/ load with --config and resolve to their settings."""

from pathlib import Path

import pytest

from spectformer import config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def resolve(*argv):
    explicit, yaml_values = config.parse_train_args(list(argv))
    return config.resolve(explicit, yaml_values)


def test_every_recipe_is_listed_here():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == [
        "gfnet.yaml", "spectformer_h_token_label.yaml", "spectformer_vanilla.yaml"]


@pytest.mark.parametrize("name,model", [("spectformer_vanilla", "spectformer_s"), ("gfnet", "gfnet_h_ti")])
def test_vanilla_and_gfnet_recipes(name, model):
    cfg = resolve("--config", str(RECIPES / f"{name}.yaml"), "--data", "synthetic",
                  "--num-classes", "10")
    assert cfg.model == model and cfg.aa == "rand-m9-mstd0.5-inc1" and cfg.reprob == 0.0
    assert (cfg.mixup, cfg.cutmix, cfg.label_smoothing, cfg.clip_grad) == (0.8, 1.0, 0.1, 1.0)
    assert (cfg.epochs, cfg.batch_size, cfg.weight_decay, cfg.warmup_epochs) == (300, 128, 0.05, 5.0)
    assert cfg.base_lr_for(1024) == pytest.approx(1e-3)  # 5e-4 x global batch / 512
    # Flags override the file.
    assert resolve("--config", str(RECIPES / f"{name}.yaml"), "--data", "synthetic",
                   "--num-classes", "10", "--model", "gfnet_h_b").model == "gfnet_h_b"


def test_token_label_recipe(tmp_path):
    path = str(RECIPES / "spectformer_h_token_label.yaml")
    for split in ("train", "val"):  # the ImageFolder layout (not scanned by resolve)
        (tmp_path / split / "a").mkdir(parents=True)
    cfg = resolve("--config", path, "--data", str(tmp_path), "--token-label-data", str(tmp_path))
    assert cfg.model == "spectformer_h_s" and cfg.epochs == 310 and cfg.clip_grad is None
    assert (cfg.mixup, cfg.cutmix, cfg.reprob, cfg.remode) == (0.0, 0.0, 0.25, "pixel")
    assert (cfg.token_label_size, cfg.dense_weight, cfg.cls_weight, cfg.mix_token) == (7, 0.5, 1.0, True)
    with pytest.raises(ValueError, match="image-folder --data"):
        resolve("--config", path, "--data", "digits", "--token-label-data", str(tmp_path))
