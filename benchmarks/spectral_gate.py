"""Microbenchmark of the spectral gate: every available backend, the shapes that matter.

    python -m benchmarks.spectral_gate                 # GPU if there is one, else a CPU run
    python -m benchmarks.spectral_gate --device cpu --plot
    python -m benchmarks.spectral_gate --shapes 14x14x384 7x7x768 --dtypes bf16 --modes fwd

For each backend, shape, dtype and mode it reports the median time with its interquartile
range, the achieved bandwidth against the op's floor (forward: read x + write y;
forward+backward: that plus read x and dy, write dx), that bandwidth as a share of the
device's copy bandwidth measured in the same run, and the speed-up over ``reference``: the
median and quartiles of per-round ratios. On the CPU the backends of a case are timed
interleaved, one call each per round, so a shared machine's drift hits them alike. Rows
are appended, with device, versions and commit, to ``OUT/spectral_gate_{cpu,gpu}.csv``
(``--out``, default ``output/benchmarks``); ``--plot`` draws the speed-ups as a PNG.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import spectformer_kernels as sk
from benchmarks.common import (
    add_output_flags, benchmark_parser, environment, flatten, list_of, quartiles, run,
    save_figure,
)
from benchmarks.shapes import SHAPES

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "fwd+bwd")
FIELDS = [
    "timestamp", "device", "torch", "triton", "cuda", "commit", "backend", "shape", "batch",
    "dtype", "mode", "median_us", "p25_us", "p75_us", "gbps", "pct_copy_bw", "speedup_vs_reference",
    "speedup_p25", "speedup_p75", "rel_err_vs_reference", "copy_gbps", "timing", "config",
]


def time_cuda(fn, reps: int) -> list[float]:
    """Seconds per rep with CUDA events, L2 flushed before every rep (memory-bound op)."""
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    for _ in range(max(3, reps // 10)):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def time_cpu(fn, min_seconds: float) -> list[float]:
    """Seconds per call, one value per timed block of calls."""
    from torch.utils.benchmark import Timer

    return list(Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_seconds).times)


def time_cpu_interleaved(runs: dict, min_seconds: float, min_rounds: int = 9) -> dict:
    """Seconds per call of every function in ``runs``, timed side by side: each round calls
    each once, in an order that rotates from round to round, until every function has had
    ``min_seconds`` and there are at least ``min_rounds`` rounds. On a shared machine the
    speed drifts by tens of percent within seconds; interleaving puts every backend in the
    same spells, so the per-round ratios (``paired_speedups``) compare like with like."""
    names = list(runs)
    for fn in runs.values():  # warm-up: caches, allocator, lazily built constants
        fn()
    times = {name: [] for name in names}
    spent, rounds = 0.0, 0
    while rounds < min_rounds or spent < min_seconds * len(names):
        for i in range(len(names)):
            name = names[(rounds + i) % len(names)]
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
        rounds += 1
    return times


def tuned_config(backend: str, h: int, w: int, mode: str) -> str:
    """The Triton configs the autotuner ran the case with (forward, then backward), named as
    the GPU model names them, so ``model_vs_measured`` can set them side by side; empty for
    the other backends."""
    if backend != "triton":
        return ""
    from spectformer_kernels import triton_backend

    kernels = ("forward",) if mode == "fwd" else ("forward", "backward")
    return " | ".join(triton_backend.last_config(kernel, h, w) for kernel in kernels)


def paired_speedups(reference: list[float], candidate: list[float]) -> tuple[float, float, float]:
    """Quartiles of the per-round ratios ``reference / candidate`` (rounds in step)."""
    return quartiles([r / c for r, c in zip(reference, candidate)])


def copy_bandwidth(device: torch.device, quick: bool) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    numel = (64 if device.type == "cpu" or quick else 512) * 1024 * 1024 // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    seconds = statistics.median(time_cuda(fn, 50) if device.type == "cuda" else time_cpu(fn, 0.5))
    return 2 * src.numel() * src.element_size() / seconds


def floor_bytes(x: torch.Tensor, mode: str) -> int:
    tensor_bytes = x.numel() * x.element_size()
    return tensor_bytes * (2 if mode == "fwd" else 5)


def make_case(backend: str, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, mode: str):
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return sk.spectral_gate(x, weight, backend=backend)
    else:
        xr, wr = x.detach().requires_grad_(True), weight.detach().requires_grad_(True)

        def run():
            y = sk.spectral_gate(xr, wr, backend=backend)
            return torch.autograd.grad(y, (xr, wr), grad)
    return run


def benchmark(args, rows: list[dict]) -> None:
    """Appends one row per (case, backend) to ``rows`` as each case finishes."""
    device = torch.device(args.device)
    env = environment(device)
    backends = args.backends or [b for b in sk.available_backends() if b != "auto"]
    if "reference" not in backends:
        backends = ["reference", *backends]  # every row is compared against it
    copy_bw = copy_bandwidth(device, args.quick)
    print(f"# {env['device']} | torch {env['torch']} | triton {env['triton']} | "
          f"CUDA {env['cuda']} | commit {env['commit']}")
    print(f"# measured copy bandwidth: {copy_bw / 1e9:.1f} GB/s (read + write)")
    if device.type == "cpu":
        print(f"# CPU run (batch {args.batch}): CPU timings say nothing about GPU kernels")

    cases = [(s, d, m) for s in args.shapes for d in args.dtypes for m in args.modes]
    try:
        from tqdm import tqdm

        cases = tqdm(cases, desc="cases", file=sys.stderr, leave=False)
    except ImportError:
        pass
    for shape_name, dtype_name, mode in cases:
        h, w, c = SHAPES[shape_name]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, h, w, c, generator=gen).to(device, DTYPES[dtype_name])
        weight = (torch.randn(h, w // 2 + 1, c, 2, generator=gen) * 0.02).to(device)
        grad = torch.randn(args.batch, h, w, c, generator=gen).to(device, DTYPES[dtype_name])
        runs, outputs = {}, {}
        for backend in backends:
            try:
                runs[backend] = make_case(backend, x, weight, grad, mode)
                out = runs[backend]()
            except (sk.BackendUnavailableError, NotImplementedError) as err:
                print(f"  skip {backend} {shape_name} {dtype_name}: {err}", file=sys.stderr)
                runs.pop(backend, None)
                continue
            outputs[backend] = (out if isinstance(out, torch.Tensor) else out[0]).float()
        configs = {}
        if device.type == "cuda":  # one backend after another; the GPU does not drift
            samples = {}
            for backend, run in runs.items():
                samples[backend] = time_cuda(run, args.reps)
                configs[backend] = tuned_config(backend, h, w, mode)
        else:
            samples = time_cpu_interleaved(runs, args.min_seconds)
        ref_out = outputs["reference"]
        for backend, times in samples.items():
            p25, seconds, p75 = quartiles(times)
            speedup = paired_speedups(samples["reference"], times)
            gbps = floor_bytes(x, mode) / seconds
            err = ((outputs[backend] - ref_out).norm() / ref_out.norm()).item()
            rows.append({
                **env, "backend": backend, "shape": shape_name, "batch": args.batch,
                "dtype": dtype_name, "mode": mode, "median_us": round(seconds * 1e6, 2),
                "p25_us": round(p25 * 1e6, 2), "p75_us": round(p75 * 1e6, 2),
                "gbps": round(gbps / 1e9, 2), "pct_copy_bw": round(100 * gbps / copy_bw, 1),
                "speedup_vs_reference": round(speedup[1], 2), "speedup_p25": round(speedup[0], 2),
                "speedup_p75": round(speedup[2], 2),
                "rel_err_vs_reference": f"{err:.1e}", "copy_gbps": round(copy_bw / 1e9, 1),
                "timing": "sequential, CUDA events" if device.type == "cuda" else
                          f"interleaved, {len(times)} rounds",
                "config": configs.get(backend, ""),
            })


def print_table(rows: list[dict]) -> None:
    header = f"{'shape':>10} {'dtype':>5} {'mode':>8} {'backend':>10} {'median us':>11} " \
             f"{'IQR us':>17} {'GB/s':>8} {'% copy':>7} {'vs ref (IQR)':>18} {'err vs ref':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['shape']:>10} {r['dtype']:>5} {r['mode']:>8} {r['backend']:>10} "
              f"{r['median_us']:>11.1f} {r['p25_us']:>8.1f}-{r['p75_us']:<8.1f} "
              f"{r['gbps']:>8.1f} {r['pct_copy_bw']:>6.1f}% "
              f"{r['speedup_vs_reference']:>6.2f}x ({r['speedup_p25']:.2f}-{r['speedup_p75']:.2f}) "
              f"{r['rel_err_vs_reference']:>10}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dtype"], r["mode"]) for r in rows})
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.3 * len(shapes)), 3.2 * len(panels)),
                             squeeze=False)
    width = 0.8 / len(backends)
    for ax, (dtype, mode) in zip(axes[:, 0], panels):
        for i, backend in enumerate(backends):
            speedups, spread = [], [[], []]
            for shape in shapes:
                match = [r for r in rows if (r["dtype"], r["mode"], r["backend"], r["shape"])
                         == (dtype, mode, backend, shape)]
                speedup = match[0]["speedup_vs_reference"] if match else 0.0
                speedups.append(speedup)
                # The whisker: quartiles of the per-round ratios.
                low = match[0].get("speedup_p25", speedup) if match else speedup
                high = match[0].get("speedup_p75", speedup) if match else speedup
                spread[0].append(max(speedup - low, 0.0))
                spread[1].append(max(high - speedup, 0.0))
            bars = ax.bar([s + i * width for s in range(len(shapes))], speedups, width, label=backend,
                          yerr=spread, capsize=2, error_kw={"linewidth": 0.7})
            # No label where the backend has no row (it declined the shape).
            ax.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in speedups], fontsize=7)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks([s + 0.4 - width / 2 for s in range(len(shapes))], shapes, fontsize=8)
        ax.set_ylabel("speed-up vs reference\n(median and quartiles of paired ratios)")
        ax.set_title(f"{dtype}, {mode}, batch {rows[0]['batch']}", fontsize=9)
        ax.legend(fontsize=7, ncol=len(backends))
    fig.suptitle(f"spectral gate on {rows[0]['device']} (commit {rows[0]['commit']})", fontsize=10)
    save_figure(fig, path)


def parse_args(argv=None):
    parser = benchmark_parser("python -m benchmarks.spectral_gate", __doc__)
    parser.add_argument("--batch", type=int, help="batch size (default 128 on GPU, 16 on CPU)")
    parser.add_argument("--shapes", nargs="+", type=list_of(SHAPES),
                        help=f"HxWxC of {' '.join(SHAPES)} (default: all)")
    parser.add_argument("--dtypes", nargs="+", type=list_of(DTYPES), help="default: fp32 bf16")
    parser.add_argument("--modes", nargs="+", type=list_of(MODES), help="default: fwd fwd+bwd")
    parser.add_argument("--backends", nargs="+", type=list_of(),
                        help="default: every available backend")
    parser.add_argument("--reps", type=int, default=100, help="timed reps per case on GPU")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="time per case on CPU")
    parser.add_argument("--quick", action="store_true", help="fewer reps, smaller copy probe")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    args.batch = args.batch or (128 if args.device == "cuda" else 16)
    args.shapes = flatten(args.shapes) or list(SHAPES)
    args.dtypes = flatten(args.dtypes) or ["fp32", "bf16"]
    args.modes = flatten(args.modes) or list(MODES)
    args.backends = flatten(args.backends)
    unknown = [b for b in args.backends or [] if b not in sk.registered_backends()]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(sk.registered_backends())}")
    if args.quick:
        args.reps, args.min_seconds = 20, 0.2
    return args


def main(argv=None) -> list[dict]:
    return run(parse_args(argv), benchmark, print_table, "spectral_gate", FIELDS, plot)


if __name__ == "__main__":
    main()
