"""Training checkpoints: atomic writes, random-number-generator states, checked loading.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a crash or a
kill during the write leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

CHECKPOINT_FORMAT = "spectformer-train-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "epoch", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used to resume: unreadable, truncated or mismatched."""


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Interrupted (exception, KeyboardInterrupt): drop the partial file, keep the old one.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def capture_rng_state() -> dict[str, Any]:
    # numpy's key array is stored as a tensor so the whole checkpoint loads with
    # torch.load(weights_only=True): plain containers and tensors only.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``spectformer.train``; raise ``CheckpointError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume {str(path)!r}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbage files
        raise CheckpointError(
            f"--resume {str(path)!r} is not a readable checkpoint (truncated or corrupt?): {exc}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"--resume {str(path)!r} is not a training checkpoint of this program "
            f"(expected format {CHECKPOINT_FORMAT!r}); to start from pretrained weights, "
            "load them into the model instead of resuming"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"--resume {str(path)!r} lacks {', '.join(missing)}")
    return ckpt


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], keys, path) -> None:
    """Fail loudly when the run being resumed is a different network or data set."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(
            f"--resume {str(path)!r} was written for a different run ({'; '.join(diffs)}); "
            "resume with the same settings or start a new --output"
        )


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"--resume {str(path)!r}: {what} does not match the model: {exc}") from exc
