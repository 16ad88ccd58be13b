// Plain CUDA C++ interface of the spectral gate kernels (no torch types).
//
// The op, per batch element and channel of a channels-last x (B, H, W, C):
//     y = irfft2(rfft2(x, norm="ortho") * K, s=(H, W), norm="ortho")
// with CPU irfft semantics (the imaginary parts of the DC and, W even, Nyquist bins of
// the H-inverse are ignored). K is fp32 (H, W/2+1, C, 2), contiguous, (real, imag) last.
// x may have any element strides; every output is contiguous. Computation is in fp32.
//
// Two implementations:
//   cufftdx  one kernel per direction on cuFFTDx thread FFTs, compile-time H and W for the
//            model grids (cufftdx_gate.cu).
//   cufft    any grid: one batched R2C and one C2R plan with the gate in a small kernel
//            between, or (built with SPECTFORMER_CUFFT_LTO_CALLBACKS) inside cuFFT's
//            kernels as callbacks (cufft_gate.cu).
//
// Every function returns an empty Status on success, else a sentence saying what failed.
#pragma once

#ifdef SPECTFORMER_HOST_EMULATION
#include "emulation/host_cuda.h"  // CPU model of the runtime for the no-GPU tests
#else
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <cstdint>
#include <string>

namespace spectformer {

using Status = std::string;

enum class ScalarType { kFloat32, kBFloat16, kFloat16 };

struct GateShape {
  int64_t batch, height, width, channels;
  int64_t half_width() const { return width / 2 + 1; }
};

// Element strides of a (B, H, W, C) tensor.
struct Strides4 {
  int64_t b, h, w, c;
};

// ---- cuFFTDx path (one fused kernel on in-register FFTs, compile-time grids) -------------
// Largest H, W the path can have kernels for (single-precision thread FFTs).
constexpr int kCufftdxMaxSize = 64;

// Whether a kernel is compiled for this grid (the square model grids 7, 12, 14, 24, 28, 48,
// 56); false when the extension was built without the cuFFTDx headers.
bool cufftdx_supports(const GateShape& shape);

// num_sms: the device's SM count (the grids are sized to fill it once).
Status cufftdx_forward(const GateShape& shape, ScalarType dtype, const void* x, Strides4 x_strides,
                       const float* weight, void* y, int num_sms, cudaStream_t stream);

// Scratch bytes cufftdx_backward needs (per-chunk partial sums of dK), for this device.
Status cufftdx_backward_workspace_bytes(const GateShape& shape, int num_sms, size_t* bytes);

Status cufftdx_backward(const GateShape& shape, ScalarType dtype, const void* grad_y,
                        Strides4 grad_y_strides, const void* x, Strides4 x_strides,
                        const float* weight, void* grad_x, float* grad_weight, void* workspace,
                        size_t workspace_bytes, int num_sms, cudaStream_t stream);

// ---- cuFFT path ------------------------------------------------------------------
// Whether the extension was built with the cuFFT LTO callbacks (pack, gate and unpack inside
// cuFFT). Even then a call falls back to the kernel path where callback plans cannot be
// made, or when the environment sets SPECTFORMER_CUFFT_CALLBACKS=0.
bool cufft_lto_callbacks_built();
// Why making callback plans first failed in this process ("" if it never did): the cuFFT
// path then used its gate kernel for that shape.
std::string cufft_callback_failure();

// Scratch bytes (packed planes, spectra and the cuFFT work area). Creates and caches the
// plans this call will use (callback plans are per stream and dtype) on the current device,
// so call it with the target device current and the stream and dtype of the call. Plans are
// never made while the stream captures a CUDA graph: run the op once before capturing, else
// this returns an error saying so. The caches keep the 32 most recently used entries.
Status cufft_forward_workspace_bytes(const GateShape& shape, ScalarType dtype,
                                     cudaStream_t stream, size_t* bytes);
Status cufft_backward_workspace_bytes(const GateShape& shape, ScalarType dtype,
                                      cudaStream_t stream, size_t* bytes);

Status cufft_forward(const GateShape& shape, ScalarType dtype, const void* x, Strides4 x_strides,
                     const float* weight, void* y, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

Status cufft_backward(const GateShape& shape, ScalarType dtype, const void* grad_y,
                      Strides4 grad_y_strides, const void* x, Strides4 x_strides,
                      const float* weight, void* grad_x, float* grad_weight, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream);

}  // namespace spectformer
