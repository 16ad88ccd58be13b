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
    "spill_bytes", "shared_bytes", "fits_smem", "est_tile_per_thread",
    "compile_s", "status", "triton", "ptxas", "commit",
]  # spill_bytes: the stack frame cuobjdump reports (spill slots; the kernels have no arrays)
KIND = "compile-time resources of sm_90a cubins on a CPU machine (not timings)"

ALIGNMENT = 256  # device allocations (torch's caching allocator) are at least this aligned


class DeviceTensor:
    """Stands in for a CUDA tensor in Triton's specialization: shape, dtype, contiguous
    strides and an aligned address (all the launcher's binder looks at)."""

    def __init__(self, shape, dtype):
        import torch

        self.shape = torch.Size(shape)
        self.dtype = dtype

    def stride(self):
        strides, step = [], 1
        for n in reversed(self.shape):
            strides.insert(0, step)
            step *= n
        return tuple(strides)

    def data_ptr(self) -> int:
        return ALIGNMENT * 4096


class _Matrices:
    def __init__(self, h: int, w: int):
        import torch

        wk = w // 2 + 1
        self.w_forward = DeviceTensor((2 * wk, w), torch.float32)
        self.h_forward = DeviceTensor((2 * h, 2 * h), torch.float32)
        self.h_inverse = DeviceTensor((2 * h, 2 * h), torch.float32)
        self.w_inverse = DeviceTensor((w, 2 * wk), torch.float32)
        self.forward = DeviceTensor((h * w, 2 * h * wk), torch.float32)  # the dense maps
        self.inverse = DeviceTensor((2 * h * wk, h * w), torch.float32)


def launch_arguments(kernel: str, dtype: str, batch: int, h: int, w: int, c: int) -> dict:
    """The launcher's arguments (``triton_backend.forward_arguments`` /
    ``backward_arguments``) for contiguous channels-last tensors of this shape."""
    import torch

    from spectformer_kernels import triton_backend as tb

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    x = DeviceTensor((batch, h, w, c), dt)
    weight = DeviceTensor((h, w // 2 + 1, c, 2), torch.float32)
    mats = _Matrices(h, w)
    if kernel == "forward":
        return tb.forward_arguments(x, weight, DeviceTensor(x.shape, dt), mats)
    groups = -(-batch // tb.BATCH_PER_PROGRAM)
    partials = DeviceTensor((groups, h, w // 2 + 1, c, 2), torch.float32)
    return tb.backward_arguments(DeviceTensor(x.shape, dt), x, weight, DeviceTensor(x.shape, dt),
                                 partials, mats)


def compile_config(kernel: str, dtype: str, batch: int, h: int, w: int, c: int,
                   block_c: int, num_warps: int, num_stages: int = 3):
    """Compile one autotune config for sm_90a exactly as the launcher would specialize it.

    Needs the compiled (not interpreted) kernels: run it where ``TRITON_INTERPRET`` is unset.
    Returns Triton's CompiledKernel (``asm["cubin"]``, ``metadata.shared``, ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from spectformer_kernels import triton_backend as tb

    if tb.INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled")
    fn = tb.kernel_function(kernel, h, w)
    target = GPUTarget("cuda", 90, 32)
    config = triton.Config({"BLOCK_C": block_c}, num_warps=num_warps, num_stages=num_stages)
    options, signature, constexprs, attrs = tb.specialization(
        kernel, launch_arguments(kernel, dtype, batch, h, w, c), config, target)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def cubin_resources(cubin: bytes) -> dict:
    """{function: registers, stack frame, local and static shared bytes} from
    ``cuobjdump -res-usage`` (Triton's bundled copy)."""
    from benchmarks.sass import tool

    cuobjdump = tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (Triton's NVIDIA backend or a CUDA toolkit)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([cuobjdump, "-res-usage", str(path)], capture_output=True,
                              text=True, check=True).stdout
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        fields = dict(re.findall(r"(\w+):(\d+)", line))
        if name and "REG" in fields:
            out[name] = {"registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"]),
                         "local_bytes": int(fields["LOCAL"]),
                         "static_shared": int(fields["SHARED"])}
    return out


def compile_resources(kernel: str, dtype: str, h: int, w: int, block_c: int,
                      num_warps: int, c: int = 384, batch: int = 128) -> dict:
    """Registers, stack frame (spill) bytes and shared memory of one config for sm_90a."""
    import triton

    start = time.perf_counter()
    compiled = compile_config(kernel, dtype, batch, h, w, c, block_c, num_warps)
    (res,) = cubin_resources(compiled.asm["cubin"]).values()
    return {
        "registers": res["registers"],
        "spill_bytes": res["stack_bytes"],
        "shared_bytes": int(compiled.metadata.shared),
        "compile_s": round(time.perf_counter() - start, 1),
        "triton": triton.__version__,
        "ptxas": "bundled",
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


def largest_kept_config(kernel: str, dtype: str, h: int, w: int, c: int):
    """The pruner's kept config with the most elements per thread (the worst case for
    resources), or None when the pruner keeps none (``supports`` declines the shape)."""
    from spectformer_kernels import triton_backend as tb

    kept = tb.kept_configs(kernel, dtype, h, w, c)
    if not kept:
        return None
    cfg = max(kept, key=lambda cfg: (cfg.kwargs["BLOCK_C"] / cfg.num_warps,
                                     cfg.kwargs["BLOCK_C"]))
    return (kernel, dtype, h, w, cfg.kwargs["BLOCK_C"], cfg.num_warps)


def estimate_for(job: tuple) -> dict:
    from spectformer_kernels import triton_backend as tb

    return tb.estimate_resources(*job)


def _configs(kernel: str, dtype: str, h: int, w: int, c: int, all_configs: bool):
    from spectformer_kernels import triton_backend as tb

    if all_configs:
        return tb._AUTOTUNE_CONFIGS
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
