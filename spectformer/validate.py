"""Evaluate a model: ``python -m spectformer.validate --model NAME --checkpoint PATH --data DATA``.

Reports loss, top-1 and top-5 on the validation split (digits, synthetic, or
``DATA/val`` of an ImageFolder tree). ``--checkpoint`` takes a ``last.pt``/``best.pt``
written by ``spectformer.train`` (``--ema`` picks its EMA weights) or any state dict the
model zoo's ``load_checkpoint`` accepts (official GFNet/SpectFormer layouts included).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import torch
from torch import nn

from .errors import SettingError
from .runtime import amp_dtype, default_device, evaluate, model_overrides, resolve_amp

def training_settings(raw) -> dict:
    """The configuration a ``spectformer.train`` checkpoint records (empty for others)."""
    from .training_state import CHECKPOINT_FORMAT

    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        return dict(raw.get("config") or {})
    return {}


def load_weights(model: nn.Module, raw, path: str, use_ema: bool, model_name: str = "") -> str:
    """Load an already read checkpoint into ``model`` through ``load_checkpoint`` (the one
    loading path: containers unwrapped, grids resized); returns what was loaded."""
    import spectformer

    from .training_state import CHECKPOINT_FORMAT

    is_training = isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT
    if use_ema and not is_training:
        raise SettingError("checkpoint", f"{path!r} is not a training checkpoint of "
                                         "spectformer.train, so it holds no EMA weights")
    if use_ema and raw.get("ema") is None:
        raise SettingError("checkpoint", f"{path!r} holds no EMA weights (it was trained "
                                         "without an EMA of the weights)")
    state = raw["ema" if use_ema else "model"] if is_training else raw
    try:
        spectformer.load_checkpoint(model, state)
    except (RuntimeError, ValueError) as exc:
        raise SettingError("checkpoint", f"{path!r} does not fit the model "
                                         f"{model_name or type(model).__name__} as built here: "
                                         f"{' '.join(str(exc).split())}") from exc
    if is_training:
        return f"{'EMA' if use_ema else 'model'} weights after epoch {raw['epoch']}"
    return "state dict"


# The training settings evaluation shares, with evaluation's own defaults: model, data and
# image size come from a training checkpoint when not given.
SHARED_SETTINGS = {
    "model": None, "data": None, "backend": None, "img_size": None, "num_classes": None,
    "batch_size": 256, "amp": "auto", "channels_last": False, "crop_pct": 0.875, "workers": 4,
    "seed": 0,
}


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser
    from .config import add_setting_flags

    parser = ArgumentParser(
        prog="python -m spectformer.validate",
        description="Evaluate a SpectFormer / GFNet model. With a training checkpoint of "
                    "spectformer.train, --model, --data, --img-size and --num-classes default "
                    "to the ones it was trained with.")
    parser.add_argument("--checkpoint", help="weights to evaluate (default: the random initialisation)")
    parser.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    add_setting_flags(parser, list(SHARED_SETTINGS), defaults=SHARED_SETTINGS,
                      help_overrides={"batch_size": "images per batch",
                                      "seed": "seed of --data synthetic"})
    parser.add_argument("--output", help="also write the results to this JSON file")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    return parser


def check_args(args: argparse.Namespace, device: torch.device) -> None:
    """Every flag, before the data is scanned or a file written."""
    from . import checks

    for name in ("model", "data"):
        if not getattr(args, name):
            raise checks.UsageError(f"--{name} is required (unless --checkpoint is a training "
                                    "checkpoint that records it)")
    checks.model_name(args.model)
    checks.number("batch_size", args.batch_size, low=1)
    checks.number("workers", args.workers, low=0)
    checks.number("num_classes", args.num_classes, low=1, optional=True)
    checks.number("img_size", args.img_size, low=1, optional=True)
    checks.number("crop_pct", args.crop_pct, low=0, high=1, low_open=True)
    checks.data_source(args.data, args.num_classes)
    checks.backend(args.backend, device)
    if args.output:
        checks.writable_file("output", args.output)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import spectformer

    from .training_state import atomic_write_text
    from .data import build_datasets, collate_skip_unreadable, image_spec
    from .models.checkpoint import read_checkpoint

    args = build_parser().parse_args(argv)
    device = default_device()
    raw = None
    if args.checkpoint:
        try:
            raw = read_checkpoint(args.checkpoint)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--checkpoint: {exc}") from exc
        # What the checkpoint was trained as fills in whatever the flags leave open.
        trained = training_settings(raw)
        for name in ("model", "data", "img_size", "num_classes"):
            if getattr(args, name) is None and trained.get(name) is not None:
                setattr(args, name, trained[name])
    check_args(args, device)
    amp = resolve_amp(args.amp, device)
    overrides = model_overrides(args.data, args.num_classes, args.img_size, args.backend)
    model = spectformer.create_model(args.model, **overrides)
    loaded = ("random initialisation" if raw is None
              else load_weights(model, raw, args.checkpoint, args.ema, args.model))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    spec = image_spec(model.default_cfg, args.img_size)
    datasets = build_datasets(args.data, spec, model.num_classes, args.seed, crop_pct=args.crop_pct)
    loader = torch.utils.data.DataLoader(
        datasets.val, batch_size=args.batch_size, shuffle=False,
        num_workers=0 if datasets.in_memory else args.workers,
        pin_memory=device.type == "cuda", collate_fn=collate_skip_unreadable,
    )
    result = evaluate(model, loader, device, amp_dtype(amp), memory_format)
    result.update(model=args.model, checkpoint=args.checkpoint, weights=loaded, data=args.data, amp=amp)
    print(f"{args.model} ({loaded}) on {args.data}: loss {result['loss']:.4f}, top-1 "
          f"{result['top1']:.2f}%, top-5 {result['top5']:.2f}% over {result['images']} images")
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, "spectformer.validate"))
