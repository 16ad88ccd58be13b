"""Train a SpectFormer / GFNet model: ``python -m spectformer.train --model NAME --data DATA``.

One process per device; ``torchrun --nproc-per-node N -m spectformer.train ...`` runs
DistributedDataParallel (NCCL on GPUs, gloo on CPU). Only rank 0 writes files. Outputs in
``--output``: ``config.yaml`` (the resolved settings), ``summary.csv`` (one row per epoch),
``last.pt`` (every epoch), ``best.pt`` (best validation top-1), ``curves.png``, and
``run.json`` (devices, world size and a fingerprint of each rank's final weights).

SIGINT/SIGTERM finish the current step, save ``last.pt`` and exit; ``--resume
OUTPUT/last.pt`` then continues exactly where the run stopped, mid-epoch included.
"""

from __future__ import annotations

import copy
import csv
import datetime
import hashlib
import io
import json
import math
import os
import platform
import random
import signal
import sys
import threading
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import config as config_lib
from .augment import MixupCutmix
from .training_state import (
    CHECKPOINT_FORMAT, CheckpointError, atomic_save, atomic_write, atomic_write_text,
    capture_rng_state, check_resume_compatible, load_state_strict, load_training_checkpoint,
    remove_stale_temporaries, restore_rng_state,
)
from .config import TrainConfig
from .data import ShardSampler, build_datasets, collate_skip_unreadable, image_spec
from .errors import SettingError
from .randaugment import RandAugment
from .random_erasing import RandomErasing
from .token_labeling import TokenLabelDataset, mix_token_box, token_label_loss
from .runtime import TrainStep, adamw, device_name, evaluate, model_overrides

SUMMARY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr",
                   "img_per_s", "epoch_time_s"]
EMA_COLUMNS = ["ema_val_loss", "ema_val_top1", "ema_val_top5"]
TIMING_COLUMNS = ("img_per_s", "epoch_time_s")


# ------------------------------------------------------------------------- distribution


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(timeout_minutes: float = 10.0) -> DistInfo:
    """Read torchrun's environment; one process per GPU (NCCL) or per CPU worker (gloo).

    ``timeout_minutes`` bounds every collective: a rank that froze or died makes the others
    fail after that long instead of torch's default half hour.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------- optimisation pieces


class WarmupCosineSchedule:
    """Per-step learning rate: linear warm-up from ``warmup_lr``, then cosine to ``min_lr``."""

    def __init__(self, optimizer, base_lr: float, warmup_lr: float, min_lr: float,
                 warmup_steps: int, total_steps: int):
        self.optimizer = optimizer
        self.base_lr, self.warmup_lr, self.min_lr = base_lr, warmup_lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup_lr": self.warmup_lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


class ModelEma:
    """Exponential moving average of a model's weights (buffers are copied, not averaged)."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers()):
            ema_buf.copy_(buf)


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks between steps; a second signal aborts."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        # Python only lets the main thread install handlers (not the case under some launchers).
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without saving")
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step and saving a "
              "checkpoint (send it again to abort without saving)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, info: DistInfo) -> bool:
        """Whether any rank was signalled; every rank must call this at the same steps."""
        if not info.enabled:
            return self.requested
        return all_reduce_sum([1.0 if self.requested else 0.0], info)[0] > 0


# ------------------------------------------------------------------------------ outputs


def write_summary(rows: list[dict], path: Path) -> None:
    columns = SUMMARY_COLUMNS + [c for c in EMA_COLUMNS if rows and c in rows[0]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["val_top1"] for r in rows], "o-", label="top-1")
    ax_acc.plot(epochs, [r["val_top5"] for r in rows], "o-", label="top-5")
    if "ema_val_top1" in rows[0]:
        ax_acc.plot(epochs, [r["ema_val_top1"] for r in rows], "o--", label="EMA top-1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    ax_lr.plot(epochs, [r["lr"] for r in rows], "o-")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def weights_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------- run


@dataclass
class EpochProgress:
    """Running totals of the epoch in progress; saved with a mid-epoch checkpoint."""

    batches_done: int = 0
    loss_sum: float = 0.0   # sum over images of this rank's training loss
    images: int = 0         # images this rank trained on
    seconds: float = 0.0    # training wall time
    skipped_batches: int = 0  # batches of nothing but unreadable images


class Trainer:
    def __init__(self, cfg: TrainConfig, info: DistInfo, checkpoint: Optional[dict]):
        import spectformer

        # The peak learning rate follows this run's world size: recorded in the configuration
        # the run saves, so that resuming keeps it whatever the world size then.
        cfg = dataclasses.replace(cfg, lr=cfg.base_lr_for(cfg.batch_size * info.world_size))
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.output)
        self.device = info.device

        # The same seed on every rank builds the same initial weights (DDP broadcasts them
        # anyway); runtime randomness (mixup, drop-path) then differs per rank.
        seed_everything(cfg.seed)
        overrides = model_overrides(cfg.data, cfg.num_classes, cfg.img_size, cfg.backend,
                                    cfg.drop_path)
        self.model = spectformer.create_model(cfg.model, **overrides)
        spec = image_spec(self.model.default_cfg, cfg.img_size)
        if checkpoint is not None:
            check_resume_compatible(checkpoint["config"], cfg.to_dict(),
                                    config_lib.MUST_MATCH_ON_RESUME, cfg.resume)
        seed_everything(cfg.seed + info.rank)

        # RandAugment acts on training images in [0, 1] inside the data sets; random erasing
        # on the normalised batch, before mixup.
        train_augment = RandAugment(cfg.aa, fill=spec.mean) if cfg.aa else None
        self.random_erasing = (RandomErasing(cfg.reprob, cfg.remode, cfg.recount)
                               if cfg.reprob > 0 else None)
        datasets = build_datasets(cfg.data, spec, cfg.num_classes, cfg.seed,
                                  cfg.synthetic_train_size, cfg.synthetic_val_size, cfg.crop_pct,
                                  train_augment=train_augment)
        if cfg.token_label_data:
            datasets.train = self._token_label_dataset(datasets.train, train_augment)
        self.train_sampler = ShardSampler(len(datasets.train), info.world_size, info.rank,
                                          shuffle=True, seed=cfg.seed, pad=True)
        val_sampler = ShardSampler(len(datasets.val), info.world_size, info.rank,
                                   shuffle=False, pad=False)
        workers = 0 if datasets.in_memory else cfg.workers
        loader_args = dict(num_workers=workers, pin_memory=self.device.type == "cuda",
                           collate_fn=collate_skip_unreadable)
        # Each loader draws its workers' seeds from its own generator, reseeded per epoch, so
        # starting an iterator never consumes the global stream that mixup and drop-path use
        # (a resumed run would otherwise be one draw off).
        self.train_generator = torch.Generator()
        self.train_loader = DataLoader(datasets.train, batch_size=cfg.batch_size,
                                       sampler=self.train_sampler, drop_last=True,
                                       generator=self.train_generator, **loader_args)
        self.val_loader = DataLoader(datasets.val, batch_size=cfg.batch_size, sampler=val_sampler,
                                     generator=torch.Generator().manual_seed(cfg.seed),
                                     **loader_args)
        self.steps_per_epoch = self.train_sampler.per_epoch() // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is larger than this process's share of the "
                f"training set ({self.train_sampler.per_epoch()} images); lower it"
            )

        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.ema = ModelEma(self.model, cfg.model_ema_decay) if cfg.model_ema else None
        self.optimizer = adamw(self.model, cfg.lr, cfg.weight_decay)
        self.schedule = WarmupCosineSchedule(
            self.optimizer, cfg.lr, cfg.warmup_lr, cfg.min_lr,
            warmup_steps=round(cfg.warmup_epochs * self.steps_per_epoch),
            total_steps=cfg.epochs * self.steps_per_epoch,
        )
        self.mixer = MixupCutmix(cfg.num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_prob,
                                 cfg.mixup_switch_prob, cfg.label_smoothing)

        # The uncompiled, unwrapped self.model is what checkpoints hold.
        self.forward_model: nn.Module = torch.compile(self.model) if cfg.compile else self.model
        self.eval_model = self.forward_model
        if info.enabled:
            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.train_step = TrainStep(self.model, self.optimizer, cfg.amp, self.device,
                                    cfg.clip_grad, forward=self.forward_model)

        self.epoch, self.step = 0, 0
        self.progress = EpochProgress()
        self.rows: list[dict] = []
        self.best_top1 = -1.0
        if checkpoint is not None:
            self._restore(checkpoint)

    def _token_label_dataset(self, images, augment) -> TokenLabelDataset:
        cfg, model = self.cfg, self.model
        if not getattr(model, "token_label", False) or not hasattr(model, "forward_dense"):
            raise ValueError(f"--token-label-data needs a hierarchical model with an auxiliary "
                             f"head (spectformer_h_*), not --model {cfg.model!r}")
        grid = tuple(model.grid_sizes[-1])
        if cfg.token_label_size is not None and (cfg.token_label_size,) * 2 != grid:
            raise ValueError(f"--token-label-size {cfg.token_label_size} does not match the model's "
                             f"last token grid {grid[0]}x{grid[1]} at --img-size {cfg.img_size}")
        try:
            return TokenLabelDataset(images, cfg.token_label_data, cfg.num_classes, grid, augment)
        except SettingError as exc:  # the library's score_root is the token_label_data setting
            raise exc.renamed("token_label_data") from None

    # ---------------------------------------------------------------- checkpoints

    def _state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.train_step.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "progress": vars(self.progress).copy(),
            "rows": self.rows,
            "best_top1": self.best_top1,
            "world_size": self.info.world_size,
            "config": self.cfg.to_dict(),
            "versions": {"torch": str(torch.__version__), "python": platform.python_version()},
        }

    def save(self, names: Sequence[str]) -> None:
        """Write the full training state; every rank must call it (RNG states are gathered,
        and the epoch's partial loss and image count are summed over ranks)."""
        rng = gather_objects(capture_rng_state(), self.info)
        totals = all_reduce_sum([self.progress.loss_sum, self.progress.images,
                                 self.progress.skipped_batches], self.info)
        if not self.info.is_main:
            return
        state = self._state()
        state["rng"] = rng
        state["progress"].update(loss_sum=totals[0], images=int(totals[1]),
                                 skipped_batches=int(totals[2]))
        for name in names:
            atomic_save(state, self.out / name)

    def _restore(self, ckpt: dict) -> None:
        path = self.cfg.resume
        load_state_strict(self.model, ckpt["model"], "the model state", path)
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError("resume", f"{path!r} has no EMA weights but --model-ema is on")
            load_state_strict(self.ema.module, ckpt["ema"], "the EMA state", path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError("resume", f"{path!r}: optimizer state does not fit: {exc}") from exc
        if ckpt["scheduler"]["total_steps"] != self.schedule.total_steps:
            print(f"note: the schedule now spans {self.schedule.total_steps} steps "
                  f"(checkpoint: {ckpt['scheduler']['total_steps']})", file=sys.stderr)
        self.train_step.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.progress = EpochProgress(**ckpt["progress"])
        if not self.info.is_main:
            # The saved sums are over all ranks; rank 0 carries them, so the epoch's
            # all-reduce counts them once, whatever the world size now.
            self.progress.loss_sum, self.progress.images, self.progress.skipped_batches = 0.0, 0, 0
        self.rows = list(ckpt["rows"])
        self.best_top1 = ckpt["best_top1"]
        rng = ckpt.get("rng") or []
        if ckpt.get("world_size") == self.info.world_size and len(rng) == self.info.world_size:
            restore_rng_state(rng[self.info.rank])
        elif self.info.is_main:
            print(f"note: checkpoint written by {ckpt.get('world_size')} processes, now "
                  f"{self.info.world_size}: random streams restart from the seed", file=sys.stderr)

    # ------------------------------------------------------------------ training

    def _to_device(self, images: torch.Tensor, target: torch.Tensor):
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return images, target.to(self.device, non_blocking=True)

    def train_one_epoch(self, stop: StopRequest) -> bool:
        """Train (the rest of) ``self.epoch``; returns False if stopped by a signal."""
        cfg, info, progress = self.cfg, self.info, self.progress
        self.forward_model.train()
        self.train_sampler.set_epoch(self.epoch, skip=progress.batches_done * cfg.batch_size)
        self.train_generator.manual_seed((cfg.seed * 1_000_003 + self.epoch) * 4099 + info.rank)
        loss_sum = torch.tensor(progress.loss_sum, dtype=torch.float64, device=self.device)
        images_done = progress.images
        bar = tqdm(total=self.steps_per_epoch, initial=progress.batches_done, unit="step",
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not info.is_main,
                   dynamic_ncols=True, leave=True)
        start = time.perf_counter() - progress.seconds
        batches = iter(self.train_loader)
        completed = True
        try:
            while progress.batches_done < self.steps_per_epoch:
                # Alone, check every step; with several ranks the check is a collective, so
                # only every log_interval steps (the same steps on every rank).
                due = not info.enabled or progress.batches_done % cfg.log_interval == 0
                if due and stop.agreed(info):
                    completed = False
                    break
                try:
                    batch = next(batches)
                except Exception:
                    if stop.requested:  # a signal can take data-loader workers down first
                        completed = False
                        break
                    raise
                if batch is None:  # every image unreadable (each reported with its path)
                    progress.skipped_batches += 1
                    if info.enabled:
                        # The other ranks wait for this one's gradients: join in with one
                        # blank image whose loss counts zero.
                        self._train_step(*self._to_device(*self._blank_batch()), loss_weight=0.0)
                    progress.batches_done += 1
                    self.step += 1
                    bar.update(1)
                    continue
                images, target = self._to_device(*batch[:2])
                if len(batch) > 2:  # token labelling: the dense targets come third
                    loss = self._train_step(images, target, batch[2].to(self.device, non_blocking=True))
                else:
                    loss = self._train_step(images, target)
                loss_sum += loss.detach().double() * images.shape[0]
                images_done += images.shape[0]
                progress.batches_done += 1
                self.step += 1
                bar.update(1)
                if progress.batches_done % cfg.log_interval == 0 or progress.batches_done == self.steps_per_epoch:
                    running = loss_sum.item() / max(images_done, 1)
                    if not math.isfinite(running):
                        raise FloatingPointError(
                            f"training loss is {running} at epoch {self.epoch + 1}, step "
                            f"{progress.batches_done}; lower --lr or keep --clip-grad on"
                        )
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(loss=f"{running:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{images_done * info.world_size / max(elapsed, 1e-9):.0f}")
        finally:
            bar.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            progress.loss_sum = loss_sum.item()
            progress.images = images_done
            progress.seconds = time.perf_counter() - start
        return completed

    def _blank_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.cfg.img_size
        in_chans = self.model.default_cfg["input_size"][0]
        return torch.zeros(1, in_chans, size, size), torch.zeros(1, dtype=torch.long)

    def _train_step(self, images: torch.Tensor, target: torch.Tensor,
                    token_targets: Optional[torch.Tensor] = None,
                    loss_weight: float = 1.0) -> torch.Tensor:
        self.schedule.apply(self.step)
        if self.random_erasing is not None:
            images = self.random_erasing(images)
        if token_targets is not None:
            loss = self._token_label_loss(images, token_targets)
            self.train_step.backward_and_step(loss, loss_weight)
        else:
            loss = self.train_step(*self.mixer(images, target), loss_weight=loss_weight)
        if self.ema is not None:
            self.ema.update(self.model)
        return loss

    def _token_label_loss(self, images: torch.Tensor, token_targets: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        lam, box = mix_token_box(self.model.grid_sizes[-1]) if cfg.mix_token else (1.0, None)
        with self.train_step.autocast():
            cls_logits, token_logits = self.forward_model(images, return_dense=True, mix_box=box)
        return token_label_loss(cls_logits, token_logits, token_targets, lam, cfg.cls_weight,
                                cfg.dense_weight, cfg.label_smoothing)

    def _evaluate(self, model: nn.Module, desc: str) -> dict:
        return evaluate(model, self.val_loader, self.device, self.train_step.amp_dtype,
                        self.memory_format,
                        reduce_sum=lambda values: all_reduce_sum(values, self.info),
                        show_progress=self.info.is_main, desc=desc)

    def finish_epoch(self, val: dict, ema_val: Optional[dict], epoch_seconds: float) -> dict:
        totals = all_reduce_sum([self.progress.loss_sum, self.progress.images,
                                 self.progress.skipped_batches], self.info)
        if totals[2] and self.info.is_main:
            tqdm.write(f"warning: epoch {self.epoch + 1}: {int(totals[2])} training batch(es) "
                       "held only unreadable images and were skipped (paths reported above)")
        row = {
            "epoch": self.epoch + 1,
            "train_loss": totals[0] / max(totals[1], 1),
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_per_s": totals[1] / max(self.progress.seconds, 1e-9),
            "epoch_time_s": epoch_seconds,
        }
        if ema_val is not None:
            row.update(ema_val_loss=ema_val["loss"], ema_val_top1=ema_val["top1"],
                       ema_val_top5=ema_val["top5"])
        return row

    def run(self) -> int:
        cfg, info = self.cfg, self.info
        last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, self.epoch + cfg.stop_after)
        if self.epoch >= cfg.epochs and info.is_main:
            print(f"nothing to do: the checkpoint already completed all {cfg.epochs} epochs")
        with StopRequest() as stop:
            while self.epoch < last_epoch:
                epoch_start = time.perf_counter() - self.progress.seconds
                if not self.train_one_epoch(stop):
                    self.save(["last.pt"])
                    return self._stopped(stop)
                val = self._evaluate(self.eval_model, "validate")
                ema_val = self._evaluate(self.ema.module, "validate EMA") if self.ema else None
                row = self.finish_epoch(val, ema_val, time.perf_counter() - epoch_start)
                self.rows.append(row)
                improved = row["val_top1"] > self.best_top1
                self.best_top1 = max(self.best_top1, row["val_top1"])
                self.epoch += 1
                self.progress = EpochProgress()
                self.save(["last.pt", "best.pt"] if improved else ["last.pt"])
                if info.is_main:
                    write_summary(self.rows, self.out / "summary.csv")
                    tqdm.write(
                        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss "
                        f"{row['val_loss']:.4f}, top-1 {row['val_top1']:.2f}%, top-5 "
                        f"{row['val_top5']:.2f}%, {row['img_per_s']:.0f} img/s"
                    )
                if stop.agreed(info):
                    return self._stopped(stop)
        self._write_final()
        return 0

    def _stopped(self, stop: StopRequest) -> int:
        if self.info.is_main:
            print(f"stopped at epoch {self.epoch + 1}, step {self.progress.batches_done}; resume "
                  f"with --resume {self.out / 'last.pt'}", file=sys.stderr)
            if self.rows:
                plot_curves(self.rows, self.out / "curves.png", self.cfg.model)
        # torchrun reports any non-zero status as a failed child, with a traceback, so a
        # planned stop under it is a success; alone, the shell's 128 + signal convention
        # keeps `train && next-step` from going on.
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            return 0
        return 128 + (stop.signum or signal.SIGTERM)

    def _write_final(self) -> None:
        fingerprints = gather_objects(weights_fingerprint(self.model), self.info)
        if not self.info.is_main:
            return
        if self.rows:
            plot_curves(self.rows, self.out / "curves.png",
                        f"{self.cfg.model} on {Path(self.cfg.data).name or self.cfg.data}")
        info = {
            "model": self.cfg.model,
            "world_size": self.info.world_size,
            "device": device_name(self.device),
            "epochs_completed": self.epoch,
            "best_val_top1": self.best_top1,
            "weights_sha256_per_rank": fingerprints,
            "versions": {"torch": str(torch.__version__), "python": platform.python_version()},
        }
        atomic_write_text(self.out / "run.json", json.dumps(info, indent=2) + "\n")
        if len(set(fingerprints)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {fingerprints}")
        if self.rows:
            best = max(self.rows, key=lambda r: r["val_top1"])
            print(f"done: best top-1 {best['val_top1']:.2f}% at epoch {best['epoch']}; "
                  f"summary {self.out / 'summary.csv'}, curves {self.out / 'curves.png'}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_output(cfg: TrainConfig, resume_folder: Optional[Path]) -> None:
    """Refuse to start over an earlier run; writes nothing."""
    out = Path(cfg.output)
    holds_run = any((out / name).exists() for name in ("last.pt", "summary.csv"))
    if holds_run and (resume_folder is None or out.resolve() != resume_folder.resolve()):
        continuing = "" if resume_folder else f"continue it with --resume {str(out / 'last.pt')!r} or "
        raise FileExistsError(f"--output {str(out)!r} already holds a run; {continuing}"
                              "choose another --output")


def create_output(out: Path) -> list[Path]:
    """Make ``out`` (and missing parents); returns the folders created, outermost first."""
    created = [p for p in reversed([out, *out.parents]) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    return created


def remove_failed_output(out: Path, created: list[Path]) -> None:
    """A run that failed before its first checkpoint leaves nothing behind."""
    if (out / "last.pt").exists():
        return
    (out / "config.yaml").unlink(missing_ok=True)
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:  # not empty: something else lives there
            break


def main(argv: Optional[Sequence[str]] = None) -> int:
    explicit, yaml_values = config_lib.parse_train_args(argv)
    resume = explicit.get("resume", yaml_values.get("resume"))
    checkpoint = load_training_checkpoint(resume) if resume else None
    cfg = config_lib.resolve(explicit, yaml_values, checkpoint["config"] if checkpoint else None)
    check_output(cfg, Path(resume).parent if resume else None)
    info = setup_distributed(cfg.dist_timeout)
    created: Optional[list[Path]] = None
    try:
        # Model and data first: a mistake found while building them leaves no files.
        trainer = Trainer(cfg, info, checkpoint)
        del checkpoint  # its tensors now live in the model and optimizer
        if info.is_main:
            created = create_output(Path(cfg.output))
            config_lib.save_yaml(trainer.cfg, Path(cfg.output) / "config.yaml")
            print(f"training {cfg.model} on {cfg.data} ({device_name(info.device)}, "
                  f"{info.world_size} process(es), amp {cfg.amp}) -> {cfg.output}")
        return trainer.run()
    except BaseException:
        if created is not None:
            remove_failed_output(Path(cfg.output), created)
        raise
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, "spectformer.train"))
