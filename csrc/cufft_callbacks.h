// What the cuFFT LTO callbacks of cufft_callbacks.cu share with their host side in
// cufft_gate.cu: the parameter block they read through callerInfo, and their symbol names.
//
// cuFFT binds callerInfo when a plan is made, so each callback plan owns one parameter block
// in device memory, rewritten by a one-thread kernel on the caller's stream before every
// exec (stream order makes that safe; plans are cached per stream for that reason).
#pragma once

#include "spectral_gate.h"

namespace spectformer {

struct CallbackParams {
  const void* src;    // load callbacks: x or dy, (B, H, W, C) with src_strides
  Strides4 src_strides;
  void* dst;          // real store callback: y or dx, contiguous (B, H, W, C)
  const float* weight;  // gate store callback: K, (H, W/2+1, C, 2)
  int H, W, C;
  float scale;        // gate store callback: 1 / (H W), both ortho factors
};

// Symbol names (extern "C", so unmangled) passed to cufftXtSetJITCallback.
constexpr const char* kLoadRealF32 = "spectformer_cb_load_f32";
constexpr const char* kLoadRealBF16 = "spectformer_cb_load_bf16";
constexpr const char* kLoadRealF16 = "spectformer_cb_load_f16";
constexpr const char* kStoreRealF32 = "spectformer_cb_store_f32";
constexpr const char* kStoreRealBF16 = "spectformer_cb_store_bf16";
constexpr const char* kStoreRealF16 = "spectformer_cb_store_f16";
constexpr const char* kStoreGate = "spectformer_cb_store_gate";

}  // namespace spectformer
