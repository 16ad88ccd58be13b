"""Where a backend's time goes on the GPU: device time per kernel (torch.profiler) against the
host's time per call, and, for Triton, the compiled kernels' registers, spills and shared
memory.

A backend whose wall time per call is far above the sum of its kernels' device time is
host-bound (launch overhead, Python); one whose kernels alone are slow is not. The benchmark
(``benchmarks.spectral_gate``) times with CUDA events and cannot tell the two apart.

    python -m benchmarks.kernel_profile --backends reference triton cuda --shapes 14x14x384
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import device_time_us
from benchmarks.shapes import SHAPES
from benchmarks.spectral_gate import DTYPES, make_case


def profile_case(backend: str, x, weight, grad, mode: str, calls: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    once = make_case(backend, x, weight, grad, mode)
    for _ in range(3):  # autotuning, compilation, plan creation
        once()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        once()
    host = (time.perf_counter() - start) / calls  # enqueue time per call, no sync inside
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / calls
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            once()
        torch.cuda.synchronize()
    kernels = {}
    for event in prof.key_averages():
        device_us = device_time_us(event, self_only=True)
        if device_us > 0:
            kernels[event.key] = device_us / calls
    return {"host_us": host * 1e6, "wall_us": wall * 1e6, "kernels": kernels}


def triton_kernels_report() -> list[str]:
    """Registers, spills and shared memory of every Triton kernel compiled so far."""
    from spectformer_kernels import triton_backend as tb

    lines = []
    for (kernel, dense), (fn, tuned) in tb._KERNELS.items():
        caches = getattr(fn, "device_caches", {})
        for device, entry in caches.items():
            for key, compiled in entry[0].items():
                try:
                    compiled._init_handles()
                except Exception:  # noqa: BLE001 (older Triton: initialised at load)
                    pass
                meta = compiled.metadata
                constants = dict(getattr(getattr(compiled, "src", None), "constants", {}) or {})
                # Triton keys constants by argument index (a tuple); name them.
                named = {fn.arg_names[k[0]] if isinstance(k, tuple) else k: v
                         for k, v in constants.items() if isinstance(v, int)}
                shown = {k: named[k] for k in ("H", "W", "BLOCK_C", "SPLIT", "SCALE") if k in named}
                lines.append(
                    f"{kernel:8} dense={dense!s:5} warps={meta.num_warps} stages={meta.num_stages} "
                    f"regs={compiled.n_regs} spills={compiled.n_spills} shared={meta.shared} "
                    f"{shown}")
        best = getattr(tuned, "best_config", None)
        if best is not None:
            lines.append(f"{kernel:8} dense={dense!s:5} autotuner's last config: {best}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser("python -m benchmarks.kernel_profile", description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["reference", "triton"])
    parser.add_argument("--shapes", nargs="+", default=["14x14x384", "28x28x192", "7x7x768"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    for shape in args.shapes:
        h, w, c = SHAPES[shape]
        for dtype in args.dtypes:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(args.batch, h, w, c, generator=gen).to("cuda", DTYPES[dtype])
            weight = (torch.randn(h, w // 2 + 1, c, 2, generator=gen) * 0.02).cuda()
            grad = torch.randn(args.batch, h, w, c, generator=gen).to("cuda", DTYPES[dtype])
            for mode in args.modes:
                for backend in args.backends:
                    try:
                        r = profile_case(backend, x, weight, grad, mode, args.calls)
                    except Exception as err:  # noqa: BLE001 (report and go on)
                        print(f"{shape} {dtype} {mode} {backend}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160]}")
                        continue
                    total = sum(r["kernels"].values())
                    print(f"{shape} {dtype} {mode} {backend}: wall {r['wall_us']:.1f} us/call, "
                          f"host enqueue {r['host_us']:.1f} us/call, kernels {total:.1f} us/call")
                    for name, us in sorted(r["kernels"].items(), key=lambda kv: -kv[1])[:6]:
                        print(f"    {us:9.1f} us  {name[:110]}")
        if "triton" in args.backends:
            print(f"\nTriton kernels compiled so far (after {shape}):")
            for line in triton_kernels_report():
                print("  " + line)


if __name__ == "__main__":
    main()
