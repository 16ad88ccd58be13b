// cuFFT LTO callbacks of the cuFFT path (built only when SPECTFORMER_CUFFT_LTO_CALLBACKS is
// on): compiled at build time to LTO-IR (nvcc -dc -fatbin -gencode arch=compute_XX,code=lto_XX),
// embedded in the extension, and linked into cuFFT's kernels by nvJitLink when a plan is
// made (cufftXtSetJITCallback, cuFFT API reference, "LTO callbacks"). They remove the pack,
// gate and unpack passes of the fallback path:
//   R2C load   x[b, h, w, c] (any strides, any of the three dtypes) -> fp32, so cuFFT reads
//              the channels-last tensor directly (plane b*C + c, element h*W + w);
//   R2C store  the gate: Y = X * K' / (H W), where K' is K except in the DC and (W even)
//              Nyquist columns, which use the Hermitian part of K along H (see below);
//   C2R store  fp32 -> y[b, h, w, c] contiguous channels-last, in the output dtype.
// Offsets are element indices into the batched plan's default layout: (B*C, H, W) real and
// (B*C, H, W/2+1) complex.
//
// The Hermitian fix for CPU irfft2 semantics (cufft_gate.cu) needs Y[h] and Y[-h] together,
// which a store callback cannot see: cuFFT stores elements in an unspecified order, possibly
// from different blocks, and may use the output buffer as scratch before its last pass, so
// neither reading the mirror nor accumulating into it is sound. It is not needed, though:
// in those columns X is the DFT along H of a real sequence, X[-h] = conj(X[h]), so
//   (X[h] K[h] + conj(X[-h] K[-h])) / 2 = X[h] (K[h] + conj(K[-h])) / 2,
// and every element needs only its own X and two entries of K. cuFFT's X is Hermitian up to
// rounding, so the C2R input is too, and any C2R then returns the CPU result to fp32 accuracy.
//
// The backward keeps its gate kernel: dK = sum_b conj(X) D needs X and D of every batch
// element for one (h, k, c), a reduction no per-element callback can do deterministically.
// It uses the load and real store callbacks for dy/x and dx.
#ifdef SPECTFORMER_HOST_EMULATION
#include "emulation/host_cufft.h"  // CPU model for the no-GPU tests
#else
#include <cufftXt.h>
#endif

#include "common.cuh"
#include "cufft_callbacks.h"
#include "gate_rules.cuh"

namespace spectformer {
namespace {

template <typename T>
__device__ __forceinline__ cufftReal load_channels_last(unsigned long long offset,
                                                        const CallbackParams* p) {
  const long long hw = static_cast<long long>(p->H) * p->W;
  const long long plane = static_cast<long long>(offset / hw);
  const int pos = static_cast<int>(offset - plane * hw);
  const long long b = plane / p->C;
  const int c = static_cast<int>(plane - b * p->C);
  const Strides4 s = p->src_strides;
  const T* src = static_cast<const T*>(p->src);
  return to_float(src[b * s.b + (pos / p->W) * s.h + (pos % p->W) * s.w + c * s.c]);
}

template <typename T>
__device__ __forceinline__ void store_channels_last(unsigned long long offset, cufftReal v,
                                                    const CallbackParams* p) {
  const long long hw = static_cast<long long>(p->H) * p->W;
  const long long plane = static_cast<long long>(offset / hw);
  const long long pos = static_cast<long long>(offset) - plane * hw;
  const long long b = plane / p->C;
  const long long c = plane - b * p->C;
  static_cast<T*>(p->dst)[(b * hw + pos) * p->C + c] = from_float<T>(v);
}

}  // namespace
}  // namespace spectformer

using spectformer::CallbackParams;

#define SPECTFORMER_LOAD_CALLBACK(name, T)                                                   \
  extern "C" __device__ cufftReal name(void*, unsigned long long offset, void* caller_info, \
                                       void*) {                                              \
    return spectformer::load_channels_last<T>(offset,                                        \
                                              static_cast<const CallbackParams*>(caller_info)); \
  }
#define SPECTFORMER_STORE_CALLBACK(name, T)                                                  \
  extern "C" __device__ void name(void*, unsigned long long offset, cufftReal v,            \
                                  void* caller_info, void*) {                                \
    spectformer::store_channels_last<T>(offset, v,                                           \
                                        static_cast<const CallbackParams*>(caller_info));    \
  }

SPECTFORMER_LOAD_CALLBACK(spectformer_cb_load_f32, float)
SPECTFORMER_LOAD_CALLBACK(spectformer_cb_load_bf16, __nv_bfloat16)
SPECTFORMER_LOAD_CALLBACK(spectformer_cb_load_f16, __half)
SPECTFORMER_STORE_CALLBACK(spectformer_cb_store_f32, float)
SPECTFORMER_STORE_CALLBACK(spectformer_cb_store_bf16, __nv_bfloat16)
SPECTFORMER_STORE_CALLBACK(spectformer_cb_store_f16, __half)

// R2C store: out[offset] = X * K' * scale (see the header comment for K').
extern "C" __device__ void spectformer_cb_store_gate(void* data_out, unsigned long long offset,
                                                     cufftComplex x, void* caller_info, void*) {
  const CallbackParams* p = static_cast<const CallbackParams*>(caller_info);
  const int Wk = p->W / 2 + 1;
  const long long per_plane = static_cast<long long>(p->H) * Wk;
  const long long plane = static_cast<long long>(offset / per_plane);
  const int hk = static_cast<int>(offset - plane * per_plane);
  const int h = hk / Wk;
  const int k = hk - h * Wk;
  const int c = static_cast<int>(plane % p->C);
  namespace gate = spectformer::gate;
  float2 kv = gate::load_weight(p->weight, h, k, c, Wk, p->C, false);
  if (gate::is_self_conjugate_bin(k, p->W)) {
    const int hn = gate::mirror_row(h, p->H);
    kv = gate::hermitian_part(kv, gate::load_weight(p->weight, hn, k, c, Wk, p->C, false));
  }
  const float2 y = gate::complex_mul(x, kv);
  const float s = p->scale;
  static_cast<cufftComplex*>(data_out)[offset] = make_float2(y.x * s, y.y * s);
}
