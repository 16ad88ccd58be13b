"""Compile-time resources of the Triton kernels for Hopper (sm_90), without a GPU.

    python -m benchmarks.triton_resources                         # pruned configs, all shapes
    python -m benchmarks.triton_resources --shapes 14x14x384 --dtypes bf16
    python -m benchmarks.triton_resources --all-configs --timeout 30   # what the pruner drops

Triton compiles ahead of time for a target it is told about, so the forward and backward
kernels are compiled here for ``sm_90a`` and the PTX is run through Triton's bundled
``ptxas -v``. For each kernel, dtype, shape and autotune config that the pruner keeps, it
reports registers per thread, spill stores (bytes), shared memory per block and whether the
block fits Hopper's 227 KB. These are **compile-time resource figures, not timings**: they
need no GPU and say nothing about speed, but a config that spills heavily or needs more
shared memory than the SM has cannot be fast (the latter cannot even launch).

Every compile runs in its own subprocess (``TRITON_INTERPRET`` unset, with a timeout: some
configs keep LLVM/ptxas busy for many minutes, which is itself a reason to prune them).
Rows are written to ``benchmarks/results/triton_resources.csv`` (overwritten per run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import add_output_flags
from benchmarks.shapes import SHAPES

SMEM_LIMIT = 227 * 1024  # Hopper's largest shared memory per block (opt-in), bytes
TARGET = "sm_90a"

DTYPES = ("fp32", "bf16")
KERNELS = ("forward", "backward")
FIELDS = [
    "kind", "target", "kernel", "dtype", "shape", "block_c", "num_warps", "registers",
    "spill_bytes", "shared_bytes", "fits_smem", "est_tile_per_thread", "est_shared_bytes",
    "compile_s", "status", "triton", "ptxas", "commit",
]
KIND = "compile-time resources via ptxas -v on a CPU machine (not timings)"

_IO_POINTERS = {"x_ptr", "y_ptr", "grad_y_ptr", "grad_x_ptr"}  # in the input dtype


def compile_resources(kernel: str, dtype: str, h: int, w: int, block_c: int,
                      num_warps: int) -> dict:
    """Compile one kernel config for sm_90 and return registers, spills and shared memory.

    Needs the compiled (not interpreted) kernels: run it where ``TRITON_INTERPRET`` is unset.
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from spectformer_kernels import triton_backend as tb

    if tb.INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled")
    fn = tb._forward_kernel if kernel == "forward" else tb._backward_kernel
    io_type = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}[dtype]
    constants = tb.kernel_constants(h, w)
    constants.update(BLOCK_C=block_c, DOT_DTYPE=getattr(tl, {"fp32": "float32",
                     "bf16": "bfloat16", "fp16": "float16"}[dtype]))
    if "BATCH_PER_PROGRAM" in fn.arg_names:
        constants["BATCH_PER_PROGRAM"] = tb.BATCH_PER_PROGRAM
    signature = {}
    for name in fn.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = io_type if name in _IO_POINTERS else "*fp32"
        else:
            signature[name] = "i32"
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, constants),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(compiled.asm["ptx"])
        # Same register allocator flag as Triton's own ptxas call, so the counts match.
        log = subprocess.run([ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name={TARGET}",
                              str(src), "-o", str(Path(tmp) / "kernel.o")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release ([\d.]+)", version)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_bytes": int(spills.group(1)) if spills else 0,
        "shared_bytes": int(compiled.metadata.shared),
        "compile_s": round(time.perf_counter() - start, 1),
        "triton": triton.__version__,
        "ptxas": release.group(1) if release else "unknown",
    }


def compile_in_subprocess(job: tuple, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 warning; the default
    cmd = [sys.executable, "-m", "benchmarks.triton_resources", "--one", json.dumps(job)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout>{timeout:g}s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"error: {last[:120]}"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def largest_kept_config(kernel: str, dtype: str, h: int, w: int, c: int) -> tuple:
    """The kept config with the most elements per thread: the worst case for resources."""
    kept = _configs(kernel, dtype, h, w, c, all_configs=False)
    cfg = max(kept, key=lambda cfg: (cfg.kwargs["BLOCK_C"] / cfg.num_warps,
                                     cfg.kwargs["BLOCK_C"]))
    return (kernel, dtype, h, w, cfg.kwargs["BLOCK_C"], cfg.num_warps)


def estimate_for(job: tuple) -> dict:
    from spectformer_kernels import triton_backend as tb

    return tb.estimate_resources(*job)


def _configs(kernel: str, dtype: str, h: int, w: int, c: int, all_configs: bool):
    import torch

    from spectformer_kernels import triton_backend as tb

    configs = tb._AUTOTUNE_CONFIGS
    if all_configs:
        return configs
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    prune = tb._prune_forward if kernel == "forward" else tb._prune_backward
    return prune(configs, {"C": c}, **tb.kernel_constants(h, w), DOT_DTYPE=tb._DOT_DTYPES[dt])


def _table(rows: list[dict]) -> str:
    head = (f"{'kernel':8} {'dtype':5} {'shape':10} {'BLOCK_C':>7} {'warps':>5} {'regs':>5} "
            f"{'spill B':>8} {'smem B':>8} {'fits':>4} {'est e/thr':>9} {'est smem':>8}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        def val(key):
            v = r.get(key)
            return "-" if v is None or v == "" else v
        lines.append(
            f"{r['kernel']:8} {r['dtype']:5} {r['shape']:10} {r['block_c']:>7} "
            f"{r['num_warps']:>5} {val('registers'):>5} {val('spill_bytes'):>8} "
            f"{val('shared_bytes'):>8} {val('fits_smem'):>4} {val('est_tile_per_thread'):>9} "
            f"{val('est_shared_bytes'):>8}  {r['status']}")
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
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one compile, JSON out
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(compile_resources(*json.loads(args.one))))
        return

    from spectformer_kernels import triton_backend as tb
    from benchmarks.common import git_commit

    rows, jobs = [], {}
    for kernel in args.kernels:
        for dtype in args.dtypes:
            for shape in args.shapes:
                h, w, c = SHAPES[shape]
                for cfg in _configs(kernel, dtype, h, w, c, args.all_configs):
                    bc, nw = cfg.kwargs["BLOCK_C"], cfg.num_warps
                    if args.warps and nw not in args.warps:
                        continue
                    # The compiled code depends on the grid, not on C (a runtime argument).
                    job = (kernel, dtype, h, w, bc, nw)
                    est = estimate_for(job)
                    rows.append({"kind": KIND, "target": TARGET, "kernel": kernel,
                                 "dtype": dtype, "shape": shape, "block_c": bc,
                                 "num_warps": nw, "est_tile_per_thread": est["tile_per_thread"],
                                 "est_shared_bytes": est["shared_bytes"], "job": job})
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
