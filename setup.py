"""Builds the optional CUDA extension ``spectformer_kernels._C`` from ``csrc/``.

Package metadata lives in pyproject.toml; this file only adds the extension. Switches:

    SPECTFORMER_BUILD_CUDA=0     never build it (pure-Python install)
    SPECTFORMER_BUILD_CUDA=1     build it, and fail if that is impossible
    (unset)                      build it when a CUDA toolkit (nvcc) and a CUDA build of
                                 torch are both present; otherwise install without it
    SPECTFORMER_CUFFT_CALLBACKS=0|1  cuFFT LTO callbacks (pack, gate and unpack inside cuFFT):
                                 0 never, 1 required, unset when the toolkit can build them
                                 (CUDA 13 cufftXt.h, nvcc with LTO-IR output). At run time
                                 the extension falls back to its gate kernel wherever callback
                                 plans cannot be made, or with SPECTFORMER_CUFFT_CALLBACKS=0.
    MATHDX_ROOT                  cuFFTDx headers (default: the nvidia-mathdx wheel); without
                                 them the cuFFTDx path is left out
    TORCH_CUDA_ARCH_LIST         target architectures (default "8.0;9.0+PTX")
    MAX_JOBS                     parallel compile jobs (default: bounded by CPUs and memory)

Install with the environment's own torch: ``pip install --no-build-isolation -e .``.
Without the extension the ``cuda`` backend is simply absent from ``available_backends()``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
GIB_PER_COMPILE_JOB = 3  # peak resident memory of one nvcc/cicc job on these sources, rounded up


def _log(message: str) -> None:
    print(f"spectformer setup: {message}", file=sys.stderr)


def _load_cufft_paths():
    spec = importlib.util.spec_from_file_location("cufft_paths", CSRC / "cufft_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _why_no_cuda_build():
    """None when the extension can be built here, else the reason it cannot."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return "torch is not importable in the build environment (use --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return "no CUDA toolkit found (set CUDA_HOME to a folder with bin/nvcc)"
    location = _load_cufft_paths().find_cufft(CUDA_HOME)
    if location is None or location.library_dir is None:
        return "no cuFFT headers and library found (CUDA toolkit or the nvidia-cufft wheel)"
    return None


def _bounded_max_jobs() -> str:
    cpus = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = GIB_PER_COMPILE_JOB
    return str(max(1, min(cpus, int(mem_gib // GIB_PER_COMPILE_JOB))))


def _switch(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"{name} must be 0, 1 or unset, got {value!r}")
    return value


def _lto_callback_setup(paths, cuda_home: str, cufft) -> tuple[list, list, list]:
    """(include dirs, nvcc flags, link args) for the cuFFT LTO callbacks, all empty when they
    are off. The callbacks are compiled to an LTO-IR fatbin per target arch and embedded as a
    generated header; cuFFT links them with nvJitLink when a plan is made."""
    switch = _switch("SPECTFORMER_CUFFT_CALLBACKS")
    if switch == "0":
        _log("SPECTFORMER_CUFFT_CALLBACKS=0: cuFFT path without LTO callbacks")
        return [], [], []
    reason = None
    nvjitlink = paths.find_nvjitlink([cufft.library_dir, Path(cuda_home) / "lib64",
                                      Path(cuda_home) / "lib"])
    if not paths.has_jit_callbacks(cufft.include_dir):
        reason = f"{cufft.include_dir}/cufftXt.h has no CUDA 13 cufftXtSetJITCallback"
    elif nvjitlink is None:
        reason = "no libnvJitLink found next to cuFFT or in the toolkit"
    else:
        out_dir = ROOT / "build" / "generated"
        try:
            paths.build_callback_header(
                str(Path(cuda_home) / "bin" / "nvcc"), CSRC, [cufft.include_dir],
                paths.lto_archs(os.environ["TORCH_CUDA_ARCH_LIST"]), out_dir)
        except Exception as error:  # nvcc without LTO-IR support, or a compile error
            output = getattr(error, "stderr", "") or ""
            reason = f"compiling csrc/{paths.CALLBACK_SOURCE} to LTO-IR failed: {error} {output}"
    if reason is not None:
        if switch == "1":
            raise SystemExit(f"SPECTFORMER_CUFFT_CALLBACKS=1 but they cannot be built: {reason}")
        _log(f"cuFFT path without LTO callbacks: {reason}")
        return [], [], []
    folder, name = nvjitlink
    _log(f"cuFFT LTO callbacks on (nvJitLink {folder / name})")
    # cuFFT dlopens nvJitLink by soname; linking it here (kept although no symbol is used)
    # with an rpath loads it first, so cuFFT finds it without LD_LIBRARY_PATH.
    link = [f"-L{folder}", "-Wl,--push-state,--no-as-needed", f"-l:{name}", "-Wl,--pop-state",
            f"-Wl,-rpath,{folder}"]
    return [str(ROOT / "build" / "generated")], ["-DSPECTFORMER_CUFFT_LTO_CALLBACKS=1"], link


def _cuda_extension():
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

    paths = _load_cufft_paths()
    cufft = paths.find_cufft(CUDA_HOME)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    os.environ.setdefault("MAX_JOBS", _bounded_max_jobs())
    _log(
        f"building spectformer_kernels._C for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} "
        f"with MAX_JOBS={os.environ['MAX_JOBS']}, cuFFT from {cufft.include_dir}"
    )
    # Link the exact library file (wheels ship only libcufft.so.N, no libcufft.so), and
    # record its folder as an rpath for processes that have not loaded cuFFT through torch.
    link_args = [f"-L{cufft.library_dir}", f"-l:{cufft.library_file}", f"-Wl,-rpath,{cufft.library_dir}"]
    cb_includes, cb_flags, cb_link = _lto_callback_setup(paths, CUDA_HOME, cufft)
    cufftdx_includes = paths.find_cufftdx() or []
    if cufftdx_includes:
        _log(f"cuFFTDx path on (headers from {cufftdx_includes[0]})")
        cufftdx_flags = []
    else:
        _log("cuFFTDx path off: no cuFFTDx headers (pip install nvidia-mathdx, or set MATHDX_ROOT)")
        cufftdx_flags = ["-DSPECTFORMER_HAVE_CUFFTDX=0"]
    extension = CUDAExtension(
        name="spectformer_kernels._C",
        sources=[
            "csrc/binding.cpp",
            "csrc/cufftdx_gate.cu",
            "csrc/cufft_gate.cu",
        ],
        include_dirs=[str(CSRC), str(cufft.include_dir), *cb_includes,
                      *map(str, cufftdx_includes)],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17", *cb_flags],
            "nvcc": ["-O3", "-std=c++17", "-lineinfo", *paths.HALF_UNDEFINES, *cb_flags,
                     *cufftdx_flags],
        },
        extra_link_args=link_args + cb_link,
    )
    return [extension], {"build_ext": BuildExtension}


def _extension_setup_args() -> dict:
    switch = _switch("SPECTFORMER_BUILD_CUDA")
    if switch == "0":
        _log("SPECTFORMER_BUILD_CUDA=0: not building the CUDA extension")
        return {}
    reason = _why_no_cuda_build()
    if reason is not None:
        if switch == "1":
            raise SystemExit(f"SPECTFORMER_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        _log(f"not building the CUDA extension: {reason}")
        return {}
    ext_modules, cmdclass = _cuda_extension()
    return {"ext_modules": ext_modules, "cmdclass": cmdclass}


setup(**_extension_setup_args())
