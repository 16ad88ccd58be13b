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
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype_for(mode: str) -> Optional[torch.dtype]:
    try:
        return AMP_DTYPES[mode]
    except KeyError:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {mode!r}") from None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    reduce_sum: Optional[Callable[[list[float]], list[float]]] = None,
    show_progress: bool = True,
    desc: str = "validate",
) -> dict:
    """Mean cross-entropy (no label smoothing), top-1 and top-5 accuracy in percent.

    ``reduce_sum`` combines the per-process sums across ranks (an all-reduce); each process
    sees a disjoint shard, so every image counts exactly once.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not show_progress,
                      dynamic_ncols=True):
        if batch is None:  # every image of this batch was unreadable (already reported)
            continue
        images, target = batch
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[-1])
        hits = logits.topk(k, dim=-1).indices.eq(target.unsqueeze(1))
        totals += torch.stack([
            F.cross_entropy(logits, target, reduction="sum").double(),
            hits[:, 0].sum().double(),
            hits.any(dim=1).sum().double(),
            torch.tensor(float(target.shape[0]), dtype=torch.float64, device=device),
        ])
    model.train(was_training)
    loss, top1, top5, count = (reduce_sum or list)(totals.tolist())
    if count == 0:
        raise RuntimeError("the validation set yielded no readable images")
    return {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count,
            "images": int(count)}


def training_settings(raw) -> dict:
    """The configuration a ``spectformer.train`` checkpoint records (empty for others)."""
    from .checkpointing import CHECKPOINT_FORMAT

    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        return dict(raw.get("config") or {})
    return {}


def load_weights(model: nn.Module, raw, path: str, use_ema: bool, model_name: str = "") -> str:
    """Load an already read checkpoint into ``model`` through ``load_checkpoint`` (the one
    loading path: containers unwrapped, grids resized); returns what was loaded."""
    import spectformer

    from .checkpointing import CHECKPOINT_FORMAT

    is_training = isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT
    if use_ema and not is_training:
        raise ValueError(f"--ema needs a training checkpoint of spectformer.train; {path!r} is not one")
    if use_ema and raw.get("ema") is None:
        raise ValueError(f"--checkpoint {path!r} holds no EMA weights (trained without --model-ema)")
    state = raw["ema" if use_ema else "model"] if is_training else raw
    try:
        spectformer.load_checkpoint(model, state)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--checkpoint {path!r} does not fit --model "
                         f"{model_name or type(model).__name__} as built here: "
                         f"{' '.join(str(exc).split())}") from exc
    if is_training:
        return f"{'EMA' if use_ema else 'model'} weights after epoch {raw['epoch']}"
    return "state dict"


def model_overrides(data: str, num_classes=None, img_size=None, backend=None,
                    drop_path=None) -> dict:
    """``create_model`` overrides from command-line settings; unset ones keep the model's."""
    from .data import class_count

    overrides = {"num_classes": num_classes or class_count(data), "img_size": img_size,
                 "backend": backend, "drop_path_rate": drop_path}
    return {key: value for key, value in overrides.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m spectformer.validate",
        description="Evaluate a SpectFormer / GFNet model. With a training checkpoint of "
                    "spectformer.train, --model, --data, --img-size and --num-classes default "
                    "to the ones it was trained with.")
    parser.add_argument("--model", help="registered model name")
    parser.add_argument("--checkpoint", help="weights to evaluate (default: the random initialisation)")
    parser.add_argument("--data", help="'digits', 'synthetic' or an ImageFolder root")
    parser.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    parser.add_argument("--backend", help="spectral gating backend (default: auto)")
    parser.add_argument("--img-size", type=int, help="input resolution (default: the model's)")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: the data's)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    parser.add_argument("--amp", choices=["auto", *AMP_DTYPES], default="auto",
                        help="autocast dtype (default: auto, bf16 on CUDA and none on CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--crop-pct", type=float, default=0.875,
                        help="evaluation centre-crop fraction for ImageFolder data (default: 0.875)")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --data synthetic (default: 0)")
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

    from .checkpointing import atomic_write_text
    from .data import build_datasets, collate_skip_unreadable, image_spec
    from .models.checkpoint import read_checkpoint

    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    amp = ("bf16" if device.type == "cuda" else "none") if args.amp == "auto" else args.amp
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
    result = evaluate(model, loader, device, amp_dtype_for(amp), memory_format)
    result.update(model=args.model, checkpoint=args.checkpoint, weights=loaded, data=args.data, amp=amp)
    print(f"{args.model} ({loaded}) on {args.data}: loss {result['loss']:.4f}, top-1 "
          f"{result['top1']:.2f}%, top-5 {result['top5']:.2f}% over {result['images']} images")
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, "spectformer.validate"))
