"""Where nvcc is, where cuFFT's headers and library are (the CUDA toolkit, else an
``nvidia-cufft`` wheel), and cuFFTDx's headers (the ``nvidia-mathdx`` wheel).

Plain Python with no dependencies, so ``setup.py`` and the compile-check test can both load
it by path. CUDA 13 toolkits installed without the math libraries (and CI machines that
only have ``nvcc``) have no ``cufft.h``; the PyPI wheel ``nvidia-cufft`` (which CUDA builds
of torch already depend on) ships ``include/cufft.h`` and ``lib/libcufft.so.*``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NamedTuple, Optional


# torch's extension tooling passes these to nvcc ahead of the project's own flags; they
# remove the __half / __nv_bfloat16 operators that cuFFTDx's complex types use (the first
# H100 build failed on them). The project undefines them again after torch's flags, and the
# static GPU model compiles with both, so that it compiles exactly what setup.py builds.
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
]
HALF_UNDEFINES = ["-U" + flag[2:] for flag in TORCH_NVCC_DEFINES]


def find_nvcc() -> Optional[str]:
    """``nvcc`` on the PATH, else under ``$CUDA_HOME``, ``$CUDA_PATH`` or ``/usr/local/cuda``."""
    import shutil

    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


class CufftLocation(NamedTuple):
    include_dir: Path
    library_dir: Optional[Path]  # None: only the headers were found
    library_file: Optional[str]  # e.g. "libcufft.so.12"; None with library_dir None


def _wheel_roots() -> list[Path]:
    """Folders of the ``nvidia`` namespace package (one per site-packages holding it)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _library_in(folder: Path) -> Optional[str]:
    if (folder / "libcufft.so").exists():
        return "libcufft.so"
    versioned = sorted(folder.glob("libcufft.so.*"), key=lambda p: len(p.name))
    return versioned[0].name if versioned else None


def find_cufft(cuda_home: Optional[str] = None) -> Optional[CufftLocation]:
    """The toolkit's cuFFT when it has one, else the first wheel's; None if neither."""
    cuda_home = cuda_home or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        include = Path(cuda_home) / "include"
        if (include / "cufft.h").exists():
            for lib in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
                name = _library_in(Path(cuda_home) / lib)
                if name:
                    return CufftLocation(include, Path(cuda_home) / lib, name)
            return CufftLocation(include, None, None)
    for root in _wheel_roots():
        # cu12 wheels: nvidia/cufft/include; CUDA 13 wheels: nvidia/cu13/include.
        for header in sorted(root.glob("*/include/cufft.h")):
            lib_dir = header.parent.parent / "lib"
            name = _library_in(lib_dir)
            return CufftLocation(header.parent, lib_dir if name else None, name)
    return None


# ---- cuFFTDx (header-only, from the nvidia-mathdx wheel) ---------------------------------------


def find_cufftdx() -> Optional[list[Path]]:
    """Include folders for cuFFTDx (``cufftdx.hpp`` and the CUTLASS headers it uses) from the
    ``nvidia-mathdx`` wheel, or from ``MATHDX_ROOT``; None if neither has them."""
    roots = []
    if os.environ.get("MATHDX_ROOT"):
        roots.append(Path(os.environ["MATHDX_ROOT"]))
    roots += [root / "mathdx" for root in _wheel_roots()]
    for root in roots:
        include, cutlass = root / "include", root / "external" / "cutlass" / "include"
        if (include / "cufftdx.hpp").exists() and cutlass.is_dir():
            return [include, cutlass]
    return None


# ---- cuFFT LTO callbacks ------------------------------------------------------------------

CALLBACK_SOURCE = "cufft_callbacks.cu"
CALLBACK_HEADER = "spectformer_cufft_callbacks_fatbin.h"


def has_jit_callbacks(include_dir: Path) -> bool:
    """Whether this cuFFT declares the CUDA 13 form of ``cufftXtSetJITCallback`` (with the
    callback's symbol name), the one ``cufft_gate.cu`` calls."""
    header = Path(include_dir) / "cufftXt.h"
    if not header.exists():
        return False
    text = header.read_text(errors="replace")
    return "cufftXtSetJITCallback(cufftHandle plan, const char*" in " ".join(text.split())


def find_nvjitlink(folders) -> Optional[tuple[Path, str]]:
    """(folder, file name) of libnvJitLink, which cuFFT loads at run time to link LTO
    callbacks, from the first folder that has one; None if none does."""
    for folder in folders:
        if folder is None:
            continue
        found = sorted(Path(folder).glob("libnvJitLink.so*"), key=lambda p: len(p.name))
        if found:
            return Path(folder), found[0].name
    return None


def lto_archs(arch_list: str) -> list[str]:
    """Compute capabilities ("90", ...) for the LTO-IR from a TORCH_CUDA_ARCH_LIST value."""
    archs = []
    for item in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip().replace("+PTX", "")
        if item and item[0].isdigit():
            major, _, minor = item.partition(".")
            arch = f"{major}{minor or '0'}"
            if arch not in archs:
                archs.append(arch)
    return archs or ["90"]


def build_callback_header(nvcc: str, csrc: Path, include_dirs: list, archs: list[str],
                          out_dir: Path) -> Path:
    """Compiles ``csrc/cufft_callbacks.cu`` to an LTO-IR fatbin (one entry per arch) and writes
    it as a C array header ``kCufftCallbacksFatbin`` into ``out_dir``; returns the header.
    Raises ``subprocess.CalledProcessError`` with the compiler output if nvcc fails."""
    import subprocess

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fatbin = out_dir / "spectformer_cufft_callbacks.fatbin"
    command = [nvcc, "-std=c++17", "-O3", "-dc", "-fatbin", "-I", str(csrc)]
    for include in include_dirs:
        command += ["-I", str(include)]
    for arch in archs:
        command += ["-gencode", f"arch=compute_{arch},code=lto_{arch}"]
    command += [str(Path(csrc) / CALLBACK_SOURCE), "-o", str(fatbin)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    data = fatbin.read_bytes()
    lines = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    header = out_dir / CALLBACK_HEADER
    header.write_text(
        "// Generated at build time from csrc/cufft_callbacks.cu (LTO-IR fatbin); do not edit.\n"
        "#pragma once\n"
        "alignas(16) static const unsigned char kCufftCallbacksFatbin[] = {\n  "
        + ",\n  ".join(lines)
        + "\n};\n"
    )
    return header
