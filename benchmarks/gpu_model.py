"""Static performance model of every GPU path of the spectral gate, without a GPU.

    python -m benchmarks.gpu_model                                   # every benchmark shape
    python -m benchmarks.gpu_model --shapes 14x14x384,56x56x64 --dtypes bf16,fp32 --plot

EVERYTHING THIS PRINTS IS A STATIC MODEL PREDICTION FOR AN H100 SXM, NOT A MEASUREMENT.

For each path (the Triton kernels per autotune config, the CUDA extension's cuFFTDx
and cuFFT paths, and the ``reference`` torch.fft sequence), each shape, dtype and direction (fwd,
bwd) at ``--batch`` (default 128), it

1. compiles what would run: the Triton kernels with the launcher's own arguments and
   Triton's launch binder (``triton_backend.specialization``; every config the resource
   estimate keeps, as the pruner sees them), the CUDA sources with ``nvcc -arch=sm_90a``
   and the extension's flags (``-O3 -lineinfo``);
2. reads registers, stack frame (spills) and shared memory from the cubin
   (``cuobjdump -res-usage``; Triton's ``metadata.shared``), and the SASS (``nvdisasm``);
3. counts dynamic warp-instructions per class (``benchmarks/sass.py``): loop bodies times
   trip counts derived here from the launch arguments; a loop it cannot resolve is
   reported (column ``notes``);
4. computes bytes from the access pattern of each kernel (``_triton_launch``,
   ``_cufftdx_launches``, ``_cufft_launches``, ``torch_fft_sequence``):
   DRAM bytes (every tensor read or written once, the filter and DFT matrices once, dK
   partials, spills that do not fit on chip) and L2 bytes (all SM<->L2 traffic: the DRAM
   bytes plus every CTA's re-read of the filter and matrices, sector waste of strided
   accesses, spill traffic that misses L1);
5. occupancy (CTAs per SM from registers, shared memory, threads) and waves;
6. bounds on the target (``benchmarks/gpu_target.py``, one table with sources), per launch:
   ``hbm`` DRAM bytes / copy bandwidth; ``l2`` L2 bytes / L2 bandwidth; ``latency``
   DRAM bytes / the bandwidth Little's law allows with the bytes the resident warps keep
   in flight (a kernel with few warps or one load at a time cannot fill HBM); and for the
   busiest SM (ceil(CTAs / SMs) CTAs, so partial waves count): ``issue`` all warp
   instructions at 4 per clock, ``fp32`` FP32 instructions on 128 lanes, ``tensor``
   MMA FLOPs at the dense peak (mma.sync at a fraction of it), ``shared`` shared and L1
   bytes at 128 B per clock. The predicted time of a launch is
   ``max(memory, compute) + min(memory, compute) / CTAs-per-SM`` (a CTA's load and compute
   phases overlap only with other resident CTAs), plus a fixed launch cost; a path is the
   sum of its launches and never below the floor (forward: read x, write y; backward: read
   x and dy, write dx; at copy bandwidth). ``bound`` names the term that accounts for most
   of the predicted time.

What it does not model: instruction latency chains within a warp (beyond the memory
latency term), bank conflicts, cache hit rates other than "the filter and matrices stay in
L2", DVFS, and cuFFT's internal kernels (closed source: the measured number of passes, at
copy bandwidth, its FLOPs on the FP32 bound; PyTorch's strided layout copies at their
measured rate). Both arms of a branch inside a counted region are counted, except
in the cuFFTDx kernels, whose run-time dtype switch and strided-input loops are left out by
source line (``_cufftdx_skip``): one kernel serves every dtype there.

Writes ``gpu_model_<arch>.csv`` into ``--out`` (rows of the shapes run replace their old
rows), ``--plot`` the PNG beside it, and regenerates the two tables the package reads:
``spectformer_kernels/triton_sm90_resources.py`` (the pruner's compile results) and
``spectformer_kernels/cuda_auto_table.py`` (``auto``'s choice on CUDA).
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # the model compiles; it never interprets

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

from benchmarks import gpu_target, sass  # noqa: E402
from benchmarks.shapes import SHAPES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
RESULTS_DIR = ROOT / "benchmarks" / "results"
PACKAGE = ROOT / "spectformer_kernels"
LABEL = "static model prediction (H100 SXM), not a measurement"
DTYPES = ("bf16", "fp16", "fp32")
BACKENDS = ("triton", "cuda_cufftdx", "cuda_cufft", "reference")  # the paths it models
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
FIELDS = [
    "kind", "arch", "backend", "shape", "batch", "dtype", "direction", "config", "registers",
    "spill_bytes", "smem_bytes", "ctas_per_sm", "waves", "warp_instructions",
    "tensor_instructions", "fp32_instructions", "global_instructions", "shared_instructions",
    "local_instructions", "dram_bytes", "l2_bytes", "launches", "floor_us", "predicted_us",
    "bound", "vs_floor", "vs_reference", "auto", "notes", "commit",
]
K = gpu_target.value


# ---- one launch and its time ----------------------------------------------------------------

@dataclass
class Launch:
    name: str
    ctas: int = 1
    threads: int = 256  # per CTA
    registers: int = 32
    smem: int = 0  # bytes per CTA
    stack: int = 0  # bytes per thread
    counts: Optional[sass.Counts] = None  # dynamic counts of ONE CTA (all its warps)
    dram_bytes: float = 0.0
    l2_bytes: float = 0.0  # all SM<->L2 traffic (>= dram_bytes)
    inflight_per_warp: float = 4096.0  # bytes of global loads a warp keeps in flight
    flops: float = 0.0  # FP32 work of closed-source kernels (cuFFT)
    notes: list = field(default_factory=list)
    hbm_bytes_per_s: Optional[float] = None  # a measured rate for this kind of kernel

    def ctas_per_sm(self) -> int:
        warps = math.ceil(self.threads / 32)
        unit = K("register_unit")
        regs_per_warp = math.ceil(max(self.registers, 1) * 32 / unit) * unit
        limits = [
            int(K("blocks_per_sm")),
            int(K("threads_per_sm") // (warps * 32)),
            int(K("registers_per_sm") // (regs_per_warp * warps)),
            int(K("smem_per_sm") // (self.smem + K("smem_reserved_per_block"))),
        ]
        return max(0, min(limits))

    def bounds(self) -> dict:
        """Seconds per bound for this launch (see the module docstring)."""
        sms, clock = K("sms"), K("clock_hz")
        per_sm = self.ctas_per_sm()
        busiest = math.ceil(self.ctas / sms)  # CTAs on the busiest SM
        resident_warps = min(per_sm, max(1, math.ceil(self.ctas / sms))) * self.threads / 32
        in_flight = sms * resident_warps * self.inflight_per_warp
        hbm = self.hbm_bytes_per_s or K("hbm_bytes_per_s")
        achievable = min(hbm, in_flight / K("dram_latency_s"))
        b = {
            "hbm": self.dram_bytes / hbm,
            "l2": self.l2_bytes / K("l2_bytes_per_s"),
            "latency": self.dram_bytes / achievable if achievable else math.inf,
        }
        if self.counts is not None:
            c = self.counts.by_class
            b["issue"] = busiest * self.counts.total / (K("issue_per_clk") * clock)
            b["fp32"] = busiest * c["fp32"] / (K("fp32_per_clk") * clock)
            mma_rate = K("tensor_flops_per_clk") * clock
            sync = self.counts.mma_sync_flops
            b["tensor"] = busiest * ((self.counts.tensor_flops - sync) / mma_rate
                                     + sync / (mma_rate * K("mma_sync_fraction")))
            b["shared"] = busiest * (self.counts.shared_bytes + self._l1_local_bytes()) / (
                K("shared_bytes_per_clk") * clock)
        if self.flops:
            b["fp32"] = self.flops / (sms * K("fp32_per_clk") * 32 * 2 * clock)
        return b

    def _l1_local_bytes(self) -> float:
        return self.counts.local_bytes if self.counts is not None else 0.0

    def time(self) -> tuple:
        """(seconds, name of the dominant bound, bounds)."""
        b = self.bounds()
        memory = max(b["hbm"], b["l2"], b["latency"])
        compute = max((b[k] for k in ("issue", "fp32", "tensor", "shared") if k in b),
                      default=0.0)
        overlap = max(1, self.ctas_per_sm())
        seconds = max(memory, compute) + min(memory, compute) / overlap + K("launch_s")
        dominant = max(b, key=b.get)
        if K("launch_s") > max(b.values()):
            dominant = "launch"
        return seconds, dominant, b


def _local_traffic(launch: Launch) -> None:
    """Where spill traffic goes: L1 if every resident thread's frame fits beside the shared
    memory, else L2 if the whole GPU's frames fit L2, else DRAM."""
    if launch.counts is None or not launch.counts.local_bytes:
        return
    total = launch.counts.local_bytes * launch.ctas
    per_sm = launch.ctas_per_sm()
    footprint_sm = launch.stack * launch.threads * per_sm
    if footprint_sm <= K("l1_per_sm") - per_sm * launch.smem:
        return
    launch.l2_bytes += total
    if footprint_sm * K("sms") > K("l2_bytes"):
        launch.dram_bytes += total
        launch.notes.append(f"spills reach DRAM ({total / 1e6:.0f} MB)")
    else:
        launch.notes.append(f"spills miss L1 ({total / 1e6:.0f} MB to L2)")


# ---- Triton --------------------------------------------------------------------------------

TRITON_SOURCE = PACKAGE / "triton_backend.py"


def analyze_triton(job: dict) -> dict:
    """Compile one Triton config and count its SASS (runs in a subprocess)."""
    from spectformer_kernels import triton_backend as tb
    from spectformer_kernels import triton_compile as tr

    start = time.perf_counter()
    compiled = tr.compile_config(job["kernel"], job["dtype"], job["batch"], job["h"], job["w"],
                                 job["c"], job["block_c"], job["num_warps"], job["num_stages"])
    cubin = compiled.asm["cubin"]
    (name, res), = tr.cubin_resources(cubin).items()
    fn = sass.disassemble(cubin)[name]

    def batch_loop(loop: sass.SourceLoop) -> bool:
        return Path(loop.file).name == TRITON_SOURCE.name and "for b in range" in loop.text

    # The batch loop's trip count is the runtime batch_per_program: one count per choice.
    by_batch = {}
    for per_program in tb.BATCH_PER_PROGRAM_CHOICES:
        trips = min(per_program, job["batch"])
        counts = sass.count(fn, lambda loop, n=trips: n if batch_loop(loop) else None)
        by_batch[str(per_program)] = {
            "by_class": dict(counts.by_class), "tensor_flops": counts.tensor_flops,
            "mma_sync_flops": counts.mma_sync_flops, "shared_bytes": counts.shared_bytes,
            "local_bytes": counts.local_bytes, "unresolved": counts.unresolved,
        }
    return {
        **res, "shared": int(compiled.metadata.shared), "counts": by_batch,
        "compile_s": round(time.perf_counter() - start, 1),
    }


def _analyze_safely(job: dict) -> dict:
    try:
        return analyze_triton(job)
    except Exception as err:  # noqa: BLE001 - a config that does not compile is reported
        first_line = (str(err).splitlines() or [""])[0][:200]
        return {"error": f"{type(err).__name__}: {first_line}"}


def _compile_all(jobs: dict, workers: int, timeout: float) -> dict:
    """Each job in a pool of worker processes (Triton imported once per worker, compiles
    cached on disk by Triton); a job past ``timeout`` is reported as such."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, TimeoutError as Timeout

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default; silences a warning
    # Triton's disk cache keys on the kernel's source, not on its line numbers: a cached cubin
    # from before an edit elsewhere in the file would map SASS to the wrong source lines.
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    results = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {key: pool.submit(_analyze_safely, job) for key, job in jobs.items()}
        deadline = time.monotonic() + timeout * max(1, math.ceil(len(jobs) / workers))
        for key, future in futures.items():
            try:
                results[key] = future.result(timeout=max(1.0, deadline - time.monotonic()))
            except Timeout:
                results[key] = {"error": "compile did not finish in time"}
        for future in futures.values():
            future.cancel()
    return results


def _counts_from(result: dict, warps: int) -> sass.Counts:
    """A CTA's counts from one warp's (``analyze_triton``'s ``counts`` for one
    batch-per-program choice)."""
    counts = sass.Counts()
    per_warp = sass.Counts()
    per_warp.by_class.update(result["by_class"])
    per_warp.tensor_flops = result["tensor_flops"]
    per_warp.mma_sync_flops = result["mma_sync_flops"]
    per_warp.shared_bytes = result["shared_bytes"]
    per_warp.local_bytes = result["local_bytes"]
    per_warp.unresolved = list(result["unresolved"])
    counts.add(per_warp, warps)
    return counts


def _sector_waste(block_c: int, c: int, itemsize: int) -> float:
    """L2 traffic per useful byte of a channels-last tile of ``block_c`` of ``c`` channels.
    L2 hands out 32-byte sectors: a channel run narrower than that (a few channels of one
    (h, w) position) drags the neighbouring block's channels along, to another CTA that
    fetches them again; DRAM still sees each byte once while the sectors stay in L2."""
    if block_c >= c:  # the whole channel row, and rows of neighbouring w, are this tile's
        return 1.0
    return max(1.0, 32 / (block_c * itemsize))


def _triton_launch(kernel: str, dtype: str, batch: int, h: int, w: int, c: int,
                   block_c: int, warps: int, per_program: int, result: dict) -> list:
    """The launches of one Triton config with their bytes (access pattern of the kernels in
    ``triton_backend``: masked loads touch only the real grid)."""
    from spectformer_kernels import triton_backend as tb

    e = ITEMSIZE[dtype]
    wk = w // 2 + 1
    n = batch * h * w * c
    filt = h * wk * c * 8  # complex_weight, fp32 (re, im)
    blocks = math.ceil(c / block_c)
    tile = block_c * h * w * e
    sector = _sector_waste(block_c, c, e)  # x, dy, y and dx
    # K's (re, im) pairs: 8 bytes a channel (the two loads of one sector meet in L1)
    filt_tile = h * wk * min(block_c, c) * 8 * _sector_waste(block_c, c, 8)
    dense = tb.uses_dense_map(h, w)
    if dense:  # the two dense maps, (H*W, 2*H*Wk) each way
        mats = 2 * (h * w * 2 * h * wk) * 4
    else:  # Fw^T, the H-axis blocks read from the interleaved real form, Gw^T
        mats = (2 * wk * w + 4 * h * h + 2 * w * wk) * 4
    counts = _counts_from(result["counts"][str(per_program)], warps)
    notes = [f"{len(counts.unresolved)} unresolved loops"] if counts.unresolved else []
    groups = math.ceil(batch / per_program)  # programs per channel block
    if kernel == "forward":
        ctas = groups * blocks
        launch = Launch("triton forward", ctas, 32 * warps, result["registers"],
                        result["shared"], result["stack_bytes"], counts,
                        dram_bytes=2 * n * e + filt + mats,
                        l2_bytes=2 * n * e * sector + ctas * (filt_tile + mats),
                        inflight_per_warp=tile / warps, notes=notes)
        _local_traffic(launch)
        return [launch]
    mats += (h * w * 2 * h * wk if dense else 2 * wk * w) * 4  # the forward map read transposed
    ctas = groups * blocks
    partials = groups * filt
    launch = Launch("triton backward", ctas, 32 * warps, result["registers"], result["shared"],
                    result["stack_bytes"], counts,
                    dram_bytes=3 * n * e + filt + mats + partials,
                    l2_bytes=3 * n * e * sector + ctas * (filt_tile + mats)
                    + partials * _sector_waste(block_c, c, 8),
                    inflight_per_warp=2 * tile / warps, notes=notes)
    _local_traffic(launch)
    if groups == 1:  # the one partial is dK: no sum is launched
        return [launch]
    reduce = Launch("dK partial sum (torch)", dram_bytes=partials + filt,
                    l2_bytes=partials + filt)
    return [launch, reduce]


# ---- CUDA extension ------------------------------------------------------------------------

NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]  # setup.py's nvcc flags (line info only adds
# debug sections; it does not change the code), after torch's defines and the project's
# undefines of them (``csrc/cufft_paths.py``)


def _csrc_paths():
    """``csrc/cufft_paths.py`` (loaded by path, as ``setup.py`` and the tests do)."""
    from importlib import util

    spec = util.spec_from_file_location("cufft_paths", CSRC / "cufft_paths.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nvcc_path() -> Optional[str]:
    return _csrc_paths().find_nvcc()


def compile_cuda(source: str, arch: str, includes: list, defines: tuple = ()) -> dict:
    """{function name: sass.Function} and {name: resources} of one ``csrc`` file."""
    from spectformer_kernels.triton_compile import cubin_resources

    nvcc = nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (install a CUDA toolkit or set CUDA_HOME)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernels.cubin"
        paths = _csrc_paths()
        cmd = [nvcc, f"-arch={arch}", "-cubin", *paths.TORCH_NVCC_DEFINES,
               "--expt-relaxed-constexpr", *NVCC_FLAGS, *paths.HALF_UNDEFINES, "-I", str(CSRC),
               *[f"-I{i}" for i in includes], *[f"-D{d}" for d in defines],
               str(CSRC / source), "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        cubin = out.read_bytes()
    return sass.disassemble(cubin), cubin_resources(cubin)


def _function(functions: dict, pattern: str) -> str:
    matches = [n for n in functions if re.search(pattern, n)]
    if len(matches) != 1:
        raise KeyError(f"{pattern!r} matches {matches}")
    return matches[0]




def _grid_stride(n: float, threads: int, total_threads: Optional[int] = None) -> float:
    """Mean iterations per warp of ``for (i = tid; i < n; i += stride)`` in one CTA."""
    stride = total_threads or threads
    warps = threads // 32
    return sum(max(0, math.ceil((n - 32 * wi) / stride)) for wi in range(warps)) / warps


_DEFINITION = re.compile(r"\b(\w+)\s*\(")


def _enclosing_function(loop: sass.SourceLoop) -> str:
    """Name of the function whose definition precedes a source loop (definitions end with
    '{' or ',' where calls end with ';')."""
    lines = Path(loop.file).read_text().splitlines()
    for i in range(loop.start - 2, -1, -1):
        code = lines[i].split("//")[0].rstrip()
        m = _DEFINITION.search(code)
        if (m and code.endswith(("{", ",")) and not code.lstrip().startswith("for")
                and m.group(1) not in ("if", "for", "while", "switch", "__launch_bounds__")):
            return m.group(1)
    return ""


def _count_cuda(fn: sass.Function, threads: int, trips: dict, skip=None) -> sass.Counts:
    """Counts of one CTA: ``trips`` maps (function, loop-text fragment) -> iterations;
    ``skip`` as in ``sass.count``."""
    def resolve(loop: sass.SourceLoop):
        where = _enclosing_function(loop)
        for (func, fragment), n in trips.items():
            if func == where and fragment in loop.text:
                return n
        return None

    counts = sass.Counts()
    counts.add(sass.count(fn, resolve, skip=skip), threads // 32)
    return counts


def _cufft_launches(cuda: dict, direction: str, dtype: str, batch: int, h: int, w: int,
                    c: int) -> list:
    """The cuFFT path as built with CUDA 13 (LTO callbacks: the channels-last load and the
    cast in the R2C, the gate in its store, the store of y/dx in the C2R), each cuFFT exec
    preceded by the one-thread kernel that writes the callback parameters."""
    e, wk = ITEMSIZE[dtype], w // 2 + 1
    n, nh = batch * h * w * c, batch * h * wk * c
    filt = h * wk * c * 8
    planes, points = batch * c, h * w
    fft_flops = 2.5 * points * math.log2(points) * planes if points > 1 else 0.0
    # The callbacks touch one element per plane at a stride of C elements: a 32-byte sector
    # per element through L2 (DRAM sees each byte once while the sectors stay in L2).
    strided = n * 32
    params = Launch("set_callback_params", dram_bytes=0, l2_bytes=64)

    # Each pass after the first reads and writes the half spectrum once more (cufft_passes).
    extra = (int(K("cufft_passes")) - 1) * 2 * nh * 8
    note = f"cuFFT: closed source, {int(K('cufft_passes'))} passes (measured kernel count)"

    def r2c(gate: bool) -> Launch:
        return Launch("cuFFT R2C (load callback" + (", gate store)" if gate else ")"),
                      ctas=planes, dram_bytes=n * e + nh * 8 + (filt if gate else 0) + extra,
                      l2_bytes=strided + nh * 8 + (nh * 8 if gate else 0) + extra,
                      flops=fft_flops, notes=[note])

    c2r = Launch("cuFFT C2R (store callback)", ctas=planes, dram_bytes=nh * 8 + n * e + extra,
                 l2_bytes=nh * 8 + strided + extra, flops=fft_flops, notes=[note])
    if direction == "fwd":
        return [params, r2c(True), params, c2r]
    launches = [params, r2c(False), params, r2c(False)]
    functions, resources = cuda.get("cufft") or ({}, {})
    bins = h * wk * c
    blocks = max(1, min(math.ceil(bins / 256), 65535))
    gate_bytes = 3 * nh * 8 + 2 * filt + filt
    gate = Launch("gate_backward_kernel", blocks, 256, dram_bytes=gate_bytes,
                  l2_bytes=gate_bytes + batch * bins * 8 * 2,
                  inflight_per_warp=2 * 32 * 8)  # X and D of one b at a time per thread
    if functions:
        name = _function(functions, "gate_backward_kernel")
        gate.registers = resources[name]["registers"]
        gate.counts = _count_cuda(functions[name], 256, {
            ("gate_backward_kernel", "i < n"): _grid_stride(bins, 256, blocks * 256),
            ("gate_backward_kernel", "b < B"): batch})
    else:
        gate.notes.append("cufft_gate.cu not compiled here: bytes only")
    return launches + [gate, params, c2r]


# ---- cuFFTDx kernels (csrc/cufftdx_gate.cu) --------------------------------------------------

CUFFTDX_SOURCE = CSRC / "cufftdx_gate.cu"
_CUFFTDX_TYPE = {"fp32": "float", "bf16": "__nv_bfloat16", "fp16": "__half"}


def compile_cufftdx(arch: str, grids: tuple = ()) -> Optional[tuple]:
    """``compile_cuda`` of csrc/cufftdx_gate.cu as setup.py builds it (the cuFFTDx and
    CUTLASS headers of the nvidia-mathdx wheel); None without those headers. With one grid
    only that grid's kernels are instantiated (the build's quick-check switch; the kernels'
    code is the same), which saves most of the nvcc time."""
    includes = _csrc_paths().find_cufftdx()
    if includes is None:
        return None
    only = (f"SPECTFORMER_CUFFTDX_ONLY_GRID={grids[0]}",) if len(grids) == 1 else ()
    return compile_cuda(CUFFTDX_SOURCE.name, arch, [str(p) for p in includes], only)


def _cufftdx_skip(dtype: str):
    """Code of the kernels that does not run for a contiguous ``dtype`` input: the load and
    store calls of the other dtypes (one kernel switches on the dtype at run time) and the
    scalar loops for strided or unaligned tensors."""
    skipped = set()
    for i, line in enumerate(CUFFTDX_SOURCE.read_text().splitlines(), 1):
        call = re.search(r"(?:load|store)_tile<Cfg>\(.*static_cast<(?:const )?(\w+)\*>", line)
        if call and call.group(1) != _CUFFTDX_TYPE[dtype]:
            skipped.add(i)
    for lp in sass.source_loops(str(CUFFTDX_SOURCE)):
        if "i < Cfg::H * Cfg::W * Cfg::CT" in lp.text:
            skipped.update(range(lp.start, lp.end + 1))
    name = CUFFTDX_SOURCE.name
    return lambda chain: any(n in skipped and Path(f).name == name for f, n in chain)


def _loads_in_flight(fn: sass.Function, function: str, fragment: str, skip=None) -> int:
    """Global loads one thread keeps in flight in a source loop (by its enclosing function and
    text): the longest run of LDGs before a shared store or an FP32 instruction, which wait
    for the loaded data."""
    loop = next(lp for lp in sass.source_loops(str(CUFFTDX_SOURCE))
                if fragment in lp.text and _enclosing_function(lp) == function)
    best = run = 0
    for ins in fn.instrs:
        if (skip is not None and skip(ins.lines)) or not any(
                Path(f).name == CUFFTDX_SOURCE.name and loop.start <= n <= loop.end
                for f, n in ins.lines):
            continue
        if ins.base == "LDG":
            run += 1
            best = max(best, run)
        elif ins.base == "STS" or sass.classify(ins.opcode) == "fp32":
            run = 0
    return max(1, best)


def _cufftdx_plan(direction: str, batch: int, n: int, c: int, registers: int,
                  static_shared: int) -> dict:
    """The launcher's choices (``cufftdx_forward`` / ``backward_plan``): blocks per SM from the
    occupancy calculator, then enough batch slots (forward) or chunks (backward) for the
    channel tiles to fill every SM once."""
    from spectformer_kernels.cufftdx_tiles import tile_launch

    t = tile_launch(n, "forward" if direction == "fwd" else "backward")
    blocks = Launch("occupancy", threads=t.threads, registers=registers,
                    smem=t.shared_bytes + static_shared).ctas_per_sm()
    tiles = math.ceil(c / t.channels_per_block)
    slots = max(1, min(batch, blocks * int(K("sms")) // tiles, 65535))  # all resident
    per_block = math.ceil(batch / slots)  # images of the busiest block
    return {"tile": t, "blocks": blocks, "tiles": tiles, "per_block": per_block,
            "slots": math.ceil(batch / per_block) if direction == "bwd" else slots}


def _cufftdx_config(direction: str, batch: int, n: int, c: int, cufftdx: tuple) -> str:
    functions, resources = cufftdx
    kind = "forward" if direction == "fwd" else "backward"
    res = resources[_function(functions, f"cufftdx_{kind}_kernelINS0_4TileILi{n}ELi{n}E")]
    plan = _cufftdx_plan(direction, batch, n, c, res["registers"], res["static_shared"])
    return (f"CT={plan['tile'].channels_per_block},"
            f"{'chunk' if direction == 'bwd' else 'images'}={plan['per_block']}")


def _cufftdx_launches(cuda: dict, direction: str, dtype: str, batch: int, h: int, w: int,
                      c: int) -> list:
    functions, resources = cuda["cufftdx"]
    kind = "forward" if direction == "fwd" else "backward"
    name = _function(functions, f"cufftdx_{kind}_kernelINS0_4TileILi{h}ELi{w}E")
    res = resources[name]
    plan = _cufftdx_plan(direction, batch, h, c, res["registers"], res["static_shared"])
    t = plan["tile"]
    e, wk, ct, threads = ITEMSIZE[dtype], w // 2 + 1, t.channels_per_block, t.threads
    n_el = batch * h * w * c
    filt = h * wk * c * 8
    vec_bytes = t.vector_bytes[e]
    gs = lambda m: _grid_stride(m, threads)  # noqa: E731
    total = h * w * ct * e // vec_bytes  # vector accesses per image
    per_thread = math.ceil(total / threads)
    batch_loads = min(per_thread, int(re.search(r"constexpr int kLoadBatch = (\d+);",
                                                CUFFTDX_SOURCE.read_text()).group(1)))
    loads = _grid_stride(total, threads, batch_loads * threads)  # load_tile's batched loop
    vectors = gs(total)
    sector = _sector_waste(ct, c, e)
    skip = _cufftdx_skip(dtype)
    ctas = plan["tiles"] * plan["slots"]
    inflight = 32 * vec_bytes * _loads_in_flight(functions[name], "load_tile", "first < kTotal",
                                                 skip)
    if direction == "fwd":
        trips = {("cufftdx_forward_kernel", "b < B"): plan["per_block"],
                 ("stage_filter", "h < H"): h,
                 ("load_tile", "first < kTotal"): loads, ("store_tile", "kVectors"): vectors}
        counts = _count_cuda(functions[name], threads, trips, skip)
        # each block copies its K tile into shared memory once (stage_filter)
        return [Launch("cufftdx forward", ctas, threads, res["registers"],
                       t.shared_bytes + res["static_shared"], res["stack_bytes"], counts,
                       dram_bytes=2 * n_el * e + filt,
                       l2_bytes=2 * n_el * e * sector + ctas * h * wk * min(ct, c) * 8,
                       inflight_per_warp=inflight)]
    # x and dy go through the same inlined loader (one inlined-at level in the line table), so
    # the counter sees one loop with two versions and charges one: give it both images' trips.
    trips = {("cufftdx_backward_kernel", "b < b_end"): plan["per_block"],
             ("cufftdx_backward_kernel", "h < H"): h,
             ("load_tile", "first < kTotal"): 2 * loads, ("store_tile", "kVectors"): vectors}
    counts = _count_cuda(functions[name], threads, trips, skip)
    dk_in_shared = t.shared_bytes == 3 * h * wk * ct * 8
    chunks = plan["slots"]
    partials = chunks * filt if chunks > 1 else 0
    launches = [Launch("cufftdx backward", ctas, threads, res["registers"],
                       t.shared_bytes + res["static_shared"], res["stack_bytes"], counts,
                       dram_bytes=3 * n_el * e + filt + (partials or filt),
                       # K per image; dK read and written per image where it is not in shared
                       l2_bytes=3 * n_el * e * sector + batch * filt * (1 if dk_in_shared else 3)
                       + (partials or filt),
                       inflight_per_warp=inflight)]
    if partials:
        elems = filt // 4
        blocks = min(math.ceil(elems / 256), 4096)
        sname = _function(functions, "sum_chunks_kernel")
        batch_sums = int(re.search(r"constexpr int kSumBatch = (\d+);",
                                   CUFFTDX_SOURCE.read_text()).group(1))
        strips = {("sum_chunks_kernel", "j < n"): _grid_stride(elems, 256, blocks * 256),
                  ("sum_chunks_kernel", "p0 < chunks"): math.ceil(chunks / batch_sums)}
        in_flight = _loads_in_flight(functions[sname], "sum_chunks_kernel", "p0 < chunks")
        launches.append(Launch("sum_chunks", blocks, 256, resources[sname]["registers"], 0, 0,
                               _count_cuda(functions[sname], 256, strips),
                               dram_bytes=partials + filt, l2_bytes=partials + filt,
                               inflight_per_warp=32 * 4 * in_flight))
    return launches


# ---- reference -------------------------------------------------------------------------------

def _reference_launches(direction: str, dtype: str, batch: int, h: int, w: int, c: int) -> list:
    import torch

    from benchmarks.torch_fft_sequence import sequence

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    launches = []
    for k in sequence(direction, batch, h, w, c, dt, cufft_passes=int(K("cufft_passes"))):
        moved = k.read_bytes + k.write_bytes
        rate = None
        if k.permute_itemsize:  # measured: strided copies run far below the streaming rate
            rate = K("permute_copy_8b_bytes_per_s" if k.permute_itemsize >= 8
                     else "permute_copy_4b_bytes_per_s")
        launches.append(Launch(k.name, ctas=max(1, int(moved // 65536)), dram_bytes=moved,
                               l2_bytes=moved, flops=k.flops, hbm_bytes_per_s=rate))
    return launches


# ---- a path's prediction -------------------------------------------------------------------

def floor_bytes(direction: str, dtype: str, batch: int, h: int, w: int, c: int) -> float:
    n = batch * h * w * c * ITEMSIZE[dtype]
    return (2 if direction == "fwd" else 3) * n


def predict(launches: list) -> dict:
    total, by_bound = 0.0, {}
    for launch in launches:
        seconds, bound, _ = launch.time()
        total += seconds
        by_bound[bound] = by_bound.get(bound, 0.0) + seconds
    first = next((lp for lp in launches if lp.counts is not None), None)
    counts = sass.Counts()
    for lp in launches:
        if lp.counts is not None:
            counts.add(lp.counts, lp.ctas)
    notes = []
    for lp in launches:
        notes += [n for n in lp.notes if n not in notes]
    counted = any(lp.counts is not None for lp in launches)
    return {
        "seconds": total, "bound": max(by_bound, key=by_bound.get),
        "registers": first.registers if first else "",
        "spill_bytes": first.stack if first else "",
        "smem_bytes": first.smem if first else "",
        "ctas_per_sm": first.ctas_per_sm() if first else "",
        "waves": round(first.ctas / (K("sms") * max(1, first.ctas_per_sm())), 2) if first else "",
        "warp_instructions": round(counts.total) if counted else "",
        **{f"{cls}_instructions": round(counts.by_class[cls]) if counted else ""
           for cls in ("tensor", "fp32", "global", "shared", "local")},
        "dram_bytes": round(sum(lp.dram_bytes for lp in launches)),
        "l2_bytes": round(sum(lp.l2_bytes for lp in launches)),
        "launches": len(launches),
        "notes": "; ".join(notes + counts.unresolved),
    }


# ---- the run --------------------------------------------------------------------------------

def _parse_list(values: list) -> list:
    return [v for item in values for v in item.split(",") if v]


def _triton_jobs(shapes, dtypes, batch, max_configs=None) -> dict:
    from spectformer_kernels import triton_backend as tb

    jobs = {}
    for shape in shapes:
        h, w, c = SHAPES[shape] if shape in SHAPES else map(int, shape.split("x"))
        for dtype in dtypes:
            for kernel in ("forward", "backward"):
                configs = tb.kept_configs(kernel, dtype, h, w, c, use_compiled=False)
                if max_configs:  # the largest channel blocks first (a quick run, e.g. CI)
                    configs = sorted(configs, key=lambda cfg: (-cfg.kwargs["BLOCK_C"],
                                                               abs(cfg.num_warps - 4)))
                    configs = configs[:max_configs]
                for cfg in configs:
                    job = dict(kernel=kernel, dtype=dtype, batch=batch, h=h, w=w,
                               # the code depends on C only through its divisibility by 16
                               c=16 if c % 16 == 0 else c,
                               block_c=cfg.kwargs["BLOCK_C"], num_warps=cfg.num_warps,
                               num_stages=cfg.num_stages)
                    jobs[json.dumps(job, sort_keys=True)] = job
    return jobs


def _shape_dims(shape: str) -> tuple:
    return SHAPES[shape] if shape in SHAPES else tuple(int(v) for v in shape.split("x"))


def run(shapes, dtypes, batch, arch, jobs_n, timeout, max_configs=None, log=print) -> tuple:
    from spectformer_kernels import cuda_backend
    from spectformer_kernels import triton_backend as tb

    # 1. Triton configs: compiled in subprocesses, two at a time (or --jobs).
    jobs = _triton_jobs(shapes, dtypes, batch, max_configs)
    log(f"# {LABEL}\n# compiling {len(jobs)} Triton configs for {arch} ...")
    results = _compile_all(jobs, jobs_n, timeout)

    # 2. CUDA sources.
    cuda: dict = {}
    have_nvcc = nvcc_path() is not None  # the CUDA rows are modelled where nvcc is
    try:
        if not have_nvcc:
            raise FileNotFoundError("nvcc not found")
        location = _csrc_paths().find_cufft()
        if location is not None:
            cuda["cufft"] = compile_cuda("cufft_gate.cu", arch, [location.include_dir])
            log("# compiled csrc/cufft_gate.cu with nvcc")
        grids = sorted({h for h, w, _ in map(_shape_dims, shapes)
                        if (h, w) in cuda_backend.SOURCE_CUFFTDX_GRIDS})
        cufftdx = compile_cufftdx(arch, tuple(grids)) if grids else None
        if cufftdx is not None:
            cuda["cufftdx"] = cufftdx
            log(f"# compiled csrc/cufftdx_gate.cu with nvcc (grids {grids})")
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        log(f"# CUDA paths not compiled ({err}); their rows are left out")

    rows, resources = [], {}
    for key, res in results.items():
        job = jobs[key]
        if "error" not in res:
            resources[(job["kernel"], job["dtype"], job["h"], job["w"], job["block_c"],
                       job["num_warps"])] = {k: res[k] for k in ("registers", "stack_bytes")} | {
                           "shared_bytes": res["shared"]}
    for shape in shapes:
        h, w, c = _shape_dims(shape)
        for dtype in dtypes:
            for direction in ("fwd", "bwd"):
                kernel = "forward" if direction == "fwd" else "backward"
                base = dict(kind=LABEL, arch=arch, shape=f"{h}x{w}x{c}", batch=batch,
                            dtype=dtype, direction=direction,
                            floor_us=floor_bytes(direction, dtype, batch, h, w, c)
                            / K("hbm_bytes_per_s") * 1e6)
                # Triton: the fastest predicted config among those the pruner keeps.
                best, declined = None, []
                for key, job in jobs.items():
                    if (job["kernel"], job["dtype"], job["h"], job["w"]) != (kernel, dtype, h, w):
                        continue
                    res = results[key]
                    cfg = f"BLOCK_C={job['block_c']},warps={job['num_warps']}"
                    if "error" in res:
                        declined.append(f"{cfg}: {res['error']}")
                        continue
                    if res["stack_bytes"] > 0 or res["shared"] > K("smem_per_block"):
                        declined.append(f"{cfg}: stack frame {res['stack_bytes']} B")
                        continue
                    for per_program in tb.BATCH_PER_PROGRAM_CHOICES:
                        p = predict(_triton_launch(kernel, dtype, batch, h, w, c,
                                                   job["block_c"], job["num_warps"],
                                                   per_program, res))
                        if best is None or p["seconds"] < best[1]["seconds"]:
                            best = (tb.config_name(job["block_c"], job["num_warps"],
                                                   job["num_stages"], per_program), p)
                if best:
                    rows.append({**base, "backend": "triton", "config": best[0], **best[1]})
                else:
                    rows.append({**base, "backend": "triton", "config": "declined",
                                 "notes": tb.no_config_reason(kernel, dtype, h, w)
                                 + (f" ({len(declined)} candidates)" if declined else "")})
                if "cufftdx" in cuda and (h, w) in cuda_backend.SOURCE_CUFFTDX_GRIDS:
                    rows.append({**base, "backend": "cuda_cufftdx", "config": _cufftdx_config(
                                     direction, batch, h, c, cuda["cufftdx"]),
                                 **predict(_cufftdx_launches(cuda, direction, dtype, batch, h, w,
                                                             c))})
                if have_nvcc:  # cuFFT: bytes, plus the gate kernel's counts if compiled
                    rows.append({**base, "backend": "cuda_cufft", "config": "LTO callbacks",
                                 **predict(_cufft_launches(cuda, direction, dtype, batch, h, w,
                                                           c))})
                rows.append({**base, "backend": "reference", "config": "torch.fft",
                             **predict(_reference_launches(direction, dtype, batch, h, w, c))})
    for row in rows:
        if "seconds" in row:
            row["predicted_us"] = max(row.pop("seconds") * 1e6, row["floor_us"])
    _mark_auto(rows)
    return rows, resources


def _mark_auto(rows: list) -> dict:
    """Per shape and dtype: the path with the lowest predicted fwd+bwd, never one predicted
    slower than ``reference`` (reference itself is a candidate). Returns the ranking."""
    ranking = {}
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["shape"], row["dtype"]), []).append(row)
    for (shape, dtype), group in groups.items():
        totals: dict = {}
        for row in group:
            if row.get("predicted_us") in (None, ""):
                totals[row["backend"]] = math.inf
                continue
            totals[row["backend"]] = totals.get(row["backend"], 0.0) + row["predicted_us"]
        ref = totals.get("reference", math.inf)
        for row in group:
            r = row.get("predicted_us")
            ref_row = next((x for x in group if x["backend"] == "reference"
                            and x["direction"] == row["direction"]), None)
            row["vs_floor"] = round(r / row["floor_us"], 2) if r not in (None, "") else ""
            row["vs_reference"] = (round(ref_row["predicted_us"] / r, 2)
                                   if r not in (None, "") and ref_row else "")
        order = sorted((t, b) for b, t in totals.items() if t <= ref and t < math.inf)
        chosen = [b for _, b in order]
        if "reference" in chosen:
            chosen = chosen[:chosen.index("reference") + 1]
        ranking[(shape, dtype)] = tuple(chosen) or ("reference",)
        for row in group:
            row["auto"] = int(row["backend"] == ranking[(shape, dtype)][0])
    return ranking


# ---- outputs --------------------------------------------------------------------------------

def _fmt(v, digits=1):
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(rows: list) -> str:
    head = (f"{'shape':11} {'dtype':5} {'dir':3} {'backend':10} {'config':26} {'regs':>4} "
            f"{'stack':>5} {'pred us':>8} {'floor us':>8} {'x floor':>7} {'x ref':>6} "
            f"{'bound':8} auto")
    lines = [f"# {LABEL}", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['shape']:11} {r['dtype']:5} {r['direction']:3} {r['backend']:10} "
            f"{str(r.get('config', ''))[:26]:26} {str(r.get('registers', '')):>4} "
            f"{str(r.get('spill_bytes', '')):>5} {_fmt(r.get('predicted_us', '')):>8} "
            f"{_fmt(r['floor_us']):>8} {_fmt(r.get('vs_floor', ''), 2):>7} "
            f"{_fmt(r.get('vs_reference', ''), 2):>6} {str(r.get('bound', '')):8} "
            f"{'*' if r.get('auto') else ''}")
    return "\n".join(lines)


def _merge_csv(path: Path, rows: list) -> list:
    """Rows of this run replace the old rows of the same path, shape, batch, dtype and
    direction; other rows are kept, except those of paths the model no longer has."""
    def key(r):
        return r["backend"], r["shape"], str(r["batch"]), r["dtype"], r["direction"]

    new = {key(r) for r in rows}
    old = []
    if path.exists():
        with path.open(newline="") as f:
            old = [r for r in csv.DictReader(f)
                   if key(r) not in new and r["backend"] in BACKENDS]
    merged = old + [{k: r.get(k, "") for k in FIELDS} for r in rows]
    order = {s: i for i, s in enumerate(f"{h}x{w}x{c}" for h, w, c in SHAPES.values())}
    merged.sort(key=lambda r: (order.get(r["shape"], 99), r["shape"], r["dtype"],
                               r["direction"], r["backend"]))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in FIELDS} for r in merged)
    return merged


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dtype"], r["direction"]) for r in rows})
    backends = BACKENDS
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.2 * len(panels)), squeeze=False)
    for ax, (dtype, direction) in zip(axes[:, 0], panels):
        width = 0.8 / len(backends)
        for i, backend in enumerate(backends):
            ys = []
            for shape in shapes:
                r = next((x for x in rows if (x["shape"], x["dtype"], x["direction"],
                                              x["backend"]) == (shape, dtype, direction,
                                                                backend)), None)
                v = r.get("predicted_us") if r else ""
                ys.append(float(v) / float(r["floor_us"]) if v not in ("", None) else 0.0)
            ax.bar([s + (i - (len(backends) - 1) / 2) * width for s in range(len(shapes))],
                   ys, width,
                   label=backend)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)), shapes)
        ax.set_ylabel("predicted / floor")
        ax.set_title(f"{dtype} {direction}: STATIC MODEL, H100 SXM, batch "
                     f"{rows[0]['batch']} (not measured; no bar = no kernel for the shape)")
        ax.legend(fontsize=7, ncol=len(backends))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_resource_table(resources: dict) -> None:
    from spectformer_kernels.triton_sm90_resources import RESOURCES

    merged = {**RESOURCES, **resources}
    path = PACKAGE / "triton_sm90_resources.py"
    head = path.read_text().split("RESOURCES: dict = ")[0]
    body = "".join(f"    {k!r}: {merged[k]!r},\n" for k in sorted(merged))
    path.write_text(head + "RESOURCES: dict = {\n" + body + "}\n")


def write_auto_table(rows: list) -> None:
    from spectformer_kernels.cuda_auto_table import CHOICE

    merged = dict(CHOICE)
    for (shape, dtype), chosen in _mark_auto(rows).items():
        h, w, c = (int(v) for v in shape.split("x"))
        merged[(h, w, c, dtype)] = chosen
    path = PACKAGE / "cuda_auto_table.py"
    head = path.read_text().split("CHOICE: dict = ")[0]
    body = "".join(f"    {k!r}: {merged[k]!r},\n" for k in sorted(merged))
    path.write_text(head + "CHOICE: dict = {\n" + body + "}\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES),
                        help="HxWxC, comma or space separated (default: the benchmark shapes)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--jobs", type=int, default=2, help="Triton compiles at a time")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per compile (on average over the run)")
    parser.add_argument("--max-configs", type=int,
                        help="Triton configs per kernel and shape (default: all the pruner "
                             "considers; fewer for a quick run)")
    parser.add_argument("--no-tables", action="store_true",
                        help="do not regenerate the package's pruner and auto tables")
    parser.add_argument("--analyze-triton", help=argparse.SUPPRESS)  # internal: one job
    args = parser.parse_args(argv)
    if args.analyze_triton:
        print(json.dumps(analyze_triton(json.loads(args.analyze_triton))))
        return
    if args.arch != "sm_90a":
        raise SystemExit("only sm_90a (H100) has a constants table (benchmarks/gpu_target.py)")
    shapes = _parse_list(args.shapes)
    dtypes = _parse_list(args.dtypes)
    start = time.perf_counter()
    rows, resources = run(shapes, dtypes, args.batch, args.arch, args.jobs, args.timeout,
                          args.max_configs)
    from benchmarks.common import git_commit

    commit = git_commit()
    for row in rows:
        row["commit"] = commit
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_model_{args.arch}.csv"
    merged = _merge_csv(path, rows)
    print(f"# {len(rows)} rows written to {path} ({LABEL}); {time.perf_counter() - start:.0f} s")
    if args.plot:
        plot(merged, path.with_suffix(".png"))
        print(f"# plot: {path.with_suffix('.png')}")
    print(f"# constants ({LABEL}):\n{gpu_target.table()}")
    if not args.no_tables:
        write_resource_table(resources)
        write_auto_table(rows)
        print("# regenerated spectformer_kernels/triton_sm90_resources.py and cuda_auto_table.py")


if __name__ == "__main__":
    main()
