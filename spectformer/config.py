"""Training configuration: defaults, per-model recipes, YAML files and command-line flags.

Precedence, lowest first: the official SpectFormer recipe (``TrainConfig`` defaults), the
model's own recipe (``MODEL_RECIPES``), the checkpoint's configuration when resuming, the
YAML file (``--config``), then the flags actually given on the command line. The resolved
configuration is written next to the run's outputs as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from . import checks

AMP_MODES = ("auto", "none", "bf16", "fp16")


@dataclass
class TrainConfig:
    # What to train and on which data.
    model: str = ""
    data: str = ""
    backend: Optional[str] = None
    img_size: Optional[int] = None
    num_classes: Optional[int] = None
    drop_path: Optional[float] = None
    synthetic_train_size: int = 1281
    synthetic_val_size: int = 256
    crop_pct: float = 0.875
    # Optimisation (official vanilla recipe: AdamW, lr 5e-4 x global batch / 512, cosine).
    epochs: int = 300
    batch_size: int = 128
    lr: Optional[float] = None
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: Optional[float] = 1.0
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    # Execution.
    amp: str = "auto"
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    compile: bool = False
    channels_last: bool = False
    seed: int = 0
    workers: int = 4
    dist_timeout: float = 10.0
    # Outputs and resumption.
    output: str = ""
    resume: Optional[str] = None
    stop_after: Optional[int] = None
    log_interval: int = 10
    # Augmentation beyond mixup/cutmix (off by default; the official recipes in recipes/ set them).
    aa: Optional[str] = None
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    # Token labelling (hierarchical models with an auxiliary head).
    token_label_data: Optional[str] = None
    token_label_size: Optional[int] = None
    dense_weight: float = 0.5
    cls_weight: float = 1.0
    mix_token: bool = True

    def base_lr_for(self, global_batch: int) -> float:
        """``--lr`` if given, else the recipe's 5e-4 scaled linearly with the global batch."""
        return self.lr if self.lr is not None else 5e-4 * global_batch / 512

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Recipes that differ from the ImageNet defaults, for models meant for small data sets.
# spectformer_digits: 1,437 training images of 8x8 digits; mixup/cutmix only slow it down,
# and a higher learning rate with a short warm-up reaches >= 90% in a few epochs.
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "spectformer_digits": dict(
        epochs=12, batch_size=64, lr=2e-3, warmup_epochs=1.0, min_lr=1e-5,
        mixup=0.0, cutmix=0.0, label_smoothing=0.1, workers=0,
    ),
}

FLAG_HELP = {
    "model": "registered model name (see spectformer.list_models())",
    "data": "'digits', 'synthetic', or a folder with train/<class>/* and val/<class>/*",
    "backend": "spectral gating backend (default: auto; see available_backends())",
    "img_size": "input resolution (default: the model's)",
    "num_classes": "classifier size (default: the data set's class count)",
    "drop_path": "stochastic depth rate (default: the model's)",
    "synthetic_train_size": "images per epoch with --data synthetic",
    "synthetic_val_size": "validation images with --data synthetic",
    "crop_pct": "evaluation centre-crop fraction (resize to img_size / crop_pct first)",
    "epochs": "total epochs of the schedule",
    "batch_size": "images per process per step",
    "lr": "peak learning rate (default: 5e-4 x global batch / 512)",
    "weight_decay": "AdamW weight decay (norms, biases and position embeddings exempt)",
    "warmup_epochs": "linear warm-up length in epochs (fractions allowed)",
    "warmup_lr": "learning rate at the start of the warm-up",
    "min_lr": "learning rate at the end of the cosine schedule",
    "clip_grad": "clip the global gradient norm to this value (0 disables)",
    "label_smoothing": "label smoothing",
    "mixup": "mixup alpha (0 disables)",
    "cutmix": "cutmix alpha (0 disables)",
    "mixup_prob": "probability of mixing a batch at all",
    "mixup_switch_prob": "probability of cutmix instead of mixup when both are on",
    "amp": "autocast dtype: auto (bf16 on CUDA, none on CPU), none, bf16, fp16 (loss-scaled)",
    "model_ema": "keep an exponential moving average of the weights and validate it too",
    "model_ema_decay": "EMA decay per step",
    "compile": "torch.compile the model",
    "channels_last": "channels-last memory format for images and convolutions",
    "seed": "random seed",
    "workers": "data loader worker processes per training process",
    "dist_timeout": "minutes a process waits for the others in a collective (torchrun) "
                    "before failing",
    "output": "output folder (default: output/train/<model>-<date>-<time>; when resuming, "
              "the folder of the --resume file)",
    "resume": "checkpoint to continue from (e.g. OUTPUT/last.pt); its settings are the "
              "defaults",
    "stop_after": "stop after this many epochs in this run (for time-limited jobs); "
                  "the schedule still spans --epochs",
    "log_interval": "steps between progress-bar loss updates",
    "aa": "RandAugment policy, timm-style, e.g. rand-m9-mstd0.5-inc1 (the official recipes); "
          "'none' disables. Applied to digits and image-folder training images",
    "reprob": "random erasing probability per training image (0 disables)",
    "remode": "random erasing fill: const (zeros), rand (a normal colour per channel), "
              "pixel (normal noise per pixel)",
    "recount": "random erasing: at most this many rectangles per image",
    "token_label_data": "folder of per-image dense score maps (LV-ViT format, "
                        "<class>/<image stem>.pt) for token labelling; needs a hierarchical "
                        "model with an auxiliary head and an image-folder --data",
    "token_label_size": "side of the dense target grid (default: the model's last token grid)",
    "dense_weight": "token labelling: weight of the auxiliary dense loss",
    "cls_weight": "token labelling: weight of the class-token loss",
    "mix_token": "token labelling: MixToken (a token-aligned box swapped with the flipped batch)",
}

# Keys a resumed run must share with its checkpoint: changing them changes the network or
# the data, so the saved state would not fit or would mean something else.
MUST_MATCH_ON_RESUME = ("model", "data", "img_size", "num_classes")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _optional(kind):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _field_type(field: dataclasses.Field):
    annotation = str(field.type)
    kind = {"int": int, "float": float, "str": str, "bool": bool}[
        annotation.replace("Optional[", "").rstrip("]")
    ]
    return kind, annotation.startswith("Optional[")


def _recipes_epilog() -> str:
    lines = ["Small models carry their own recipe, used where neither a flag nor --config "
             "sets the value:"]
    for model, recipe in MODEL_RECIPES.items():
        lines.append(f"  {model}: " + ", ".join(f"{_flag(k)} {v}" for k, v in recipe.items()))
    return "\n".join(lines)


def build_parser(description: str) -> argparse.ArgumentParser:
    """A parser whose defaults are all suppressed, so parsed values are exactly those given."""
    from .cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m spectformer.train", description=description,
        argument_default=argparse.SUPPRESS, epilog=_recipes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of settings (flags override it)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    for field in fields(TrainConfig):
        kind, optional = _field_type(field)
        help_text = FLAG_HELP[field.name]
        if "(default:" not in help_text:
            help_text += f" (default: {field.default})"
        if kind is bool:
            # `--model-ema` alone turns it on; `--model-ema false` turns it off again.
            parser.add_argument(_flag(field.name), dest=field.name, nargs="?", const=True,
                                type=_parse_bool, help=help_text)
        elif field.name == "amp":
            parser.add_argument(_flag(field.name), dest=field.name, choices=AMP_MODES,
                                help=help_text)
        else:
            parser.add_argument(_flag(field.name), dest=field.name,
                                type=_optional(kind) if optional else kind, help=help_text)
    return parser


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r}: no such file")
    try:
        with path.open() as f:
            loaded = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"--config {str(path)!r} is not valid YAML: "
                         f"{' '.join(str(exc).split())}") from exc
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {str(path)!r}: expected a mapping of settings, "
                         f"got {type(loaded).__name__}")
    return check_keys({str(k).replace("-", "_"): v for k, v in loaded.items()}, source=str(path))


def check_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                         f"valid settings are {', '.join(sorted(valid))}")
    return values


def coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check each value's type against ``TrainConfig`` (YAML gives ints where floats are meant)."""
    out = {}
    by_name = {f.name: f for f in fields(TrainConfig)}
    for name, value in values.items():
        kind, optional = _field_type(by_name[name])
        if value is None:
            if not optional:
                raise ValueError(f"{source}: {name} must not be null")
            out[name] = None
        elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
        elif kind is bool and isinstance(value, str):
            out[name] = _parse_bool(value)
        elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            out[name] = value
        else:
            raise ValueError(f"{source}: {name} must be {kind.__name__}, got {value!r}")
    if out.get("amp", "auto") not in AMP_MODES:
        raise ValueError(f"{source}: amp must be one of {', '.join(AMP_MODES)}, got {out['amp']!r}")
    return out


def resolve(
    explicit: dict[str, Any],
    yaml_values: Optional[dict[str, Any]] = None,
    checkpoint_values: Optional[dict[str, Any]] = None,
) -> TrainConfig:
    """Merge the layers in precedence order; see the module docstring."""
    yaml_values = coerce(yaml_values or {}, "config file")
    explicit = coerce(explicit, "command line")
    checkpoint_values = {k: v for k, v in (checkpoint_values or {}).items()
                         if k in {f.name for f in fields(TrainConfig)}}
    given = {**yaml_values, **explicit}
    model = given.get("model") or checkpoint_values.get("model") or ""
    merged = {**MODEL_RECIPES.get(model, {}), **checkpoint_values, **given}
    # The resume target and the per-run stop point never carry over from a checkpoint.
    merged["resume"] = given.get("resume")
    merged["stop_after"] = given.get("stop_after")
    if merged["resume"] and "output" not in given:
        # Continue beside the file resumed (a copied run stays a copy), not in the folder
        # the checkpoint was first written to.
        merged["output"] = str(Path(merged["resume"]).parent)
    cfg = TrainConfig(**merged)
    if not cfg.model:
        raise checks.UsageError("--model is required (see spectformer.list_models())")
    if not cfg.data:
        raise checks.UsageError("--data is required: 'digits', 'synthetic' or an ImageFolder path")
    if not cfg.output:
        # A fresh folder per run, so starting again never collides with an earlier run.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.output = str(Path("output") / "train" / f"{cfg.model}-{stamp}")
    check_settings(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    return cfg


def check_settings(cfg: TrainConfig, world_size: int = 1) -> None:
    """Every value in range, before anything is built, scanned or written."""
    number = checks.number
    for name in ("epochs", "batch_size", "log_interval", "synthetic_train_size",
                 "synthetic_val_size"):
        number(name, getattr(cfg, name), low=1)
    number("stop_after", cfg.stop_after, low=1, optional=True)
    number("workers", cfg.workers, low=0)
    number("num_classes", cfg.num_classes, low=1, optional=True)
    number("img_size", cfg.img_size, low=1, optional=True)
    number("drop_path", cfg.drop_path, low=0, high=1, high_open=True, optional=True)
    number("crop_pct", cfg.crop_pct, low=0, high=1, low_open=True)
    number("lr", cfg.lr, low=0, low_open=True, optional=True)
    number("weight_decay", cfg.weight_decay, low=0)
    number("warmup_epochs", cfg.warmup_epochs, low=0)
    number("warmup_lr", cfg.warmup_lr, low=0)
    number("min_lr", cfg.min_lr, low=0)
    peak = cfg.base_lr_for(cfg.batch_size * world_size)
    if cfg.min_lr > peak:
        raise checks.UsageError(f"--min-lr {cfg.min_lr:g} is above the peak learning rate "
                                f"{peak:g} (--lr, or 5e-4 x global batch / 512)")
    number("clip_grad", cfg.clip_grad, low=0, optional=True)
    number("label_smoothing", cfg.label_smoothing, low=0, high=1, high_open=True)
    number("mixup", cfg.mixup, low=0)
    number("cutmix", cfg.cutmix, low=0)
    number("mixup_prob", cfg.mixup_prob, low=0, high=1)
    number("mixup_switch_prob", cfg.mixup_switch_prob, low=0, high=1)
    number("model_ema_decay", cfg.model_ema_decay, low=0, high=1, high_open=True)
    number("dist_timeout", cfg.dist_timeout, low=0, low_open=True)
    checks.model_name(cfg.model)
    checks.data_source(cfg.data, cfg.num_classes)
    checks.backend(cfg.backend, checks.default_device())
    checks.writable_folder("output", cfg.output)
    check_recipe_options(cfg)


def check_recipe_options(cfg: TrainConfig) -> None:
    """Validate the augmentation and token-labelling settings, naming the flag at fault."""
    from .random_erasing import RandomErasing
    from .randaugment import parse_policy

    if cfg.aa is not None:
        if cfg.aa.strip().lower() == "none":
            cfg.aa = None
        else:
            parse_policy(cfg.aa, "--aa")
    RandomErasing(cfg.reprob, cfg.remode, cfg.recount)  # raises naming --reprob/--remode/--recount
    if cfg.token_label_data is not None:
        if cfg.data in ("digits", "synthetic"):
            raise checks.UsageError("--token-label-data needs an image-folder --data (score maps are "
                             f"per image file), got --data {cfg.data!r}")
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise checks.UsageError("token labelling mixes with MixToken instead of mixup/cutmix: "
                             "pass --mixup 0 --cutmix 0 (as the official recipe does)")
    if cfg.token_label_size is not None and cfg.token_label_size < 1:
        raise checks.UsageError(f"--token-label-size must be >= 1, got {cfg.token_label_size}")
    for name in ("dense_weight", "cls_weight"):
        if getattr(cfg, name) < 0:
            raise checks.UsageError(f"{_flag(name)} must be >= 0, got {getattr(cfg, name)}")


def parse_train_args(argv: Optional[Sequence[str]] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(explicit flag values, YAML values)`` from the command line."""
    parser = build_parser("Train a SpectFormer / GFNet model.")
    args = vars(parser.parse_args(argv))
    args.pop("debug", None)  # read by cli.run
    config_path = args.pop("config", None)
    yaml_values = load_yaml(config_path) if config_path else {}
    return args, yaml_values


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    """The resolved settings, loadable again with ``--config``."""
    import yaml

    from .checkpointing import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
