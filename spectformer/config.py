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
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from . import checks, runtime



def setting(default, help: str, **options):
    """A field of ``TrainConfig``: its default, the help text of its flag and any extra
    ``add_argument`` options."""
    return dataclasses.field(default=default, metadata={"help": help, **options})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, with its default and its help text (the flags and
    ``--help`` are made from these fields). ``resolve`` returns one, frozen."""

    # What to train and on which data.
    model: str = setting("", "registered model name (see spectformer.list_models())")
    data: str = setting(
        "", "'digits', 'synthetic', or a folder with train/<class>/* and val/<class>/*")
    backend: Optional[str] = setting(
        None,
        "spectral gating backend (default: auto; see available_backends())")
    img_size: Optional[int] = setting(None, "input resolution (default: the model's)")
    num_classes: Optional[int] = setting(
        None,
        "classifier size (default: the data set's class count)")
    drop_path: Optional[float] = setting(None, "stochastic depth rate (default: the model's)")
    synthetic_train_size: int = setting(1281, "images per epoch with --data synthetic")
    synthetic_val_size: int = setting(256, "validation images with --data synthetic")
    crop_pct: float = setting(
        0.875,
        "evaluation centre-crop fraction (resize to img_size / crop_pct first)")
    # Optimisation (official vanilla recipe: AdamW, lr 5e-4 x global batch / 512, cosine).
    epochs: int = setting(300, "total epochs of the schedule")
    batch_size: int = setting(128, "images per process per step")
    lr: Optional[float] = setting(None, "peak learning rate (default: 5e-4 x global batch / 512)")
    weight_decay: float = setting(
        0.05,
        "AdamW weight decay (norms, biases and position embeddings exempt)")
    warmup_epochs: float = setting(5.0, "linear warm-up length in epochs (fractions allowed)")
    warmup_lr: float = setting(1e-6, "learning rate at the start of the warm-up")
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine schedule")
    clip_grad: Optional[float] = setting(
        1.0,
        "clip the global gradient norm to this value (0 disables)")
    label_smoothing: float = setting(0.1, "label smoothing")
    mixup: float = setting(0.8, "mixup alpha (0 disables)")
    cutmix: float = setting(1.0, "cutmix alpha (0 disables)")
    mixup_prob: float = setting(1.0, "probability of mixing a batch at all")
    mixup_switch_prob: float = setting(
        0.5,
        "probability of cutmix instead of mixup when both are on")
    # Execution.
    amp: str = setting(
        "auto", "autocast dtype: auto (bf16 on CUDA, none on CPU), none, bf16, fp16 "
        "(loss-scaled)", choices=runtime.AMP_MODES)
    model_ema: bool = setting(
        False,
        "keep an exponential moving average of the weights and validate it too")
    model_ema_decay: float = setting(0.99996, "EMA decay per step")
    compile: bool = setting(False, "torch.compile the model")
    channels_last: bool = setting(False, "channels-last memory format for images and convolutions")
    seed: int = setting(0, "random seed")
    workers: int = setting(4, "data loader worker processes per training process")
    dist_timeout: float = setting(
        10.0,
        "minutes a process waits for the others in a collective (torchrun) "
        "before failing")
    # Outputs and resumption.
    output: str = setting(
        "",
        "output folder (default: output/train/<model>-<date>-<time>; when "
        "resuming, the folder of the --resume file)")
    resume: Optional[str] = setting(
        None,
        "checkpoint to continue from (e.g. OUTPUT/last.pt); its settings are "
        "the defaults")
    stop_after: Optional[int] = setting(
        None,
        "stop after this many epochs in this run (for time-limited jobs); the "
        "schedule still spans --epochs")
    log_interval: int = setting(10, "steps between progress-bar loss updates")
    # Augmentation beyond mixup/cutmix (off by default; the official recipes in recipes/ set them).
    aa: Optional[str] = setting(
        None,
        "RandAugment policy, timm-style, e.g. rand-m9-mstd0.5-inc1 (the "
        "official recipes); 'none' disables. Applied to digits and image-folder "
        "training images")
    reprob: float = setting(0.0, "random erasing probability per training image (0 disables)")
    remode: str = setting(
        "pixel",
        "random erasing fill: const (zeros), rand (a normal colour per "
        "channel), pixel (normal noise per pixel)")
    recount: int = setting(1, "random erasing: at most this many rectangles per image")
    # Token labelling (hierarchical models with an auxiliary head).
    token_label_data: Optional[str] = setting(
        None,
        "folder of per-image dense score maps (LV-ViT format, <class>/<image "
        "stem>.pt) for token labelling; needs a hierarchical model with an "
        "auxiliary head and an image-folder --data")
    token_label_size: Optional[int] = setting(
        None,
        "side of the dense target grid (default: the model's last token grid)")
    dense_weight: float = setting(0.5, "token labelling: weight of the auxiliary dense loss")
    cls_weight: float = setting(1.0, "token labelling: weight of the class-token loss")
    mix_token: bool = setting(
        True,
        "token labelling: MixToken (a token-aligned box swapped with the "
        "flipped batch)")

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

# Keys a resumed run must share with its checkpoint: changing them changes the network or
# the data, so the saved state would not fit or would mean something else.
MUST_MATCH_ON_RESUME = ("model", "data", "img_size", "num_classes")


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


def _field_type(name: str) -> tuple[type, bool]:
    """``(int | float | str | bool, whether None is allowed)`` of a setting."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _recipes_epilog() -> str:
    lines = ["Small models carry their own recipe, used where neither a flag nor --config "
             "sets the value:"]
    for model, recipe in MODEL_RECIPES.items():
        lines.append(f"  {model}: " + ", ".join(f"{checks.flag(k)} {v}" for k, v in recipe.items()))
    return "\n".join(lines)


def add_setting_flags(parser: argparse.ArgumentParser, names: Optional[Sequence[str]] = None,
                      defaults: Optional[dict[str, Any]] = None,
                      help_overrides: Optional[dict[str, str]] = None) -> None:
    """One flag per setting (those in ``names``, else all), typed, helped and constrained by
    its ``TrainConfig`` field. ``defaults`` sets the command's own defaults; without it the
    parser's ``argument_default`` applies."""
    for field in fields(TrainConfig):
        if names is not None and field.name not in names:
            continue
        kind, optional = _field_type(field.name)
        default = field.default if defaults is None else defaults.get(field.name, field.default)
        help_text = (help_overrides or {}).get(field.name, field.metadata["help"])
        if "(default:" not in help_text and default not in (None, ""):
            help_text += f" (default: {default})"
        options = {} if defaults is None else {"default": default}
        if kind is bool:
            # `--model-ema` alone turns it on; `--model-ema false` turns it off again.
            options.update(nargs="?", const=True, type=_parse_bool)
        elif "choices" in field.metadata:
            options.update(choices=field.metadata["choices"])
        else:
            options.update(type=_optional(kind) if optional else kind)
        parser.add_argument(checks.flag(field.name), dest=field.name, help=help_text, **options)


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
    add_setting_flags(parser)
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
    for name, value in values.items():
        kind, optional = _field_type(name)
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
    if out.get("amp", "auto") not in runtime.AMP_MODES:
        raise ValueError(f"{source}: amp must be one of {', '.join(runtime.AMP_MODES)}, "
                         f"got {out['amp']!r}")
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
    if not merged.get("model"):
        raise checks.UsageError("--model is required (see spectformer.list_models())")
    if not merged.get("data"):
        raise checks.UsageError("--data is required: 'digits', 'synthetic' or an ImageFolder path")
    if not merged.get("output"):
        # A fresh folder per run, so starting again never collides with an earlier run.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        merged["output"] = str(Path("output") / "train" / f"{merged['model']}-{stamp}")
    if (merged.get("aa") or "").strip().lower() == "none":
        merged["aa"] = None
    cfg = TrainConfig(**merged)
    check_settings(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    return _fill_defaults(cfg)


def _fill_defaults(cfg: TrainConfig) -> TrainConfig:
    """Settings left to the machine, the data or the model, made concrete: the autocast
    mode, the class count and the image size."""
    import torch

    from .data import class_count
    from .models import create_model

    img_size = cfg.img_size
    if img_size is None:
        with torch.device("meta"):  # the model's default input size, without its weights
            img_size = create_model(cfg.model).default_cfg["input_size"][1]
    return dataclasses.replace(
        cfg, amp=runtime.resolve_amp(cfg.amp, runtime.default_device()),
        num_classes=cfg.num_classes or class_count(cfg.data), img_size=int(img_size))


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
    checks.backend(cfg.backend, runtime.default_device())
    checks.writable_folder("output", cfg.output)
    check_recipe_options(cfg)


def check_recipe_options(cfg: TrainConfig) -> None:
    """Validate the augmentation and token-labelling settings, naming the flag at fault."""
    from .errors import SettingError
    from .random_erasing import RandomErasing
    from .randaugment import parse_policy

    # The library names these by its own parameters; say them as the flags that set them.
    try:
        if cfg.aa is not None:
            parse_policy(cfg.aa)
        RandomErasing(cfg.reprob, cfg.remode, cfg.recount)
    except SettingError as exc:
        settings = {"policy": "aa", "prob": "reprob", "mode": "remode", "max_count": "recount"}
        raise checks.UsageError(checks.for_command_line(exc, settings)) from None
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
            raise checks.UsageError(f"{checks.flag(name)} must be >= 0, got {getattr(cfg, name)}")


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

    from .training_state import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
