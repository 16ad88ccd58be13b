// The rules of the spectral gate that every kernel of csrc/ shares, in one place.
//
// The op is y = irfft2(rfft2(x) * K) (ortho) with CPU irfft2 semantics. On the half spectrum
// (H, Wk = W/2 + 1):
// - the self-conjugate columns are k = 0 (DC) and, W even, k = W/2 (Nyquist). A real inverse
//   along W keeps only the real part of those columns after the inverse along H, and counts
//   every other column twice: the weight c_k is 1 there and 2 elsewhere;
// - taking the real part after the inverse along H equals applying that inverse to the
//   Hermitian part along H, (Y[h] + conj(Y[-h])) / 2, with -h the mirror row (H - h) mod H;
// - where X is the transform of a real signal (X[-h] = conj(X[h]) in those columns), the
//   Hermitian part of X K is X times the Hermitian part of K, (K[h] + conj(K[-h])) / 2.
// The gradient of K is dK = c_k / (H W) sum_b conj(X) D with D the transform of dy.
#pragma once

#include "common.cuh"

namespace spectformer {
namespace gate {

__host__ __device__ __forceinline__ bool is_self_conjugate_bin(int k, int width) {
  return k == 0 || 2 * k == width;
}

// c_k: how often column k of the half spectrum counts in the real inverse along W.
__host__ __device__ __forceinline__ float column_weight(int k, int width) {
  return is_self_conjugate_bin(k, width) ? 1.f : 2.f;
}

// The row holding the conjugate partner of row h along H.
__host__ __device__ __forceinline__ int mirror_row(int h, int height) {
  return h == 0 ? 0 : height - h;
}

// (a + conj(b)) / 2: the Hermitian part of a pair (value at h, value at the mirror row).
__host__ __device__ __forceinline__ float2 hermitian_part(float2 at_h, float2 at_mirror) {
  return make_float2(0.5f * (at_h.x + at_mirror.x), 0.5f * (at_h.y - at_mirror.y));
}

__host__ __device__ __forceinline__ float2 complex_mul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

__host__ __device__ __forceinline__ float2 complex_conj(float2 a) { return make_float2(a.x, -a.y); }

// K[h, k, c] from the (H, Wk, C, 2) fp32 weight, conjugated for the backward.
__device__ __forceinline__ float2 load_weight(const float* weight, int h, int k, int c, int Wk,
                                              int C, bool conjugate) {
  const float* p = weight + ((static_cast<int64_t>(h) * Wk + k) * C + c) * 2;
  return make_float2(p[0], conjugate ? -p[1] : p[1]);
}

}  // namespace gate
}  // namespace spectformer
