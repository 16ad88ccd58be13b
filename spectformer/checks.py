"""Start-up checks of command-line settings: cheap, before any data is scanned or file written.

Every failure is a ``UsageError`` whose message is one line naming the flag (or file) and
what was expected, so ``cli.run`` can print it without a traceback. The library's own
``SettingError`` names a setting, not a flag; ``for_command_line`` says it with the flag.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional

from .errors import SettingError


class UsageError(ValueError):
    """A setting that cannot work; the message names the flag and what it expects."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def for_command_line(exc: SettingError, settings: Optional[Mapping[str, str]] = None) -> str:
    """``exc``'s message with the flag in place of the setting's name; ``settings`` maps a
    library parameter to the setting it was given (``{"prob": "reprob"}``) where they differ."""
    setting = (settings or {}).get(exc.setting, exc.setting)
    return f"{flag(setting)} {exc.detail}"


def number(name: str, value, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """``value`` is finite and inside [low, high] (``*_open``: the bound itself excluded)."""
    if value is None and optional:
        return
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    expected = (f"in {lo}, {hi}" if low is not None and high is not None
                else f"{'>' if low_open else '>='} {low:g}" if low is not None
                else f"{'<' if high_open else '<='} {high:g}")
    ok = value is not None and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise UsageError(f"{flag(name)} must be a finite number {expected}, got {value}")


def model_name(name: str) -> None:
    import difflib

    from .models import list_models

    known = list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"--model {name!r} is not a registered model{hint}; "
                         f"see python -c 'import spectformer; print(spectformer.list_models())'")


def backend(name: Optional[str], device) -> None:
    """``--backend`` (or ``$SPECTFORMER_BACKEND``) names a backend that runs on ``device``."""
    from spectformer_kernels import backends

    source = "--backend"
    if name is None:
        name = os.environ.get(backends.ENV_VAR, "").strip() or None
        source = f"${backends.ENV_VAR}"
    if name is None or name == "auto":
        return
    registered = backends.registered_backends()
    if name not in registered:
        raise UsageError(f"{source} {name!r} is not a backend; choose from "
                         f"{', '.join(['auto', *registered])}")
    reason = backends.get_backend(name).availability()
    if reason is None and device.type == "cpu" and name.startswith("cuda"):
        reason = "it runs on CUDA devices only"
    if reason is not None:
        runnable = backends.available_backends()
        raise UsageError(f"{source} {name!r} cannot run on {device.type}: {reason}; "
                         f"available here: {', '.join(runnable)}")


def data_source(data: str, num_classes: Optional[int]) -> None:
    """``--data`` is digits, synthetic or a folder with train/ and val/ (not scanned here)."""
    from .data import check_source

    try:
        check_source(data, num_classes)
    except SettingError as exc:
        raise UsageError(for_command_line(exc)) from None


def writable_folder(name: str, path: str | Path) -> None:
    """``path`` is, or can be created as, a folder this process may write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag(name)} {str(path)!r} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag(name)} {str(path)!r}: cannot write into {str(existing)!r}")


def writable_file(name: str, path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag(name)} {str(path)!r} is a folder, not a file")
    writable_folder(name, path.parent if str(path.parent) else ".")
