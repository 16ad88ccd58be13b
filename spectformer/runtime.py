"""What training, evaluation and the throughput benchmark share: mixed precision, the
optimizer and the training step, evaluation, the device's name and the model overrides a
run's settings imply. Each exists once, so the benchmark times the step training runs.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .augment import soft_target_cross_entropy

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = ("auto", *AMP_DTYPES)


# ------------------------------------------------------------------------ the device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = f"({torch.get_num_threads()} threads)"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} {threads}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} {threads}"


# ------------------------------------------------------------------- mixed precision


def resolve_amp(mode: str, device: torch.device) -> str:
    """``auto`` is bf16 on GPUs and none on CPUs; other modes stand."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "auto":
        return "bf16" if device.type == "cuda" else "none"
    return mode


def amp_dtype(mode: str) -> Optional[torch.dtype]:
    """The autocast dtype of a resolved mode (None: no autocast)."""
    try:
        return AMP_DTYPES[mode]
    except KeyError:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {mode!r}") from None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------- the model


def model_overrides(data: str, num_classes=None, img_size=None, backend=None,
                    drop_path=None) -> dict:
    """``create_model`` overrides from a run's settings; unset ones keep the model's."""
    from .data import class_count

    overrides = {"num_classes": num_classes or class_count(data), "img_size": img_size,
                 "backend": backend, "drop_path_rate": drop_path}
    return {key: value for key, value in overrides.items() if value is not None}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: norms, biases (all 1-d tensors) and ``no_weight_decay()`` names exempt."""
    exempt_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in exempt_names or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The recipe's optimizer: AdamW, eps 1e-8, decay exemptions as ``parameter_groups``."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, eps=1e-8,
                             betas=(0.9, 0.999))


# ------------------------------------------------------------------ the training step


class TrainStep:
    """One optimisation step: forward under autocast, loss, backward (loss-scaled for
    fp16), gradient clipping, optimizer step. ``forward`` is what runs the batch (the model,
    or its compiled or DDP wrapper); ``model`` holds the parameters clipped."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp: str,
                 device: torch.device, clip_grad: Optional[float],
                 forward: Optional[nn.Module] = None):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.forward = model if forward is None else forward
        self.amp_dtype = amp_dtype(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.clip_grad = clip_grad

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def __call__(self, images: torch.Tensor, soft_target: torch.Tensor,
                 loss_weight: float = 1.0) -> torch.Tensor:
        """Classification with soft targets; returns the (unweighted) loss."""
        with self.autocast():
            logits = self.forward(images)
        loss = soft_target_cross_entropy(logits, soft_target)
        self.backward_and_step(loss, loss_weight)
        return loss

    def backward_and_step(self, loss: torch.Tensor, loss_weight: float = 1.0) -> None:
        """``loss_weight`` 0 lets a rank with nothing to train on join the DDP step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * loss_weight if loss_weight != 1.0 else loss).backward()
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()


# ------------------------------------------------------------------------ evaluation


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
        with autocast(device, amp_dtype):
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

