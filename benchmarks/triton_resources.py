"""Compile-time resources of the Triton kernels for Hopper (sm_90), without a GPU.

    python -m benchmarks.triton_resources                         # pruned configs, all shapes
    python -m benchmarks.triton_resources --shapes 14x14x384 --dtypes bf16
    python -m benchmarks.triton_resources --all-configs --timeout 30   # what the pruner drops

Triton compiles ahead of time for a target it is told about, so the forward and backward
kernels are compiled here for ``sm_90a`` with the launcher's own specialization (the
arguments come from ``triton_backend.forward_arguments``/``backward_arguments`` and pass
through ``triton_backend.specialization``, Triton's launch binder: ints equal to 1 become
constexprs, ints and pointers divisible by 16 carry that hint), and the cubin's resources are
read with Triton's bundled ``cuobjdump -res-usage``. For each kernel, dtype, shape and autotune
config that the resource estimate keeps (``--all-configs``: every config), it reports
registers per thread, the stack frame (spill slots, bytes), shared memory per block and
whether the block fits Hopper's 227 KB. These are **compile-time resource figures, not
timings**: they need no GPU and say nothing about speed, but a config that spills heavily or
needs more shared memory than the SM has cannot be fast (the latter cannot even launch).
Timings by a static model: ``python -m benchmarks.gpu_model``.

Every compile runs in its own subprocess (``TRITON_INTERPRET`` unset, with a timeout: some
configs keep LLVM/ptxas busy for many minutes, which is itself a reason to prune them).
Rows are written to ``benchmarks/results/triton_resources.csv`` (overwritten per run).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import add_output_flags
from benchmarks.shapes import SHAPES
from spectformer_kernels.triton_compile import compile_in_subprocess

SMEM_LIMIT = 227 * 1024  # Hopper's largest shared memory per block (opt-in), bytes
TARGET = "sm_90a"

DTYPES = ("fp32", "bf16")
KERNELS = ("forward", "backward")
FIELDS = [
    "kind", "target", "kernel", "dtype", "shape", "block_c", "num_warps", "registers",
    "spill_bytes", "shared_bytes", "fits_smem", "est_tile_per_thread",
    "compile_s", "status", "triton", "ptxas", "commit",
]  # spill_bytes: the stack frame cuobjdump reports (spill slots; the kernels have no arrays)
KIND = "compile-time resources of sm_90a cubins on a CPU machine (not timings)"

def estimate_for(job: tuple) -> dict:
    from spectformer_kernels import triton_backend as tb

    return tb.estimate_resources(*job)


def _configs(kernel: str, dtype: str, h: int, w: int, c: int, all_configs: bool):
    from spectformer_kernels import triton_backend as tb

    if all_configs:
        return tb.autotune_configs(h, w)
    return tb.kept_configs(kernel, dtype, h, w, c, use_compiled=False)


def _table(rows: list[dict]) -> str:
    head = (f"{'kernel':8} {'dtype':5} {'shape':10} {'BLOCK_C':>7} {'warps':>5} {'regs':>5} "
            f"{'spill B':>8} {'smem B':>8} {'fits':>4} {'est e/thr':>9}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        def val(key):
            v = r.get(key)
            return "-" if v is None or v == "" else v
        lines.append(
            f"{r['kernel']:8} {r['dtype']:5} {r['shape']:10} {r['block_c']:>7} "
            f"{r['num_warps']:>5} {val('registers'):>5} {val('spill_bytes'):>8} "
            f"{val('shared_bytes'):>8} {val('fits_smem'):>4} {val('est_tile_per_thread'):>9}  "
            f"{r['status']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.triton_resources",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES),
                        choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--warps", nargs="+", type=int, help="only these num_warps")
    parser.add_argument("--all-configs", action="store_true",
                        help="every autotune config, not only those the pruner keeps")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per compile")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    add_output_flags(parser, plot=False)
    args = parser.parse_args(argv)

    from spectformer_kernels import triton_backend as tb
    from benchmarks.common import git_commit

    rows, jobs = [], {}
    for kernel in args.kernels:
        for dtype in args.dtypes:
            for shape in args.shapes:
                h, w, c = SHAPES[shape]
                # batch_per_program is a runtime argument: one binary per (BLOCK_C, warps)
                pairs = dict.fromkeys((cfg.kwargs["BLOCK_C"], cfg.num_warps)
                                      for cfg in _configs(kernel, dtype, h, w, c, args.all_configs))
                for bc, nw in pairs:
                    if args.warps and nw not in args.warps:
                        continue
                    # The compiled code depends on the grid, not on C (a runtime argument).
                    job = (kernel, dtype, h, w, bc, nw)
                    est = estimate_for(job)
                    rows.append({"kind": KIND, "target": TARGET, "kernel": kernel,
                                 "dtype": dtype, "shape": shape, "block_c": bc,
                                 "num_warps": nw, "est_tile_per_thread": est["tile_per_thread"],
                                 "job": job})
                    jobs[job] = None

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    print(f"# {KIND}; target {TARGET}; {len(jobs)} distinct compiles for {len(rows)} rows",
          flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {job: pool.submit(compile_in_subprocess, job, args.timeout) for job in jobs}
        pending = futures.items()
        if tqdm is not None:
            pending = tqdm(pending, total=len(futures), desc="compiles", file=sys.stderr)
        for job, future in pending:
            jobs[job] = future.result()

    commit = git_commit()
    for row in rows:
        result = jobs[row.pop("job")]
        row.update({k: result.get(k, "") for k in
                    ("registers", "spill_bytes", "shared_bytes", "compile_s", "status",
                     "triton", "ptxas")})
        row["commit"] = commit
        shared = result.get("shared_bytes")
        row["fits_smem"] = "" if shared is None else ("yes" if shared <= SMEM_LIMIT else "NO")
    print(_table(rows))
    if not args.no_save:
        path = args.out / "triton_resources.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"# rows written to {path} ({KIND})")


if __name__ == "__main__":
    main()
