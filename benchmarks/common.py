"""Shared by the benchmarks: where a row ran (device, versions, commit) and how rows are saved."""

from __future__ import annotations

import csv
import datetime
import platform
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "commit": git_commit(),
    }


def append_csv(rows: list[dict], path: Path, fields: list[str]) -> None:
    """Append rows under ``fields``; refuse a file whose header holds other columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != fields:
            raise ValueError(f"{path} has other columns than this benchmark writes; move it "
                             "aside or pass another --out")
    new_file = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def save_results(rows: list[dict], args, stem: str, fields: list[str], plot) -> None:
    """``<out>/<stem>_{cpu,gpu}.csv`` (appended) and, with ``--plot``, the PNG beside it."""
    if args.no_save or not rows:
        return
    base = args.out / f"{stem}_{'cpu' if args.device == 'cpu' else 'gpu'}"
    append_csv(rows, base.with_suffix(".csv"), fields)
    print(f"rows appended to {base.with_suffix('.csv')}")
    if args.plot:
        plot(rows, base.with_suffix(".png"))
