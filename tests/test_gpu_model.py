"""The static GPU model (``benchmarks.gpu_model``) and what the package takes from it.

No GPU is needed: kernels are compiled for sm_90a with Triton's bundled tools (and nvcc
where it exists). Compiles run in subprocesses because ``conftest.py`` turns Triton's
interpreter on in this process.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MODEL_CSV = ROOT / "benchmarks" / "results" / "gpu_model_sm_90a.csv"


def _tools_missing():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    from spectformer_kernels.triton_compile import tool

    for name in ("nvdisasm", "cuobjdump"):
        if tool(name) is None:
            return f"{name} not found (Triton's NVIDIA backend or a CUDA toolkit)"
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        if not os.path.exists(get_ptxas(90).path):
            return "no ptxas for sm_90"
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot compile here
        return f"no ptxas for sm_90 ({exc})"
    return None


needs_tools = pytest.mark.skipif(_tools_missing() is not None, reason=str(_tools_missing()))


def _compiler_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["TRITON_ALWAYS_COMPILE"] = "1"  # cached cubins may carry another edit's line numbers
    return env


def _probe(*args):
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "sass_probe.py"), *args],
                          capture_output=True, text=True, env=_compiler_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


TRIPS = (1, 7, 1000)


@needs_tools
def test_instruction_counter_on_a_kernel_with_known_counts():
    """One warp: one load, ``trips`` iterations of one FFMA (unrolled by the compiler into
    a main loop and a remainder loop), one store."""
    for trips, counts in zip(TRIPS, _probe(*map(str, TRIPS))):
        assert counts["unresolved"] == []
        assert counts["by_class"]["fp32"] == pytest.approx(trips)
        assert counts["by_class"]["global"] == 2
        assert counts["by_class"].get("tensor", 0) == 0
        assert counts["by_class"].get("local", 0) == 0
        assert counts["loops"] >= 1


def test_warpgroup_mma_reads_its_shared_operands():
    """B always from shared memory; A too when its source is a descriptor. Operand strings
    as nvdisasm prints them for the Triton kernels (per warp: a quarter of the warpgroup's)."""
    from benchmarks.sass import gmma_shared_bytes

    a_in_registers = "R24, R96, gdesc[UR12].tnspB, RZ, !UPT, gsb0"
    assert gmma_shared_bytes("HGMMA.64x16x16.F32.BF16", a_in_registers) == 16 * 16 * 2 / 4
    assert gmma_shared_bytes("HGMMA.64x64x16.F32.BF16", "R24, gdesc[UR4], R24, gsb0") == (
        (64 * 16 + 64 * 16) * 2 / 4)
    assert gmma_shared_bytes("HGMMA.64x32x8.F32.TF32", a_in_registers) == 32 * 8 * 4 / 4
    assert gmma_shared_bytes("HMMA.16816.F32.BF16", "R4, R8, R12, R4") == 0


@needs_tools
def test_instruction_counter_reports_loops_it_cannot_resolve():
    (counts,) = _probe("1000", "--unresolved")
    assert len(counts["unresolved"]) == 1 and "the probe's loop" in counts["unresolved"][0]


def test_source_loops_of_the_cuda_sources():
    from benchmarks.sass import source_loops

    loops = {lp.text: lp for lp in source_loops(str(ROOT / "csrc" / "cufftdx_gate.cu"))}
    inner = loops["for (int u = 0; u < kSumBatch; ++u) {"]
    assert inner.end - inner.start == 2  # the braced body, not the whole file
    one_line = next(lp for text, lp in loops.items() if "dst[j] = to_float(in[j])" in text)
    assert one_line.start == one_line.end


@needs_tools
def test_model_runs_one_small_shape_per_kernel(tmp_path):
    """Every path on one small grid, one Triton config per kernel (the CI budget)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_model", "--shapes", "8x8x32", "--dtypes",
         "bf16", "--batch", "16", "--max-configs", "1", "--out", str(tmp_path), "--no-tables"],
        capture_output=True, text=True, env=_compiler_env(), timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "not a measurement" in done.stdout
    with (tmp_path / "gpu_model_sm_90a.csv").open() as f:
        rows = list(csv.DictReader(f))
    backends = {r["backend"] for r in rows}
    assert {"triton", "reference"} <= backends
    for row in rows:
        assert "not a measurement" in row["kind"]
        if row["predicted_us"]:
            assert float(row["predicted_us"]) >= float(row["floor_us"]) > 0
            assert int(row["dram_bytes"]) > 0
    for direction in ("fwd", "bwd"):
        assert sum(int(r["auto"]) for r in rows if r["direction"] == direction) == 1
    triton_rows = [r for r in rows if r["backend"] == "triton"]
    assert all(r["warp_instructions"] and int(r["spill_bytes"]) == 0 for r in triton_rows)
    # the batch elements per program are part of the chosen config
    assert all(re.search(r"batch/program=(8|16|32)$", r["config"]) for r in triton_rows)
    assert any(int(r["tensor_instructions"]) > 0 for r in triton_rows)  # bf16 dots: MMA


_CUFFTDX_ROWS = """
import json
from benchmarks import gpu_model as g
if g.nvcc_path() is None or g._csrc_paths().find_cufftdx() is None:
    print(json.dumps({"skip": "nvcc or the cuFFTDx headers (nvidia-mathdx) not found"}))
    raise SystemExit
cuda = {"cufftdx": g.compile_cufftdx("sm_90a", (7,))}
rows = {}
for dtype in ("bf16", "fp32"):
    for d in ("fwd", "bwd"):
        p = g.predict(g._cufftdx_launches(cuda, d, dtype, 16, 7, 7, 64))
        p["floor"] = g.floor_bytes(d, dtype, 16, 7, 7, 64)
        rows[f"{dtype} {d}"] = p
print(json.dumps(rows))
"""


@needs_tools
def test_model_rows_of_the_cufftdx_kernels():
    """The cuFFTDx kernels of the smallest grid (only that grid compiled, about 15 s of nvcc):
    every loop resolved, no spills, only the launch's dtype counted, the dK reduction."""
    done = subprocess.run([sys.executable, "-c", _CUFFTDX_ROWS], capture_output=True, text=True,
                          env=_compiler_env(), timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in rows:
        pytest.skip(rows["skip"])
    for key, row in rows.items():
        assert row["notes"] == "", (key, row["notes"])  # no unresolved loop
        assert row["spill_bytes"] == 0 and row["registers"] > 0, key
        assert row["dram_bytes"] >= row["floor"] and row["seconds"] > 0, key
        assert row["fp32_instructions"] > 0, key
    # One kernel serves every dtype (a run-time switch): counting all its branches would give
    # bf16 and fp32 the same count. bf16 moves 8 channels per 16-byte vector, fp32 4, so x and
    # y take half the accesses (the filter's loads, the same in both, dominate at 7x7).
    assert rows["bf16 fwd"]["global_instructions"] < 0.9 * rows["fp32 fwd"]["global_instructions"]
    # the backward reads x and dy: about twice the forward's loads (plus K and dK)
    assert rows["fp32 bwd"]["global_instructions"] > 1.5 * rows["fp32 fwd"]["global_instructions"]
    assert rows["fp32 bwd"]["launches"] == 2  # batch chunks, then their ordered sum
    assert rows["fp32 fwd"]["launches"] == 1


_SECTOR_BYTES = """
import json
from benchmarks import gpu_model as g
counts = {"by_class": {}, "tensor_flops": 0, "mma_sync_flops": 0, "shared_bytes": 0,
          "local_bytes": 0, "unresolved": []}
result = {"registers": 64, "shared": 0, "stack_bytes": 0, "counts": {"8": counts}}
rows = {}
for kernel in ("forward", "backward"):
    for block_c in (1, 8, 16, 64):
        launch = g._triton_launch(kernel, "bf16", 8, 28, 28, 64, block_c, 4, 8, result)[0]
        rows[f"{kernel} {block_c}"] = [launch.dram_bytes, launch.l2_bytes]
result["counts"]["16"] = counts
rows["backward launches"] = [len(g._triton_launch("backward", "bf16", batch, 28, 28, 64, 8, 4,
                                                  per_program, result))
                             for batch, per_program in ((8, 8), (16, 16), (9, 8), (33, 16))]
print(json.dumps(rows))
"""


def test_triton_l2_bytes_count_the_sectors_a_narrow_channel_tile_wastes():
    """Channels-last: a tile of BLOCK_C bf16 channels uses 2*BLOCK_C bytes of each 32-byte
    sector it pulls from L2 (the rest belongs to another program); DRAM sees each byte once."""
    done = subprocess.run([sys.executable, "-c", _SECTOR_BYTES], capture_output=True,
                          text=True, env=_compiler_env(), timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    for kernel, images in (("forward", 2), ("backward", 3)):
        moved = images * 8 * 28 * 28 * 64 * 2  # x (and dy) read, y (dx) written, bf16
        dram = {bc: rows[f"{kernel} {bc}"][0] for bc in (1, 8, 16, 64)}
        l2 = {bc: rows[f"{kernel} {bc}"][1] for bc in (1, 8, 16, 64)}
        assert len(set(dram.values())) == 1 and dram[1] > moved  # DRAM: once, plus K, matrices
        assert l2[1] > 16 * moved and 2 * moved < l2[8] < 3 * moved, (kernel, l2)
        assert moved < l2[16] < 1.5 * moved and moved < l2[64] < 1.5 * moved, (kernel, l2)
    # One batch group per channel block leaves dK in its one partial: no sum is launched.
    assert rows["backward launches"] == [1, 1, 2, 2]


def test_reference_sequence_follows_pytorchs_cuda_fft_path():
    from benchmarks.torch_fft_sequence import sequence

    names = [k.name for k in sequence("fwd", 4, 14, 14, 8, torch.float32)]
    assert names == ["copy (_exec_fft reshape)", "cuFFT R2C", "mul_ (normalization)", "mul",
                     "clone (C2R input)", "copy (_exec_fft reshape)", "cuFFT C2R",
                     "mul_ (normalization)"]
    bf16 = [k.name for k in sequence("fwd", 4, 14, 14, 8, torch.bfloat16)]
    assert bf16[0] == "_to_copy" and bf16[-1] == "_to_copy"  # the casts around fp32 FFTs


def test_reference_model_carries_the_measured_calibration():
    """The layout copies run at their measured rates (by element size) and cuFFT's second
    pass reads and writes the half spectrum once more (an H100 profile)."""
    from benchmarks import gpu_model
    from benchmarks.gpu_target import value
    from benchmarks.torch_fft_sequence import sequence

    one, two = (sequence("fwd", 4, 14, 14, 8, torch.float32, cufft_passes=p) for p in (1, 2))
    spectrum = 4 * 14 * 8 * 8 * 8  # complex64 half spectrum
    r2c1, r2c2 = (next(k for k in seq if k.name == "cuFFT R2C") for seq in (one, two))
    assert (r2c2.read_bytes - r2c1.read_bytes, r2c2.write_bytes - r2c1.write_bytes) \
        == (spectrum, spectrum)
    assert [k.permute_itemsize for k in one if k.permute_itemsize] == [4, 8, 8]

    launches = gpu_model._reference_launches("fwd", "fp32", 128, 14, 14, 384)
    copies = [lp for lp in launches if "copy" in lp.name or "clone" in lp.name]
    assert [lp.hbm_bytes_per_s for lp in copies] == [
        value("permute_copy_4b_bytes_per_s"), value("permute_copy_8b_bytes_per_s"),
        value("permute_copy_8b_bytes_per_s")]
    for lp in copies:
        assert lp.bounds()["hbm"] == pytest.approx(lp.dram_bytes / lp.hbm_bytes_per_s)
    others = [lp for lp in launches if lp not in copies]
    assert all(lp.hbm_bytes_per_s is None for lp in others)


class _CudaLike:
    """What ``auto_candidates`` looks at, on a CUDA device, without a GPU."""

    def __init__(self, shape, dtype):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.device = torch.device("cuda")


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def test_auto_on_cuda_follows_the_measured_order_then_the_model_table():
    from spectformer_kernels.backends import CUDA_MEASURED, auto_candidates
    from spectformer_kernels.cuda_auto_table import CHOICE

    assert CHOICE, "the model has not generated the table"
    for (h, w, c, dtype), order in {**CHOICE, **CUDA_MEASURED}.items():
        x = _CudaLike((2, h, w, c), _DTYPES[dtype])
        candidates = auto_candidates(x, None)
        assert candidates[:len(order)] == order
        assert candidates[-1] == "reference"
    # The override is exact-shape: a 14x14 fp32 shape it does not list keeps the model's
    # order, and another dtype at a listed shape too.
    assert auto_candidates(_CudaLike((2, 14, 14, 512), torch.float32), None) \
        == CHOICE[(14, 14, 512, "fp32")]
    assert auto_candidates(_CudaLike((2, 14, 14, 384), torch.bfloat16), None) \
        == CHOICE[(14, 14, 384, "bf16")]
    assert auto_candidates(_CudaLike((2, 14, 14, 384), torch.float32), None)[0] == "cuda_cufftdx"


def test_model_table_matches_the_committed_csv():
    from spectformer_kernels.cuda_auto_table import CHOICE

    with MODEL_CSV.open() as f:
        rows = list(csv.DictReader(f))
    chosen = {(r["shape"], r["dtype"]): r["backend"] for r in rows if r["auto"] == "1"}
    assert chosen
    for (shape, dtype), backend in chosen.items():
        h, w, c = (int(v) for v in shape.split("x"))
        assert CHOICE[(h, w, c, dtype)][0] == backend
        # never a path predicted slower (fwd+bwd) than reference
        def total(name):
            return sum(float(r["predicted_us"]) for r in rows if (r["shape"], r["dtype"],
                       r["backend"]) == (shape, dtype, name) and r["predicted_us"])
        assert total(backend) <= total("reference")


def test_every_benchmark_shape_is_in_the_committed_csv():
    from benchmarks.shapes import SHAPES

    with MODEL_CSV.open() as f:
        rows = list(csv.DictReader(f))
    covered = {(r["shape"], r["dtype"], r["direction"]) for r in rows}
    for h, w, c in SHAPES.values():
        for dtype in ("bf16", "fp32"):
            for direction in ("fwd", "bwd"):
                assert (f"{h}x{w}x{c}", dtype, direction) in covered


def test_pruner_never_keeps_a_config_with_a_stack_frame():
    from spectformer_kernels import triton_backend as tb
    from spectformer_kernels.triton_sm90_resources import RESOURCES

    assert RESOURCES, "the model has not generated the resource table"
    grids = {(k[0], k[1], k[2], k[3]) for k in RESOURCES}
    for kernel, dtype, h, w in grids:
        for cfg in tb.kept_configs(kernel, dtype, h, w, 64):
            compiled = RESOURCES.get((kernel, dtype, h, w, cfg.kwargs["BLOCK_C"], cfg.num_warps))
            assert compiled is not None, (kernel, dtype, h, w, cfg)
            assert compiled["stack_bytes"] == 0, (kernel, dtype, h, w, cfg, compiled)


def test_supports_declines_a_shape_without_a_fitting_config():
    from spectformer_kernels import triton_backend as tb

    assert tb.kept_configs("backward", "fp32", 56, 56, 64) == []
    reason = tb.no_config_reason("backward", "fp32", 56, 56)
    assert "56x56" in reason and "spilling" in reason
