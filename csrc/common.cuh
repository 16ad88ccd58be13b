// Helpers shared by the kernels: dtype conversion and error reporting.
#pragma once

#ifndef SPECTFORMER_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <string>

#include "spectral_gate.h"

// Kernels are launched and declare dynamic shared memory through these two macros, so that
// the same source also compiles as plain C++ for the host emulation tests
// (emulation/host_cuda.h defines them there).
#ifndef SPECTFORMER_HOST_EMULATION
#define SPECTFORMER_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#define SPECTFORMER_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define SPECTFORMER_UNROLL _Pragma("unroll")
#else
#define SPECTFORMER_UNROLL
#endif
// Stops the compiler moving memory accesses across this point (no instruction is emitted).
#define SPECTFORMER_COMPILER_FENCE() asm volatile("" ::: "memory")

namespace spectformer {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status();
  return std::string(what) + " failed: " + cudaGetErrorName(err) + " (" +
         cudaGetErrorString(err) + ")";
}

// Returns from the calling function with a message if a CUDA call failed.
#define SPECTFORMER_CUDA_TRY(call)                                       \
  do {                                                                   \
    ::spectformer::Status status_ = ::spectformer::cuda_status((call), #call); \
    if (!status_.empty()) return status_;                                \
  } while (0)

// Checks the launch just made (configuration errors surface here, not at sync).
#define SPECTFORMER_LAUNCH_CHECK(kernel_name)                                       \
  do {                                                                             \
    ::spectformer::Status status_ =                                                \
        ::spectformer::cuda_status(cudaGetLastError(), "launch of " kernel_name);   \
    if (!status_.empty()) return status_;                                          \
  } while (0)

// Instantiates a launcher body for the three supported dtypes.
#define SPECTFORMER_DISPATCH_DTYPE(dtype, T, ...)              \
  switch (dtype) {                                             \
    case ::spectformer::ScalarType::kFloat32: {                \
      using T = float;                                         \
      return __VA_ARGS__();                                    \
    }                                                          \
    case ::spectformer::ScalarType::kBFloat16: {               \
      using T = __nv_bfloat16;                                 \
      return __VA_ARGS__();                                    \
    }                                                          \
    case ::spectformer::ScalarType::kFloat16: {                \
      using T = __half;                                        \
      return __VA_ARGS__();                                    \
    }                                                          \
  }                                                            \
  return ::spectformer::Status("unsupported dtype code")

}  // namespace spectformer
