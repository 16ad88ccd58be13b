"""Where cuFFT's headers and library are: the CUDA toolkit, else an ``nvidia-cufft`` wheel.

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
