"""Compile the Triton kernels ahead of time for Hopper (sm_90a), without a GPU.

Triton compiles for a named target, so the exact kernels the launcher would run can be
built on any machine: the arguments come from ``triton_backend.forward_arguments`` /
``backward_arguments`` (with stand-ins for the tensors) and pass through
``triton_backend.specialization``, Triton's own launch binder. Used by the static GPU model
(``benchmarks/gpu_model``), the resource report (``benchmarks/triton_resources``) and the
compile tests. Needs Triton's NVIDIA backend (its bundled ptxas and cuobjdump) and
``TRITON_INTERPRET`` unset (``python -m spectformer_kernels.triton_compile JOB`` compiles
one config in a fresh process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from . import triton_backend as tb
from .contract import half_spectrum_size, weight_shape

ALIGNMENT = 256  # device allocations (torch's caching allocator) are at least this aligned
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def tool(name: str) -> Optional[str]:
    """Path of an NVIDIA binary tool: Triton's bundled copy first, else the CUDA toolkit's."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).exists():
            return str(Path(home) / "bin" / name)
    return shutil.which(name)


class DeviceTensor:
    """Stands in for a CUDA tensor in Triton's specialization: shape, dtype, contiguous
    strides and an aligned address (all the launcher's binder looks at)."""

    def __init__(self, shape, dtype):
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


class _StandInMatrices:
    """Every matrix either kernel form reads (``kernel_matrices``), as stand-ins."""

    def __init__(self, h: int, w: int):
        wk = half_spectrum_size(w)
        self.w_forward = DeviceTensor((2 * wk, w), torch.float32)
        self.h_forward = DeviceTensor((2 * h, 2 * h), torch.float32)
        self.w_inverse = DeviceTensor((w, 2 * wk), torch.float32)
        self.forward = DeviceTensor((h * w, 2 * h * wk), torch.float32)  # the dense maps
        self.inverse = DeviceTensor((2 * h * wk, h * w), torch.float32)


def launch_arguments(kernel: str, dtype: str, batch: int, h: int, w: int, c: int) -> dict:
    """The launcher's arguments for contiguous channels-last tensors of this shape
    (``dtype``: fp32/bf16/fp16)."""
    dt = DTYPES[dtype]
    x = DeviceTensor((batch, h, w, c), dt)
    weight = DeviceTensor(weight_shape(h, w, c), torch.float32)
    mats = _StandInMatrices(h, w)
    if kernel == "forward":
        return tb.forward_arguments(x, weight, DeviceTensor(x.shape, dt), mats)
    partials = DeviceTensor((tb.partial_rows(batch), *weight_shape(h, w, c)), torch.float32)
    return tb.backward_arguments(DeviceTensor(x.shape, dt), x, weight, DeviceTensor(x.shape, dt),
                                 partials, mats)


def compile_config(kernel: str, dtype: str, batch: int, h: int, w: int, c: int,
                   block_c: int, num_warps: int, num_stages: int = tb.NUM_STAGES):
    """Compile one autotune config for sm_90a exactly as the launcher would specialize it.
    Returns Triton's CompiledKernel (``asm["cubin"]``, ``metadata.shared``, ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if tb.INTERPRETED:
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled")
    fn = tb.kernel_function(kernel, h, w)
    target = GPUTarget("cuda", 90, 32)
    # batch_per_program is a runtime argument the kernels do not specialise on: one binary
    # serves every value.
    config = triton.Config({"BLOCK_C": block_c, "batch_per_program": tb.BATCH_PER_PROGRAM},
                           num_warps=num_warps, num_stages=num_stages)
    options, signature, constexprs, attrs = tb.specialization(
        kernel, launch_arguments(kernel, dtype, batch, h, w, c), config, target)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def run_on_cubin(name: str, flags: list, cubin: bytes) -> str:
    """The standard output of NVIDIA tool ``name`` (``tool``) run with ``flags`` on a cubin."""
    path_of_tool = tool(name)
    if path_of_tool is None:
        raise FileNotFoundError(f"{name} not found (Triton's NVIDIA backend or a CUDA toolkit)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([path_of_tool, *flags, str(path)], capture_output=True,
                              text=True, check=True).stdout


def cubin_resources(cubin: bytes) -> dict:
    """{function: registers, stack frame, local and static shared bytes} from
    ``cuobjdump -res-usage`` (Triton's bundled copy)."""
    text = run_on_cubin("cuobjdump", ["-res-usage"], cubin)
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
    """``compile_resources(*job)`` in a fresh process without the interpreter, with a
    timeout (some configs keep ptxas busy for minutes, which is itself a reason to prune
    them). Returns the resources with ``status`` "ok", or the failure as ``status``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 warning; the default
    cmd = [sys.executable, "-m", "spectformer_kernels.triton_compile", json.dumps(job)]
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
    resources) as a job for ``compile_resources``, or None when the pruner keeps none
    (``supports`` declines the shape)."""
    kept = tb.kept_configs(kernel, dtype, h, w, c)
    if not kept:
        return None
    cfg = max(kept, key=lambda cfg: (cfg.kwargs["BLOCK_C"] / cfg.num_warps,
                                     cfg.kwargs["BLOCK_C"]))
    return (kernel, dtype, h, w, cfg.kwargs["BLOCK_C"], cfg.num_warps)


if __name__ == "__main__":
    print(json.dumps(compile_resources(*json.loads(sys.argv[1]))))
