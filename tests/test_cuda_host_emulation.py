"""The CUDA kernels of ``csrc/``, run on the CPU against the float64 oracle.

``csrc/cufftdx_gate.cu`` and ``csrc/cufft_gate.cu`` are compiled unchanged as C++ with
``SPECTFORMER_HOST_EMULATION``: ``csrc/emulation/`` then supplies a sequential model of a
thread block (each CUDA thread a fiber, run phase by phase between ``__syncthreads``), launch
checks, bf16/fp16 storage, a strict CPU stand-in for the two cuFFT transforms and one for
the cuFFTDx subset the kernels use. The driver
calls the shipped launchers (launch configuration, workspace carving, plan cache and all), so
this checks the index math of every kernel, forward, dx and dK, on awkward shapes on every
CI run. It cannot see what only hardware shows (timing, real cuFFT, memory model); the GPU
tests of ``test_cuda_backend.py`` cover those.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import assert_matches_oracle, fresh_seed, make_inputs

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
DRIVER_SOURCE = Path(__file__).resolve().parent / "host_emulation_driver.cpp"
STANDIN_DRIVER_SOURCE = Path(__file__).resolve().parent / "cufftdx_standin_driver.cpp"
KERNEL_SOURCES = ["cufft_gate.cu", "cufftdx_gate.cu"]
CALLBACK_HEADER = "spectformer_cufft_callbacks_fatbin.h"
H100_SMS = 132
H100_SHARED = 227 * 1024
DTYPE_CODES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def _compiler() -> str | None:
    for name in ("g++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def compile_driver(out_dir: Path, csrc: Path = CSRC, callbacks: bool = False) -> Path:
    """Builds the emulation driver from the kernels in csrc; returns its path. With
    ``callbacks`` the cuFFT path is built with its LTO callbacks (cufft_callbacks.cu, compiled
    as C++ too; the emulated cuFFT finds them by name, so the fatbin is a placeholder)."""
    compiler = _compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / ("host_emulation_driver" + ("_callbacks" if callbacks else ""))
    sources = [csrc / name for name in KERNEL_SOURCES]
    extra = []
    if callbacks:
        (out_dir / CALLBACK_HEADER).write_text(
            "#pragma once\nstatic const unsigned char kCufftCallbacksFatbin[] = {0};\n")
        sources.append(csrc / "cufft_callbacks.cu")
        extra = ["-DSPECTFORMER_CUFFT_LTO_CALLBACKS=1", "-I", str(out_dir), "-rdynamic"]
    command = [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
               "-DSPECTFORMER_HOST_EMULATION", *extra, "-I", str(csrc),
               "-x", "c++", *map(str, sources), "-x", "none", str(DRIVER_SOURCE),
               "-ldl", "-o", str(binary)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"host emulation build failed:\n{result.stdout}{result.stderr}")
    return binary


@pytest.fixture(scope="module")
def drivers(tmp_path_factory):
    """Emulation drivers by path name: "cufftdx", "cufft" (gate kernel between the
    transforms) and "cufft_callbacks" (load/gate/store in cuFFT LTO callbacks)."""
    if _compiler() is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the host emulation")
    folder = tmp_path_factory.mktemp("host_emulation")
    plain = compile_driver(folder)
    return {"cufft": plain, "cufftdx": plain,
            "cufft_callbacks": compile_driver(folder / "callbacks", callbacks=True)}


PATHS = ["cufftdx", "cufft", "cufft_callbacks"]


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _from_raw(data: bytes, dtype: torch.dtype, shape) -> torch.Tensor:
    if dtype == torch.float32:
        return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)
    return torch.frombuffer(bytearray(data), dtype=torch.int16).view(dtype).reshape(shape)


def _layout(t: torch.Tensor, layout: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A raw buffer holding t's values and t's element strides inside it."""
    b, h, w, c = t.shape
    if layout == "contiguous":
        return t.contiguous(), (h * w * c, w * c, c, 1)
    if layout == "channels_first":  # (B, C, H, W) memory seen as (B, H, W, C)
        return t.permute(0, 3, 1, 2).contiguous(), (c * h * w, w, 1, h * w)
    if layout == "sliced":  # every other channel of a (B, H, W, 2C) buffer
        wide = torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)
        return wide, (h * w * 2 * c, w * 2 * c, 2 * c, 2)
    raise ValueError(layout)


def run_case(binary: Path, workdir: Path, path: str, shape, dtype=torch.float32, *,
             layout="contiguous", order=2, sms=H100_SMS, shared=H100_SHARED, seed=None,
             env=None, expect_execs=True):
    """Runs forward and backward in the emulation; returns (y, dx, dK, inputs). ``env``: extra
    environment (SPECTFORMER_EMU_CAPTURE, SPECTFORMER_EMU_PLAN_SWEEP, see the driver)."""
    b, h, w, c = shape
    x, weight, grad = make_inputs(shape, dtype, seed=seed)
    x_buf, xs = _layout(x, layout)
    g_buf, gs = _layout(grad, "contiguous" if layout == "sliced" else layout)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "x.bin").write_bytes(_raw(x_buf))
    (workdir / "dy.bin").write_bytes(_raw(g_buf))
    (workdir / "k.bin").write_bytes(_raw(weight))
    command = [str(binary), path.removesuffix("_callbacks"), DTYPE_CODES[dtype], str(order), *map(str, shape), *map(str, xs),
               *map(str, gs), str(sms), str(shared), str(workdir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, **(env or {})})
    run_case.last_stdout = result.stdout
    assert result.returncode == 0, (
        f"emulated {path} {shape} failed (exit {result.returncode}; a negative code is a "
        f"signal, e.g. a guard-page fault):\n{result.stdout}{result.stderr}")
    # Callback plans fall back to the gate kernel silently when they cannot be made: make
    # sure the callback build really ran forward (2 execs) and backward (3) through them.
    execs = 5 if path == "cufft_callbacks" else 0
    if expect_execs:
        assert f"cuFFT execs with callbacks: {execs}" in result.stdout, result.stdout + result.stderr
    y = _from_raw((workdir / "y.bin").read_bytes(), dtype, shape)
    dx = _from_raw((workdir / "dx.bin").read_bytes(), dtype, shape)
    dk = _from_raw((workdir / "dk.bin").read_bytes(), torch.float32, weight.shape)
    return y, dx, dk, (x, weight, grad)


def check_against_oracle(outputs, label):
    *results, (x, weight, grad) = outputs
    assert_matches_oracle(x, weight, grad, results, label)


# (path, shape, sms, shared): shapes include 1x1, 1xN, Nx1, odd, non-square, C not a
# multiple of the transpose tile (32) or of the cuFFTDx channel tile and vector width; SM
# counts chosen to give one and several dK chunks.
CUFFT_SHAPES = [(2, 1, 1, 3), (3, 5, 9, 7), (2, 7, 6, 5), (2, 14, 14, 33), (2, 11, 4, 13),
                (2, 12, 16, 10), (1, 1, 17, 3), (3, 17, 1, 3), (1, 65, 34, 3)]
CASES = [(path, shape, H100_SMS, H100_SHARED) for path in ("cufft", "cufft_callbacks")
      for shape in CUFFT_SHAPES] + [
    # cuFFTDx kernels: every compiled grid; C not a multiple of the channel tile or of the
    # vector width (scalar loads), few SMs for several dK chunks.
    ("cufftdx", (2, 7, 7, 3), H100_SMS, H100_SHARED),
    ("cufftdx", (3, 7, 7, 64), 1, H100_SHARED),
    ("cufftdx", (2, 12, 12, 33), 2, H100_SHARED),
    ("cufftdx", (3, 14, 14, 40), 1, H100_SHARED),
    ("cufftdx", (1, 24, 24, 17), H100_SMS, H100_SHARED),
    ("cufftdx", (2, 28, 28, 24), 3, H100_SHARED),
    ("cufftdx", (1, 48, 48, 5), 1, H100_SHARED),
    ("cufftdx", (2, 56, 56, 8), 2, H100_SHARED),
]

# The cuFFTDx path has kernels for the model grids only: the shared tests below run it on
# the nearest compiled grid.
CUFFTDX_GRID_FOR = {(6, 7): (12, 12), (7, 8): (7, 7), (9, 10): (14, 14)}


def _for_path(path, shape):
    if path != "cufftdx":
        return shape
    b, h, w, c = shape
    return (b, *CUFFTDX_GRID_FOR[(h, w)], c)


@pytest.mark.parametrize("path,shape,sms,shared", CASES, ids=lambda v: str(v))
def test_kernels_match_oracle(drivers, tmp_path, path, shape, sms, shared):
    seed = fresh_seed()
    outputs = run_case(drivers[path], tmp_path, path, shape, sms=sms, shared=shared, seed=seed)
    check_against_oracle(outputs, f"{path} {shape} seed {seed}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", ["channels_first", "sliced"])
def test_strided_inputs(drivers, tmp_path, path, layout):
    seed = fresh_seed()
    outputs = run_case(drivers[path], tmp_path, path, _for_path(path, (2, 6, 7, 35)),
                       layout=layout, sms=2, seed=seed)
    check_against_oracle(outputs, f"{path} {layout} seed {seed}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_storage(drivers, tmp_path, path, dtype):
    seed = fresh_seed()
    outputs = run_case(drivers[path], tmp_path, path, _for_path(path, (2, 7, 8, 9)), dtype,
                       seed=seed)
    check_against_oracle(outputs, f"{path} {dtype} seed {seed}")


@pytest.mark.parametrize("path", PATHS)
def test_results_do_not_depend_on_thread_order(drivers, tmp_path, path):
    """Race-free kernels give bitwise the same results whatever order the threads of a
    phase run in; a missing barrier or a cross-thread race usually does not."""
    seed = fresh_seed()
    runs = [run_case(drivers[path], tmp_path / str(order), path, _for_path(path, (3, 9, 10, 37)),
                     order=order, sms=2, seed=seed) for order in (0, 1, 2)]
    for other in runs[1:]:
        for got, want in zip(other[:3], runs[0][:3]):
            assert torch.equal(got, want), f"{path}: results depend on thread order (seed {seed})"


# Deliberate bugs, each of which the harness must catch: (file, text, replacement, path,
# shape). The text must occur exactly once; when a kernel is rewritten, update the mutation.
MUTATIONS = {
    "hermitian_mirror": ("cufft_gate.cu", "const int hn = gate::mirror_row(h, H);", "const int hn = h + 0 * H;",
                         "cufft", (2, 5, 6, 3)),
    "callback_gate_mirror": ("cufft_callbacks.cu", "const int hn = gate::mirror_row(h, p->H);",
                             "const int hn = h;", "cufft_callbacks", (2, 5, 6, 3)),
    "callback_store_channel": ("cufft_callbacks.cu", "(b * hw + pos) * p->C + c]",
                               "(b * hw + pos) * p->C + (c + 1) % p->C]", "cufft_callbacks",
                               (1, 4, 6, 3)),
    "cufftdx_missing_barrier": ("cufftdx_gate.cu",
                                "  __syncthreads();  // every row is in registers before the spectrum",
                                "  // every row is in registers before the spectrum", "cufftdx",
                                (2, 7, 7, 6)),
    "cufftdx_pair_unpack": ("cufftdx_gate.cu", "-0.5f * (a.x - m.x)", "0.5f * (a.x - m.x)",
                            "cufftdx", (2, 7, 7, 6)),
    "cufftdx_cpu_irfft_rule": ("cufftdx_gate.cu", "if (gate::is_self_conjugate_bin(k, W)) {",
                               "if (false) {", "cufftdx", (2, 12, 12, 4)),
    "cufftdx_dk_chunk_slice": ("cufftdx_gate.cu", "grad_weight_partials + blockIdx.y * (",
                               "grad_weight_partials + 0 * (", "cufftdx", (4, 7, 7, 64)),
    "cufftdx_vector_load_index": ("cufftdx_gate.cu", "base + h * st.h + w * st.w + c)",
                                  "base + w * st.h + h * st.w + c)", "cufftdx", (1, 7, 7, 8)),
    "cufftdx_channel_tail": ("cufftdx_gate.cu", "if (c0 + cc < C) base[", "if (c0 + cc <= C) base[",
                             "cufftdx", (1, 7, 7, 3)),
    "pack_row_col": ("cufft_gate.cu", "(p / W) * xs.h + (p % W) * xs.w",
                     "(p % H) * xs.h + (p / H) * xs.w", "cufft", (1, 5, 6, 3)),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_emulation_catches_deliberate_bugs(tmp_path, name):
    """The harness can fail: a copy of csrc/ with one deliberate bug disagrees with the
    oracle, crashes on a guard page, or is rejected by the barrier model."""
    if _compiler() is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the host emulation")
    file, text, replacement, path, shape = MUTATIONS[name]
    mutated = tmp_path / "csrc"
    shutil.copytree(CSRC, mutated, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    source = (mutated / file).read_text()
    assert source.count(text) == 1, f"mutation {name!r} no longer matches {file}; update it"
    (mutated / file).write_text(source.replace(text, replacement))
    binary = compile_driver(tmp_path, csrc=mutated, callbacks=path == "cufft_callbacks")
    try:
        outputs = run_case(binary, tmp_path / "run", path, shape)
    except AssertionError:
        return  # crashed (guard page, barrier divergence, launch error): caught
    with pytest.raises(AssertionError):
        check_against_oracle(outputs, f"mutation {name}")


# ---- the cuFFTDx stand-in itself ---------------------------------------------------------------


@pytest.fixture(scope="module")
def standin_driver(tmp_path_factory):
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the host emulation")
    binary = tmp_path_factory.mktemp("standin") / "cufftdx_standin_driver"
    command = [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
               "-DSPECTFORMER_HOST_EMULATION", "-I", str(CSRC), str(STANDIN_DRIVER_SOURCE),
               "-o", str(binary)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"stand-in driver build failed:\n{result.stdout}{result.stderr}"
    return binary


@pytest.mark.parametrize("precision", ["f64", "f32"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("n", [2, 7, 12, 14, 24, 28, 48, 56, 64])
def test_cufftdx_standin_matches_torch_fft(standin_driver, precision, direction, n):
    """The stand-in's thread FFT is the unnormalised DFT of torch.fft (forward exp(-2 pi i jk/N),
    inverse exp(+2 pi i jk/N) without 1/N), natural order in and out."""
    gen = torch.Generator().manual_seed(fresh_seed())
    data = torch.randn(n, dtype=torch.complex128, generator=gen)
    text = "\n".join(f"{v.real!r} {v.imag!r}" for v in data.tolist())
    result = subprocess.run([str(standin_driver), precision, direction, str(n)], input=text,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    got = torch.tensor([[float(t) for t in line.split()] for line in result.stdout.splitlines()],
                       dtype=torch.float64)
    got = torch.complex(got[:, 0], got[:, 1])
    want = torch.fft.fft(data) if direction == "forward" else torch.fft.ifft(data) * n
    err = ((got - want).abs().norm() / want.abs().norm()).item()
    assert err <= (1e-14 if precision == "f64" else 1e-6), f"rel err {err:.2e}"


# ---- cuFFT plan cache: graph capture and the LRU bound -----------------------------------------


@pytest.mark.parametrize("path", ["cufft", "cufft_callbacks", "cufftdx"])
def test_graph_capture_after_warm_up(drivers, tmp_path, path):
    """Plans made by a first call outside capture serve a call captured on another stream
    (the emulation aborts on any allocation, plan creation or device sync during capture);
    with callbacks the captured call runs the gate-kernel path on the plain plans."""
    shape = (2, 7, 7, 5)
    seed = fresh_seed()
    outputs = run_case(drivers[path], tmp_path, path, shape, seed=seed,
                       env={"SPECTFORMER_EMU_CAPTURE": "warm"})
    check_against_oracle(outputs, f"{path} captured after warm-up, seed {seed}")


@pytest.mark.parametrize("path", ["cufft", "cufft_callbacks"])
def test_graph_capture_without_plans_fails_clearly(drivers, tmp_path, path):
    with pytest.raises(AssertionError, match="run the op once with this shape before capturing"):
        run_case(drivers[path], tmp_path, path, (2, 7, 6, 5),
                 env={"SPECTFORMER_EMU_CAPTURE": "cold"})


@pytest.mark.parametrize("path", ["cufft", "cufft_callbacks"])
def test_plan_cache_is_bounded(drivers, tmp_path, path):
    """40 other grids' plans, then a normal run: the cache keeps at most 32 entries per kind
    (2 plain plans each, 3 callback plans each), syncing the device before it evicts."""
    seed = fresh_seed()
    outputs = run_case(drivers[path], tmp_path, path, (2, 5, 6, 3), seed=seed,
                       env={"SPECTFORMER_EMU_PLAN_SWEEP": "40"}, expect_execs=False)
    check_against_oracle(outputs, f"{path} after a plan sweep, seed {seed}")
    stdout = run_case.last_stdout
    live = int(re.search(r"live cuFFT plans: (\d+)", stdout).group(1))
    syncs = int(re.search(r"device synchronizations: (\d+)", stdout).group(1))
    assert live <= 2 * 32 + 3 * 32, stdout
    assert live <= 2 * 32 or path == "cufft_callbacks", stdout
    assert syncs >= 1, stdout
