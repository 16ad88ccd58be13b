"""pytest-benchmark view of the same cases as ``python -m benchmarks.spectral_gate``.

    pytest benchmarks/test_bench_spectral_gate.py --benchmark-group-by=param:shape

Runs on the GPU when there is one (CUDA-synchronised), else on the CPU at batch 16. Not part
of the test suite: it measures, it does not assert speed.
"""

import pytest
import torch

import spectformer_kernels as sk
from benchmarks.spectral_gate import DTYPES, SHAPES, make_case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 128 if DEVICE == "cuda" else 16
BACKENDS = [b for b in sk.available_backends() if b != "auto"]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_spectral_gate(benchmark, backend, shape, dtype, mode):
    h, w, c = SHAPES[shape]
    x = torch.randn(BATCH, h, w, c, device=DEVICE, dtype=DTYPES[dtype])
    weight = torch.randn(h, w // 2 + 1, c, 2, device=DEVICE) * 0.02
    grad = torch.randn_like(x)
    try:
        run = make_case(backend, x, weight, grad, mode)
        run()
    except sk.BackendUnavailableError as err:
        pytest.skip(str(err))

    def synchronised():
        run()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(device=DEVICE, batch=BATCH)
    benchmark(synchronised)
