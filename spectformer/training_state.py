"""A training run's saved state: atomic writes, random-number-generator states, checked
loading of training checkpoints to resume from (the ``resume`` setting). (Loading model weights, official layouts
included, is ``spectformer.models.checkpoint``.)

A checkpoint is written to a temporary file in the same folder, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a crash or a
kill during the write leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import SettingError

CHECKPOINT_FORMAT = "spectformer-train-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "epoch", "step", "config")


class CheckpointError(SettingError, RuntimeError):
    """A checkpoint that cannot be used to resume: unreadable, truncated or mismatched. Its
    ``setting`` is ``resume``; still a ``RuntimeError``, as it always was."""


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMPORARY_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_failure(path: Path, exc: BaseException) -> OSError:
    """One line naming the file; torch's "[enforce fail at inline_container.cc ...]" on a
    full disk says neither which file nor why."""
    free = shutil.disk_usage(path.parent).free
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    if free < 16 * 1024 * 1024:
        reason = f"the disk is full ({free} bytes free)"
    return OSError(getattr(exc, "errno", None), f"cannot write {str(path)!r}: {reason}")


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX,
                                    dir=path.parent)
    try:
        # mkstemp makes the file private (0600); the result should be like any other file.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        # Interrupted (exception, KeyboardInterrupt): drop the partial file, keep the old one.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, (OSError, RuntimeError)):
            raise _write_failure(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files an earlier, killed process left in ``folder``; only one
    run writes to a folder at a time, so none of them is still being written."""
    stale = [p for p in Path(folder).glob(f".*{TEMPORARY_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
    from .models.checkpoint import read_checkpoint

    path = Path(path)
    try:
        ckpt = read_checkpoint(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError("resume", f"is unusable: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            "resume", f"{str(path)!r} is not a training checkpoint of this program "
            f"(expected format {CHECKPOINT_FORMAT!r}); to start from pretrained weights, "
            "load them into the model instead of resuming"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError("resume", f"{str(path)!r} lacks {', '.join(missing)}")
    return ckpt


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], keys, path) -> None:
    """Fail loudly when the run being resumed is a different network or data set."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(
            "resume", f"{str(path)!r} was written for a different run ({'; '.join(diffs)}); "
            "resume with the same settings or start a new output folder"
        )


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError("resume", f"{str(path)!r}: {what} does not match the model: "
                                        f"{exc}") from exc
