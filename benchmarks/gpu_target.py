"""The GPU the static model predicts for: NVIDIA H100 SXM5 (sm_90a), one table of constants.

Every number the model uses lives here with where it comes from. "Spec" figures are
NVIDIA's published ones; "estimate" figures are the model's assumptions, to be replaced by
measurements (``benchmarks/gpu_session.sh`` records the copy bandwidth of the same run).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    value: float
    unit: str
    source: str


H100_SXM = {
    "sms": Constant(132, "SMs", "spec: H100 SXM5 has 132 SMs (NVIDIA H100 Tensor Core GPU "
                    "Architecture whitepaper)"),
    "clock_hz": Constant(1.83e9, "Hz", "spec-derived: the clock behind NVIDIA's dense BF16 "
                         "figure, 989.4 TFLOPS = 132 SMs x 4096 FLOP/clk x 1.83 GHz (max "
                         "boost 1.98 GHz; sustained clocks under load may be lower)"),
    "hbm_bytes_per_s": Constant(2.96e12, "B/s", "measured: device-to-device copy (read + "
                                "write) on an H100 80GB HBM3, 2966 and 2964 GB/s in two runs "
                                "(benchmarks/results/spectral_gate_gpu.csv, copy_gbps)"),
    "permute_copy_4b_bytes_per_s": Constant(0.77e12, "B/s", "measured: PyTorch's strided "
                                            "copy (direct_copy_kernel, not vectorised) of a "
                                            "channels-last fp32 tensor to (B*C, H, W): 77 MB "
                                            "in 99.5 us on an H100 (kernel_profile_gpu.txt); "
                                            "also used for 2-byte elements (not measured)"),
    "permute_copy_8b_bytes_per_s": Constant(1.14e12, "B/s", "measured: the same copy of the "
                                            "complex64 spectrum, two per irfft2: 176 MB in "
                                            "154.5 us on an H100 (kernel_profile_gpu.txt)"),
    "cufft_passes": Constant(2, "passes", "measured: cuFFT ran each 2-D transform of a 14x14 "
                             "grid as two kernels on an H100 (regular_fft for one axis, "
                             "vector_fft_r2c/c2r for the other; kernel_profile_gpu.txt), each "
                             "reading and writing the whole tensor"),
    "l2_bytes_per_s": Constant(5.5e12, "B/s", "estimate: L2-to-SM bandwidth from public "
                               "microbenchmarks of H100 (about 5.5 TB/s); uncertain"),
    "l2_bytes": Constant(50 * 2**20, "B", "spec: 50 MB L2"),
    "dram_latency_s": Constant(650e-9, "s", "estimate: loaded DRAM latency (idle latency is "
                               "about 500-600 ns in public microbenchmarks)"),
    "issue_per_clk": Constant(4, "warp-instr/clk/SM", "spec: 4 SM sub-partitions, each "
                              "dispatching one warp instruction per clock"),
    "fp32_per_clk": Constant(4, "warp-instr/clk/SM", "spec: 128 FP32 lanes per SM = 4 warp "
                             "FFMA/FADD/FMUL per clock"),
    "tensor_flops_per_clk": Constant(4096, "FLOP/clk/SM", "spec: dense BF16/FP16 wgmma "
                                     "(HGMMA), 989.4 TFLOPS at 1.83 GHz"),
    "mma_sync_fraction": Constant(0.5, "of wgmma peak", "estimate: mma.sync (HMMA) on Hopper "
                                  "reaches well under the wgmma peak; public microbenchmarks "
                                  "report roughly half to two thirds"),
    "shared_bytes_per_clk": Constant(128, "B/clk/SM", "spec: 32 banks x 4 B per clock"),
    "smem_per_sm": Constant(228 * 1024, "B", "spec: up to 228 KB shared memory per SM"),
    "smem_per_block": Constant(227 * 1024, "B", "spec: 227 KB per block (opt-in)"),
    "smem_reserved_per_block": Constant(1024, "B", "spec: 1 KB per block reserved by the "
                                        "system (CUDA programming guide, compute capability "
                                        "9.0)"),
    "l1_per_sm": Constant(256 * 1024, "B", "spec: 256 KB combined L1/shared per SM"),
    "registers_per_sm": Constant(65536, "32-bit", "spec"),
    "register_unit": Constant(256, "registers per warp", "spec: allocation granularity"),
    "threads_per_sm": Constant(2048, "threads", "spec"),
    "blocks_per_sm": Constant(32, "blocks", "spec"),
    "launch_s": Constant(1.5e-6, "s", "estimate: fixed cost of one dependent launch on a "
                         "stream (ramp-up, tail and gap); CUDA graphs would lower it"),
}


def value(name: str) -> float:
    return H100_SXM[name].value


def table() -> str:
    """The constants as a Markdown table (for the README and the model's printout)."""
    lines = ["| constant | value | unit | source |", "|---|---:|---|---|"]
    for name, c in H100_SXM.items():
        lines.append(f"| `{name}` | {c.value:g} | {c.unit} | {c.source} |")
    return "\n".join(lines)
