"""A kernel whose dynamic instruction mix is known, compiled for sm_90a and counted.

Run as a script (``python tests/sass_probe.py N [N ...] [--unresolved]``) with
``TRITON_INTERPRET`` unset: one warp (32 threads, one element each) loads once, runs ``n``
iterations of exactly one FFMA and stores once, so the dynamic counts of one warp are:
fp32 = n, global = 2. Prints the counts for each N as a JSON list, for
``tests/test_gpu_model.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def fma_loop(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    acc = tl.load(x_ptr + offsets)
    for _ in range(n):  # the probe's loop
        acc = acc * 1.5 + 0.25
    tl.store(y_ptr + offsets, acc)


def main(trip_counts: list, resolve: bool) -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from benchmarks import sass

    compiled = triton.compile(
        ASTSource(fma_loop, {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32",
                             "BLOCK": "constexpr"}, {(3,): 32}),
        target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    (fn,) = sass.disassemble(compiled.asm["cubin"]).values()
    out = []
    for trips in trip_counts:
        def loop_trips(loop, trips=trips):
            return trips if resolve and "the probe's loop" in loop.text else None

        counts = sass.count(fn, loop_trips)
        out.append({"by_class": dict(counts.by_class), "unresolved": counts.unresolved,
                    "loops": len(sass.find_loops(fn, sass.SourceIndex()))})
    print(json.dumps(out))


if __name__ == "__main__":
    args = sys.argv[1:]
    main([int(a) for a in args if a != "--unresolved"], "--unresolved" not in args)
