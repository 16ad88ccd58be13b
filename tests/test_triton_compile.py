"""The Triton kernels compile for Hopper (sm_90a), fit its shared memory and never spill.

No GPU is needed: Triton compiles ahead of time for a named target and its bundled cuobjdump
reports the resources. The interpreter tests cannot catch a kernel that only fails to
compile, or a config whose shared memory exceeds 227 KB (its launch would fail on the GPU).
Compiles run in a subprocess because ``conftest.py`` turns the interpreter on in this one.
"""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("triton")


def _ptxas_missing():
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        return "triton has no nvidia backend"
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(90).path
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot compile here
        return f"no ptxas for sm_90 ({exc})"
    return None if os.path.exists(path) else f"ptxas not found at {path}"


pytestmark = pytest.mark.skipif(_ptxas_missing() is not None, reason=str(_ptxas_missing()))

from spectformer_kernels import triton_backend as tb  # noqa: E402
from spectformer_kernels import triton_compile as tr  # noqa: E402

# 14x14: the vanilla model's grid; 56x56x96: the largest hierarchical grid (padded to
# 64x64 in the kernel), where the fp32 backward has no config that does not spill.
CASES = [(kernel, dtype, h, w, c) for kernel in ("forward", "backward")
         for dtype in ("fp32", "bf16") for (h, w, c) in ((14, 14, 384), (56, 56, 96))]


@pytest.fixture(scope="module")
def compiled():
    """Each case's largest kept config (biggest tile per thread), compiled two at a time."""
    jobs = {case: tr.largest_kept_config(*case) for case in CASES}
    todo = {case: job for case, job in jobs.items() if job is not None}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(todo, pool.map(lambda job: tr.compile_in_subprocess(job, 240),
                                           todo.values())))
    return jobs, results


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}x{c[4]}")
def test_kept_config_compiles_for_sm90_without_spills(compiled, case):
    jobs, results = compiled
    job = jobs[case]
    if job is None:  # nothing fits: the backend must decline the shape instead
        assert tb.kept_configs(*case) == []
        return
    result = results[case]
    assert result["status"] == "ok", f"{job}: {result['status']}"
    assert 0 < result["registers"] <= 255, result
    assert result["shared_bytes"] <= tb.SMEM_LIMIT, (
        f"{job}: {result['shared_bytes']} B of shared memory > {tb.SMEM_LIMIT} B")
    # The pruner never keeps a config that spills (a stack frame in the cubin).
    assert result["spill_bytes"] == 0, (job, result)
