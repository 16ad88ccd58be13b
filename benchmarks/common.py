"""Shared by the benchmarks: where a row ran (device, versions, commit), their common flags,
the spread of timings, and how rows are saved."""

from __future__ import annotations

import argparse
import csv
import datetime
import signal
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# A run's rows land in an ignored folder of the working directory; the committed
# benchmarks/results change only when --out names it on purpose.
DEFAULT_OUT = Path("output") / "benchmarks"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def list_of(choices=None):
    """``type=`` for ``nargs="+"`` flags: ``--shapes a b`` (the style every benchmark uses);
    commas are split too, so ``a,b`` still works."""
    def parse(text: str) -> list[str]:
        values = [v for v in text.split(",") if v]
        unknown = [v for v in values if choices is not None and v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from "
                                             f"{', '.join(choices)}")
        return values
    return parse


def flatten(values) -> list:
    return None if values is None else [v for group in values for v in group]


def benchmark_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser, described by its module docstring's first paragraph, with
    ``--device`` (default: the GPU where there is one)."""
    import torch

    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    return parser


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}")


def add_output_flags(parser: argparse.ArgumentParser, plot: bool = True) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the results (default: {DEFAULT_OUT}, not tracked; "
                             "benchmarks/results holds the committed ones)")
    parser.add_argument("--no-save", action="store_true", help="print only, write nothing")
    if plot:
        parser.add_argument("--plot", action="store_true", help="also draw a PNG")


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    """``(25th percentile, median, 75th percentile)`` of repeated timings."""
    if len(samples) < 2:
        return samples[0], samples[0], samples[0]
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


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


def environment(device) -> dict:
    import torch  # here, so torch-free tools (triton_resources) can share this module

    from spectformer.runtime import device_name

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


def device_time_us(event, self_only: bool = False) -> float:
    """A ``torch.profiler`` event's device time in microseconds (its own kernels only with
    ``self_only``), under the attribute names of older and newer torch releases."""
    name = "self_device_time_total" if self_only else "device_time_total"
    total = getattr(event, name, None)
    if total is None:
        total = getattr(event, name.replace("device", "cuda"))
    return total


def append_csv(rows: list[dict], path: Path, fields: list[str]) -> None:
    """Append rows under ``fields``. A file written before new columns were added is
    rewritten with them (empty in its old rows); one with unknown columns is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header, old_rows = reader.fieldnames or [], list(reader)
        if not set(header) <= set(fields):
            raise ValueError(f"{path} has other columns than this benchmark writes; move it "
                             "aside or pass another --out")
        if header != fields:
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(old_rows)
    new_file = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def run(args, benchmark, print_table, stem: str, fields: list[str], plot) -> list[dict]:
    """A benchmark's main: measure, print the markdown table, save the rows (and plot).
    ``benchmark(args, rows)`` appends each row as it is measured, so that an interrupted run
    (Ctrl-C, or SIGTERM from a time limit) still prints and saves what it measured."""
    rows: list[dict] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    try:
        benchmark(args, rows)
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted: keeping the {len(rows)} rows measured so far", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if rows:
        print_table(rows)
        save_results(rows, args, stem, fields, plot)
    if interrupted:
        sys.exit(130)
    return rows


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def save_results(rows: list[dict], args, stem: str, fields: list[str], plot) -> None:
    """``<out>/<stem>_{cpu,gpu}.csv`` (appended) and, with ``--plot``, the PNG beside it."""
    if args.no_save or not rows:
        return
    base = args.out / f"{stem}_{'cpu' if args.device == 'cpu' else 'gpu'}"
    append_csv(rows, base.with_suffix(".csv"), fields)
    print(f"rows appended to {base.with_suffix('.csv')}")
    if args.plot:
        plot(rows, base.with_suffix(".png"))
