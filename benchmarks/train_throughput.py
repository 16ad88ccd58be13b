"""End-to-end training throughput: what each spectral-gating backend buys a whole model.

    python -m benchmarks.train_throughput                  # GPU: the three models below, bf16
    python -m benchmarks.train_throughput --models gfnet_s spectformer_s --batch-size 64 --amp none
    python -m benchmarks.train_throughput --device cpu     # a small CPU case, labelled as such

For each model and each available backend (``spectformer_kernels.available_backends()``,
``auto`` left out), in one process: build the model from the same seed, run warm-up steps,
then timed training steps (forward, soft-target cross-entropy, backward, gradient clipping,
AdamW; the step ``spectformer.train`` runs) on one fixed synthetic batch already on the
device, so no data loading is timed. Reports the median step time with its interquartile
range, images/s, the speed-up over ``reference`` and, on CUDA, the peak memory allocated
during the timed steps. Rows are appended, with device, versions and commit, to
``OUT/train_throughput_{gpu,cpu}.csv`` (``--out``, default ``output/benchmarks``); ``--plot``
draws images/s (with the interquartile range) and peak memory as a PNG.
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import torch

import spectformer
import spectformer_kernels as sk
from benchmarks.common import (
    add_output_flags, benchmark_parser, environment, flatten, list_of, quartiles, run,
    save_figure,
)
from spectformer.augment import smooth_one_hot
from spectformer.runtime import AMP_DTYPES, TrainStep, adamw

GPU_MODELS = ("spectformer_s", "gfnet_s", "spectformer_h_s")
CPU_MODEL = "spectformer_digits"
FIELDS = [
    "timestamp", "device", "torch", "triton", "cuda", "commit", "note", "model", "img_size",
    "batch", "amp", "backend", "compile", "channels_last", "warmup_steps", "timed_steps",
    "step_ms_median", "step_ms_p25", "step_ms_p75", "step_ms_mean", "images_per_s",
    "speedup_vs_reference", "peak_mem_mib",
    "status",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, backend: str, args, device: torch.device) -> dict:
    """Warm up, then time ``args.steps`` training steps; returns the row's measurements."""
    torch.manual_seed(0)
    model = spectformer.create_model(model_name, backend=backend, **args.model_overrides)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    in_chans, height, width = model.default_cfg["input_size"]
    images = torch.randn(args.batch_size, in_chans, height, width, device=device)
    images = images.contiguous(memory_format=memory_format)
    target = smooth_one_hot(torch.randint(model.num_classes, (args.batch_size,), device=device),
                            model.num_classes, smoothing=0.1)
    # The step spectformer.train runs (clipping at the recipe's 1.0), on a fixed batch.
    train_step = TrainStep(model, adamw(model, lr=1e-4, weight_decay=0.05), args.amp, device,
                           clip_grad=1.0, forward=torch.compile(model) if args.compile else model)

    for _ in range(args.warmup):
        train_step(images, target)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps)]
        for start, end in zip(starts, ends):
            start.record()
            train_step(images, target)
            end.record()
        sync(device)
        step_seconds = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        step_seconds = []
        for _ in range(args.steps):
            begin = time.perf_counter()
            train_step(images, target)
            step_seconds.append(time.perf_counter() - begin)
        peak_mib = None
    p25, median, p75 = quartiles(step_seconds)
    return {
        "img_size": height,
        "step_ms_median": round(median * 1e3, 3),
        "step_ms_p25": round(p25 * 1e3, 3),
        "step_ms_p75": round(p75 * 1e3, 3),
        "step_ms_mean": round(statistics.fmean(step_seconds) * 1e3, 3),
        "images_per_s": round(args.batch_size / median, 1),
        "peak_mem_mib": round(peak_mib, 1) if peak_mib is not None else "",
    }


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def benchmark(args, rows: list[dict]) -> None:
    """Appends one row per (model, backend) to ``rows``; the speed-ups are filled in even
    when the run is interrupted."""
    device = torch.device(args.device)
    env = environment(device)
    note = ("CPU run: a small case, not representative of GPU training"
            if device.type == "cpu" else "")
    if note:
        print(note)
    try:
        for model_name in args.models:
            for backend in args.backends:
                row = {**env, "note": note, "model": model_name, "batch": args.batch_size,
                       "amp": args.amp, "backend": backend, "compile": args.compile,
                       "channels_last": args.channels_last, "warmup_steps": args.warmup,
                       "timed_steps": args.steps}
                print(f"{model_name} / {backend}: {args.warmup} warm-up + {args.steps} timed "
                      "steps", flush=True)
                try:
                    row.update(measure(model_name, backend, args, device), status="ok")
                except torch.OutOfMemoryError:
                    row["status"] = "out of memory"
                except (RuntimeError, ValueError) as exc:  # e.g. a backend that rejects a shape
                    row["status"] = f"error: {str(exc).splitlines()[0][:200]}"
                release(device)
                rows.append(row)
    finally:
        for row in rows:
            ref = [r for r in rows if r["model"] == row["model"] and r["backend"] == "reference"
                   and r["status"] == "ok"]
            row["speedup_vs_reference"] = (
                round(ref[0]["step_ms_median"] / row["step_ms_median"], 3)
                if ref and row["status"] == "ok" else "")


def print_table(rows: list[dict]) -> None:
    """A markdown table (ready for the README)."""
    first = rows[0]
    print(f"\n{first['device']}, torch {first['torch']}, commit {first['commit']}, amp "
          f"{first['amp']}, batch {first['batch']}")
    print("| model | backend | images/s (interquartile) | step (ms) | vs reference | peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['model']} | {r['backend']} | {r['status']} | | | |")
            continue
        speedup = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] != "" else ""
        low, high = r["batch"] * 1e3 / r["step_ms_p75"], r["batch"] * 1e3 / r["step_ms_p25"]
        print(f"| {r['model']} | {r['backend']} | {r['images_per_s']:.1f} ({low:.1f}-{high:.1f}) | "
              f"{r['step_ms_median']:.1f} | {speedup} | {r['peak_mem_mib']} |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        print("nothing to plot: every case failed")
        return
    models = list(dict.fromkeys(r["model"] for r in ok))
    backends = list(dict.fromkeys(r["backend"] for r in ok))
    with_memory = all(r["peak_mem_mib"] != "" for r in ok)
    panels = [("images_per_s", "training images/s")]
    if with_memory:
        panels.append(("peak_mem_mib", "peak memory (MiB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7, 2.2 * len(models)) * len(panels), 4),
                             squeeze=False)
    width = 0.8 / len(backends)
    for ax, (key, label) in zip(axes[0], panels):
        for i, backend in enumerate(backends):
            found = [next((r for r in ok if r["model"] == m and r["backend"] == backend), None)
                     for m in models]
            values = [r[key] if r else 0.0 for r in found]
            spread = None
            if key == "images_per_s":  # whiskers: images/s at the 75th and 25th percentile step
                spread = [[max(v - r["batch"] * 1e3 / r["step_ms_p75"], 0.0) if r else 0.0
                           for v, r in zip(values, found)],
                          [max(r["batch"] * 1e3 / r["step_ms_p25"] - v, 0.0) if r else 0.0
                           for v, r in zip(values, found)]]
            bars = ax.bar([m + i * width for m in range(len(models))], values, width, label=backend,
                          yerr=spread, capsize=2, error_kw={"linewidth": 0.7})
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        sizes = {r["model"]: r["img_size"] for r in ok}
        ax.set_xticks([m + 0.4 - width / 2 for m in range(len(models))],
                      [f"{m}\n{sizes[m]}px" for m in models], fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    first = ok[0]
    fig.suptitle(f"training step, batch {first['batch']}, amp {first['amp']}"
                 + (" (CPU run, small case)" if first["note"] else "")
                 + f"\n{first['device']}, torch {first['torch']}, commit {first['commit']}",
                 fontsize=9)
    save_figure(fig, path)


def parse_args(argv=None):
    parser = benchmark_parser("python -m benchmarks.train_throughput", __doc__)
    parser.add_argument("--models", nargs="+", type=list_of(spectformer.list_models()),
                        help=f"default: {' '.join(GPU_MODELS)} on GPU, {CPU_MODEL} on CPU")
    parser.add_argument("--batch-size", type=int, help="default 128 on GPU, 32 on CPU")
    parser.add_argument("--img-size", type=int, help="input resolution (default: each model's)")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), help="default bf16 on GPU, none on CPU")
    parser.add_argument("--backends", nargs="+", type=list_of(),
                        help="default: every available backend")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 10 GPU, 2 CPU)")
    parser.add_argument("--steps", type=int, help="timed steps (default 30 GPU, 5 CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--channels-last", action="store_true")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    args.models = flatten(args.models) or list(GPU_MODELS if gpu else [CPU_MODEL])
    available = [b for b in sk.available_backends() if b != "auto"]
    args.backends = flatten(args.backends) or available
    missing = [b for b in args.backends if b not in available]
    if missing:
        parser.error(f"--backends: {missing} cannot run here; available: {', '.join(available)}")
    if "reference" not in args.backends:
        args.backends.insert(0, "reference")  # the baseline every speed-up is against
    args.batch_size = args.batch_size or (128 if gpu else 32)
    args.amp = args.amp or ("bf16" if gpu else "none")
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    args.steps = args.steps or (30 if gpu else 5)
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.model_overrides = {"img_size": args.img_size} if args.img_size else {}
    return args


def main(argv=None) -> list[dict]:
    return run(parse_args(argv), benchmark, print_table, "train_throughput", FIELDS, plot)


if __name__ == "__main__":
    main()
