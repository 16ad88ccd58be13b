"""Launch geometry of the cuFFTDx kernels (``csrc/cufftdx_gate.cu``), for the static GPU model
and the tests. Torch-free.

The table mirrors ``SPECTFORMER_GRID(N, forward CT, forward blocks/SM, backward CT, backward
blocks/SM)`` in the kernel source (a test checks they agree); the derived numbers follow the
kernel's ``Tile`` struct exactly.
"""

from __future__ import annotations

from typing import NamedTuple

# N: (forward channel tile, forward blocks per SM, backward channel tile, backward blocks per SM)
GRID_TILES = {
    7: (32, 5, 32, 4),
    12: (32, 2, 32, 2),
    14: (16, 4, 16, 4),
    24: (8, 3, 16, 2),
    28: (8, 3, 8, 3),
    48: (4, 2, 4, 2),
    56: (4, 2, 4, 2),
}


class TileLaunch(NamedTuple):
    height: int
    width: int
    channels_per_block: int  # CT
    threads: int
    blocks_per_sm: int  # what the register cap is set for
    max_registers: int  # __maxnreg__
    shared_bytes: int  # dynamic shared memory per block (forward: spectrum and K; backward: x,
    # dy and, where it fits, dK)
    vector_bytes: dict  # bytes per global vector access, by element size (4 or 2)


def tile_launch(n: int, direction: str) -> TileLaunch:
    """Geometry of the forward or backward kernel for the compiled grid n x n."""
    if n not in GRID_TILES:
        raise ValueError(f"no cuFFTDx kernel for {n}x{n}; compiled: {sorted(GRID_TILES)}")
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    fwd_ct, fwd_blocks, bwd_ct, bwd_blocks = GRID_TILES[n]
    ct, blocks = (fwd_ct, fwd_blocks) if direction == "forward" else (bwd_ct, bwd_blocks)
    wk = n // 2 + 1
    items = max(n * ct // 2, wk * ct)
    threads = (items + 31) // 32 * 32
    budget = 65536 // (threads * blocks) // 8 * 8
    buffer_bytes = n * wk * ct * 2 * 4
    dk_in_shared = (3 * buffer_bytes + 1024) * blocks <= 228 * 1024
    # forward: the spectrum and the block's copy of K; backward: x, dy and, where it fits, dK
    buffers = 2 if direction == "forward" else (3 if dk_in_shared else 2)
    return TileLaunch(n, n, ct, threads, blocks, min(255, budget), buffers * buffer_bytes,
                      {size: min(16, ct * size) for size in (4, 2)})
