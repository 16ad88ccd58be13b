// Fused spectral gate on in-register FFTs (cuFFTDx thread FFTs) for the model grids.
//
// H and W are compile-time (one instantiation per grid in kGrids below, all square: the
// grids of 224- and 384-pixel inputs that fit a single-precision thread FFT, sizes <= 64).
// One block owns a tile of CT channels and walks the batch (b = blockIdx.y, += gridDim.y;
// the grid is sized to the resident capacity, so each block stays for many b). Per b, in fp32:
//   load    (H, W, CT) of x, channels innermost, with 16-byte loads where the layout allows,
//           converted to fp32 into shared memory             [h][w][c]
//   along W one thread per (h, channel pair): the two real rows as one complex FFT of W
//           points, z = x_c0 + i x_c1, then X_c0[k] = (Z[k] + conj(Z[-k])) / 2 and
//           X_c1[k] = (Z[k] - conj(Z[-k])) / 2i for k < W/2 + 1  -> spectrum [h][k][c]
//   along H one thread per (k, c): FFT of H points, gate Y = X K / (H W), inverse FFT
//   along W one thread per (h, channel pair): Z = A + iB with A, B the Hermitian extensions
//           of the two half spectra (imaginary parts of the self-conjugate bins dropped: CPU
//           irfft2 semantics, gate_rules.cuh), inverse FFT, Re -> c0, Im -> c1
//   store   (H, W, CT) of y, converted, with 16-byte stores where possible.
// The spectrum overwrites the real tile in place (every thread reads its row into registers,
// a barrier, then the writes), so the forward needs one (H, W/2+1, CT) complex buffer, plus
// the block's copy of its K tile (the same size), read from global memory once for all its images.
//
// Backward, per b: the transforms of x and dy (X kept in shared memory, D in registers),
// dK += c_k / (H W) conj(X) D, G = D conj(K) / (H W), the inverse of G -> dx. Each block
// accumulates dK for its channel tile and its contiguous chunk of the batch, in b order, in
// shared memory where a third buffer fits (grids 7, 12, 14) or else directly in its own slice
// of a partials buffer (no other block touches it); a second kernel sums the chunks in chunk
// order: dK is deterministic for a given device.
#include <algorithm>

#include "common.cuh"

// Built by default; setup.py passes SPECTFORMER_HAVE_CUFFTDX=0 where the cuFFTDx headers (the
// nvidia-mathdx wheel) are missing, and then this path reports no grids.
#ifndef SPECTFORMER_HAVE_CUFFTDX
#define SPECTFORMER_HAVE_CUFFTDX 1
#endif

#if !SPECTFORMER_HAVE_CUFFTDX
namespace spectformer {
bool cufftdx_supports(const GateShape&) { return false; }
Status cufftdx_forward(const GateShape&, ScalarType, const void*, Strides4, const float*, void*,
                       int, cudaStream_t) {
  return "the extension was built without the cuFFTDx headers (nvidia-mathdx)";
}
Status cufftdx_backward_workspace_bytes(const GateShape&, int, size_t* bytes) {
  *bytes = 0;
  return "the extension was built without the cuFFTDx headers (nvidia-mathdx)";
}
Status cufftdx_backward(const GateShape&, ScalarType, const void*, Strides4, const void*, Strides4,
                        const float*, void*, float*, void*, size_t, int, cudaStream_t) {
  return "the extension was built without the cuFFTDx headers (nvidia-mathdx)";
}
}  // namespace spectformer
#else

#include "gate_rules.cuh"
#include "thread_fft.cuh"

namespace spectformer {
namespace {

// A grid (H, W), the channel tile CT of one kernel, and the blocks per SM its register
// budget must allow. Threads: one per item of the larger of the two stage kinds (row pairs
// along W, columns along H), rounded to whole warps; each thread owns at most one item per
// stage, so a stage needs no loop and at most one barrier.
template <int kHeight, int kWidth, int kChannels, int kBlocksPerSm>
struct Tile {
  static constexpr int H = kHeight;
  static constexpr int W = kWidth;
  static constexpr int Wk = kWidth / 2 + 1;
  static constexpr int CT = kChannels;
  static constexpr int kRowPairs = H * CT / 2;
  static constexpr int kColumns = Wk * CT;
  static constexpr int kItems = kRowPairs > kColumns ? kRowPairs : kColumns;
  static constexpr int kThreads = (kItems + 31) / 32 * 32;
  // Registers per thread that let kBlocksPerSm blocks share an SM's 64K, in units of 8
  // (without the explicit cap ptxas settles on 128 for these kernels and spills).
  static constexpr int kRegisterBudget = 65536 / (kThreads * kBlocksPerSm) / 8 * 8;
  static constexpr int kMaxRegisters = kRegisterBudget > 255 ? 255 : kRegisterBudget;
  // Complex spectrum [h][k][c] as floats; it also holds the real tile [h][w][c] (W < 2 Wk).
  static constexpr int kBufferFloats = H * Wk * CT * 2;
  // Backward: dK accumulates in a third shared buffer where three fit kBlocksPerSm times on
  // an SM (228 KB, 1 KB reserved per block), else in the block's slice of the partials in
  // global memory (L2-resident, but read and written once per image).
  // (A function: a data member would go unreferenced in the forward tiles, which warns.)
  __host__ __device__ static constexpr bool dk_in_shared() {
    return (3 * kBufferFloats * 4 + 1024) * kBlocksPerSm <= 228 * 1024;
  }
  static_assert(CT % 2 == 0, "channels are transformed in pairs");
  static_assert(H <= kCufftdxMaxSize && W <= kCufftdxMaxSize, "thread FFT sizes are <= 64");
  static_assert(kThreads <= 1024, "too many threads");
};

// Forward and backward tiles per grid (CT, blocks per SM), chosen from ptxas -v on sm_90a so
// that no kernel spills: the thread FFT's registers grow with the size, so the large grids
// take narrow channel tiles (128 threads) and fewer, fatter threads; the backward holds two
// buffers (x and dy) in shared memory.
template <int N>
struct GridTiles;
#define SPECTFORMER_GRID(N, FORWARD_CT, FORWARD_BLOCKS, BACKWARD_CT, BACKWARD_BLOCKS) \
  template <>                                                                        \
  struct GridTiles<N> {                                                              \
    using Forward = Tile<N, N, FORWARD_CT, FORWARD_BLOCKS>;                          \
    using Backward = Tile<N, N, BACKWARD_CT, BACKWARD_BLOCKS>;                       \
  };
SPECTFORMER_GRID(7, 32, 5, 32, 4)
SPECTFORMER_GRID(12, 32, 2, 32, 2)
SPECTFORMER_GRID(14, 16, 4, 16, 4)
SPECTFORMER_GRID(24, 8, 3, 16, 2)
SPECTFORMER_GRID(28, 8, 3, 8, 3)
SPECTFORMER_GRID(48, 4, 2, 4, 2)
SPECTFORMER_GRID(56, 4, 2, 4, 2)
#undef SPECTFORMER_GRID

// Calls fn(GridTiles<N>{}) for the compiled grid N x N, or returns false. The build may
// restrict the grids (SPECTFORMER_CUFFTDX_ONLY_GRID, used by the quick compile check).
template <typename Fn>
bool with_grid(int64_t H, int64_t W, Fn&& fn) {
  if (H != W) return false;
#ifdef SPECTFORMER_CUFFTDX_ONLY_GRID
  if (H != SPECTFORMER_CUFFTDX_ONLY_GRID) return false;
  fn(GridTiles<SPECTFORMER_CUFFTDX_ONLY_GRID>{});
  return true;
#else
  switch (H) {
    case 7: fn(GridTiles<7>{}); return true;
    case 12: fn(GridTiles<12>{}); return true;
    case 14: fn(GridTiles<14>{}); return true;
    case 24: fn(GridTiles<24>{}); return true;
    case 28: fn(GridTiles<28>{}); return true;
    case 48: fn(GridTiles<48>{}); return true;
    case 56: fn(GridTiles<56>{}); return true;
    default: return false;
  }
#endif
}

// ---- global <-> shared tiles ------------------------------------------------------------

template <int Bytes>
struct RawVector;
template <>
struct RawVector<16> { using type = uint4; };
template <>
struct RawVector<8> { using type = uint2; };
template <>
struct RawVector<4> { using type = unsigned int; };
template <>
struct RawVector<2> { using type = unsigned short; };

// Channels per vector access: 16 bytes, or the whole channel tile if that is less.
template <class Cfg, typename T>
struct VectorWidth {
  static constexpr int value =
      Cfg::CT * static_cast<int>(sizeof(T)) < 16 ? Cfg::CT : 16 / static_cast<int>(sizeof(T));
};

// Most vector loads one thread keeps in flight in load_tile (registers: 4 per vector, spent
// outside the FFTs, which set the kernels' register peak).
constexpr int kLoadBatch = 4;

// tile[(h W + w) CT + c] = src[b, h, w, c0 + c] in fp32, zero past the last channel.
// vectorized: channels contiguous, C and every stride multiples of the vector width and the
// base aligned to it (checked by the launcher), so one access moves VEC channels.
template <class Cfg, typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, Strides4 st, int64_t b,
                                          int c0, int C, bool vectorized, float* tile) {
  constexpr int VEC = VectorWidth<Cfg, T>::value;
  using Raw = typename RawVector<VEC * sizeof(T)>::type;
  const T* base = src + b * st.b;
  if (vectorized) {
    constexpr int kVectors = Cfg::CT / VEC;
    constexpr int kTotal = Cfg::H * Cfg::W * kVectors;
    // Vectors a thread loads before it stores any: a store to shared waits for its load, so
    // issuing them one by one would keep a single 16-byte load per thread in flight (far
    // too little to cover DRAM latency with a few warps per SM).
    constexpr int kPerThread = (kTotal + Cfg::kThreads - 1) / Cfg::kThreads;
    constexpr int kBatch = kPerThread < kLoadBatch ? kPerThread : kLoadBatch;
    for (int first = threadIdx.x; first < kTotal; first += kBatch * Cfg::kThreads) {
      Raw raw[kBatch];
SPECTFORMER_UNROLL
      for (int u = 0; u < kBatch; ++u) {
        const int i = first + u * Cfg::kThreads;
        const int hw = i / kVectors;
        const int h = hw / Cfg::W, w = hw % Cfg::W;
        const int c = c0 + (i % kVectors) * VEC;
        raw[u] = Raw{};  // zero past the last channel (and past the tile)
        if (i < kTotal && c < C) {
          raw[u] = *reinterpret_cast<const Raw*>(base + h * st.h + w * st.w + c);
        }
      }
SPECTFORMER_UNROLL
      for (int u = 0; u < kBatch; ++u) {
        const int i = first + u * Cfg::kThreads;
        if (i >= kTotal) break;
        alignas(sizeof(Raw)) T in[VEC];
        *reinterpret_cast<Raw*>(in) = raw[u];
        float* dst = tile + (i / kVectors) * Cfg::CT + (i % kVectors) * VEC;
SPECTFORMER_UNROLL
        for (int j = 0; j < VEC; ++j) dst[j] = to_float(in[j]);
      }
    }
  } else {
    for (int i = threadIdx.x; i < Cfg::H * Cfg::W * Cfg::CT; i += Cfg::kThreads) {
      const int cc = i % Cfg::CT;
      const int hw = i / Cfg::CT;
      const int h = hw / Cfg::W, w = hw % Cfg::W;
      const int c = c0 + cc;
      tile[i] = c < C ? to_float(base[h * st.h + w * st.w + c * st.c]) : 0.f;
    }
  }
}

// dst[b, h, w, c0 + c] (contiguous (B, H, W, C)) = tile[(h W + w) CT + c], converted to T.
template <class Cfg, typename T>
__device__ __forceinline__ void store_tile(const float* tile, int64_t b, int c0, int C,
                                           bool vectorized, T* __restrict__ dst) {
  constexpr int VEC = VectorWidth<Cfg, T>::value;
  using Raw = typename RawVector<VEC * sizeof(T)>::type;
  T* base = dst + b * Cfg::H * Cfg::W * static_cast<int64_t>(C);
  if (vectorized) {
    constexpr int kVectors = Cfg::CT / VEC;
    for (int i = threadIdx.x; i < Cfg::H * Cfg::W * kVectors; i += Cfg::kThreads) {
      const int v = i % kVectors;
      const int hw = i / kVectors;
      const int c = c0 + v * VEC;
      if (c >= C) continue;
      alignas(sizeof(Raw)) T out[VEC];
      const float* src = tile + hw * Cfg::CT + v * VEC;
SPECTFORMER_UNROLL
      for (int j = 0; j < VEC; ++j) out[j] = from_float<T>(src[j]);
      *reinterpret_cast<Raw*>(base + static_cast<int64_t>(hw) * C + c) =
          *reinterpret_cast<const Raw*>(out);
    }
  } else {
    for (int i = threadIdx.x; i < Cfg::H * Cfg::W * Cfg::CT; i += Cfg::kThreads) {
      const int cc = i % Cfg::CT;
      const int hw = i / Cfg::CT;
      if (c0 + cc < C) base[static_cast<int64_t>(hw) * C + c0 + cc] = from_float<T>(tile[i]);
    }
  }
}

template <class Cfg>
__device__ __forceinline__ void load_tile_as(ScalarType dtype, const void* src, Strides4 st,
                                             int64_t b, int c0, int C, bool vectorized,
                                             float* tile) {
  switch (dtype) {
    case ScalarType::kFloat32:
      load_tile<Cfg>(static_cast<const float*>(src), st, b, c0, C, vectorized, tile);
      break;
    case ScalarType::kBFloat16:
      load_tile<Cfg>(static_cast<const __nv_bfloat16*>(src), st, b, c0, C, vectorized, tile);
      break;
    case ScalarType::kFloat16:
      load_tile<Cfg>(static_cast<const __half*>(src), st, b, c0, C, vectorized, tile);
      break;
  }
}

template <class Cfg>
__device__ __forceinline__ void store_tile_as(ScalarType dtype, const float* tile, int64_t b,
                                              int c0, int C, bool vectorized, void* dst) {
  switch (dtype) {
    case ScalarType::kFloat32:
      store_tile<Cfg>(tile, b, c0, C, vectorized, static_cast<float*>(dst));
      break;
    case ScalarType::kBFloat16:
      store_tile<Cfg>(tile, b, c0, C, vectorized, static_cast<__nv_bfloat16*>(dst));
      break;
    case ScalarType::kFloat16:
      store_tile<Cfg>(tile, b, c0, C, vectorized, static_cast<__half*>(dst));
      break;
  }
}

// ---- the transforms ------------------------------------------------------------------------

// Real tile [h][w][c] -> half spectrum [h][k][c], in place. Thread (h, p) transforms the rows
// of channels 2p and 2p+1 as one complex sequence. Contains a barrier: call from all threads.
template <class Cfg>
__device__ __forceinline__ void forward_along_w(float* buffer) {
  constexpr int W = Cfg::W, Wk = Cfg::Wk, kPairs = Cfg::CT / 2;
  const int p = threadIdx.x % kPairs;
  const int h = threadIdx.x / kPairs;
  const bool active = threadIdx.x < Cfg::kRowPairs;
  float2 z[W];
  if (active) {
    const float2* rows = reinterpret_cast<const float2*>(buffer);
SPECTFORMER_UNROLL
    for (int w = 0; w < W; ++w) z[w] = rows[(h * W + w) * kPairs + p];
    fft_forward<W>(z);
  }
  __syncthreads();  // every row is in registers before the spectrum overwrites the tile
  if (active) {
    float4* spectrum = reinterpret_cast<float4*>(buffer);
SPECTFORMER_UNROLL
    for (int k = 0; k < Wk; ++k) {
      const float2 a = z[k];
      const float2 m = z[(W - k) % W];
      // X_c0 = (Z[k] + conj(Z[-k])) / 2,  X_c1 = (Z[k] - conj(Z[-k])) / 2i
      spectrum[(h * Wk + k) * kPairs + p] = make_float4(
          0.5f * (a.x + m.x), 0.5f * (a.y - m.y), 0.5f * (a.y + m.y), -0.5f * (a.x - m.x));
    }
  }
}

// Half spectra [h][k][c] -> real tile [h][w][c], in place, CPU irfft semantics along W.
// Contains a barrier: call from all threads.
template <class Cfg>
__device__ __forceinline__ void inverse_along_w(float* buffer) {
  constexpr int W = Cfg::W, Wk = Cfg::Wk, kPairs = Cfg::CT / 2;
  const int p = threadIdx.x % kPairs;
  const int h = threadIdx.x / kPairs;
  const bool active = threadIdx.x < Cfg::kRowPairs;
  float2 z[W];
  if (active) {
    const float4* spectrum = reinterpret_cast<const float4*>(buffer);
SPECTFORMER_UNROLL
    for (int k = 0; k < Wk; ++k) {
      const float4 v = spectrum[(h * Wk + k) * kPairs + p];
      float2 a = make_float2(v.x, v.y), c = make_float2(v.z, v.w);
      if (gate::is_self_conjugate_bin(k, W)) {  // only the real part counts there
        a.y = 0.f;
        c.y = 0.f;
      }
      z[k] = make_float2(a.x - c.y, a.y + c.x);  // A + iB
      if (k >= 1 && 2 * k < W) {
        z[W - k] = make_float2(a.x + c.y, c.x - a.y);  // conj(A) + i conj(B)
      }
    }
    fft_inverse<W>(z);
  }
  __syncthreads();  // every spectrum row is in registers before the tile overwrites it
  if (active) {
    float2* rows = reinterpret_cast<float2*>(buffer);
SPECTFORMER_UNROLL
    for (int w = 0; w < W; ++w) rows[(h * W + w) * kPairs + p] = z[w];
  }
}

// The block's tile of K, [h][k][c] as float2 (zero past the last channel), copied once by
// the threads that use it: thread (k, c) writes and later reads only its own column, so no
// barrier is needed. Saves the L2 re-read of K for every image.
template <class Cfg>
__device__ __forceinline__ void stage_filter(const float* __restrict__ weight, int c0, int C,
                                             float2* filter) {
  constexpr int H = Cfg::H, Wk = Cfg::Wk, CT = Cfg::CT;
  if (threadIdx.x >= Cfg::kColumns) return;
  const int c = threadIdx.x % CT;
  const int k = threadIdx.x / CT;
  for (int h = 0; h < H; ++h) {
    filter[(h * Wk + k) * CT + c] = c0 + c < C ? gate::load_weight(weight, h, k, c0 + c, Wk, C,
                                                                   false)
                                               : make_float2(0.f, 0.f);
  }
}

// Forward along H, gate (K from the block's copy, stage_filter), inverse along H, for thread
// (k, c)'s own column; no barrier.
template <class Cfg>
__device__ __forceinline__ void gate_along_h(float* buffer, const float2* filter, float scale) {
  constexpr int H = Cfg::H, Wk = Cfg::Wk, CT = Cfg::CT;
  if (threadIdx.x >= Cfg::kColumns) return;
  const int c = threadIdx.x % CT;
  const int k = threadIdx.x / CT;
  float2* spectrum = reinterpret_cast<float2*>(buffer);
  float2 col[H];
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) col[h] = spectrum[(h * Wk + k) * CT + c];
  fft_forward<H>(col);
  // Keeps the H loads of K from being hoisted above the FFT, where they would hold 2H more
  // registers through it (and spill).
  SPECTFORMER_COMPILER_FENCE();
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) {
    const float2 kv = filter[(h * Wk + k) * CT + c];
    const float2 y = gate::complex_mul(col[h], kv);
    col[h] = make_float2(y.x * scale, y.y * scale);
  }
  fft_inverse<H>(col);
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) spectrum[(h * Wk + k) * CT + c] = col[h];
}

// Backward for thread (k, c)'s column: X = FFT_H(x column) (kept in x_buffer), D = FFT_H(dy
// column), dK += c_k scale conj(X) D, then the dy column becomes the inverse along H of
// D conj(K) scale. dK[h, k, c] lives at dk[((h Wk + k) dk_stride + c) * 2] (shared memory or
// the block's global partial). No barrier.
template <class Cfg>
__device__ __forceinline__ void grad_along_h(float* x_buffer, float* dy_buffer,
                                             const float* __restrict__ weight, float* dk,
                                             int dk_stride, int c0, int C, float scale) {
  constexpr int H = Cfg::H, W = Cfg::W, Wk = Cfg::Wk, CT = Cfg::CT;
  if (threadIdx.x >= Cfg::kColumns) return;
  const int c = threadIdx.x % CT;
  const int k = threadIdx.x / CT;
  const bool in_range = c0 + c < C;
  float2* x_spectrum = reinterpret_cast<float2*>(x_buffer);
  float2* dy_spectrum = reinterpret_cast<float2*>(dy_buffer);
  float2 col[H];
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) col[h] = x_spectrum[(h * Wk + k) * CT + c];
  fft_forward<H>(col);
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) x_spectrum[(h * Wk + k) * CT + c] = col[h];
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) col[h] = dy_spectrum[(h * Wk + k) * CT + c];
  fft_forward<H>(col);
  const float ck = gate::column_weight(k, W) * scale;
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) {
    if (in_range) {
      const float2 x = x_spectrum[(h * Wk + k) * CT + c];
      const float2 prod = gate::complex_mul(gate::complex_conj(x), col[h]);
      float* g = dk + ((static_cast<int64_t>(h) * Wk + k) * dk_stride + c) * 2;
      g[0] = fmaf(ck, prod.x, g[0]);
      g[1] = fmaf(ck, prod.y, g[1]);
    }
    const float2 kv = in_range ? gate::load_weight(weight, h, k, c0 + c, Wk, C, true)
                               : make_float2(0.f, 0.f);
    const float2 g = gate::complex_mul(col[h], kv);
    col[h] = make_float2(g.x * scale, g.y * scale);
  }
  fft_inverse<H>(col);
SPECTFORMER_UNROLL
  for (int h = 0; h < H; ++h) dy_spectrum[(h * Wk + k) * CT + c] = col[h];
}

// Whether x/dy loads and y/dx stores may use vectors (see load_tile).
struct VectorFlags {
  bool x, dy, out;
};

// grid (channel tiles, batch slots): block (j, i) handles b = i, i + gridDim.y, ...
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) __maxnreg__(Cfg::kMaxRegisters)
    cufftdx_forward_kernel(ScalarType dtype, const void* __restrict__ x, Strides4 xs,
                           const float* __restrict__ weight, void* __restrict__ y,
                           VectorFlags vectors, int64_t B, int C) {
  SPECTFORMER_DYNAMIC_SHARED(float4, shared);
  float* buffer = reinterpret_cast<float*>(shared);
  float2* filter = reinterpret_cast<float2*>(buffer + Cfg::kBufferFloats);
  const int c0 = blockIdx.x * Cfg::CT;
  const float scale = 1.f / static_cast<float>(Cfg::H * Cfg::W);
  stage_filter<Cfg>(weight, c0, C, filter);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    load_tile_as<Cfg>(dtype, x, xs, b, c0, C, vectors.x, buffer);
    __syncthreads();
    forward_along_w<Cfg>(buffer);
    __syncthreads();
    gate_along_h<Cfg>(buffer, filter, scale);
    __syncthreads();
    inverse_along_w<Cfg>(buffer);
    __syncthreads();
    store_tile_as<Cfg>(dtype, buffer, b, c0, C, vectors.out, y);
    __syncthreads();  // the next b's load overwrites the tile
  }
}

// grid (channel tiles, batch chunks): block (j, i) handles b in [i chunk, (i+1) chunk) in order
// and accumulates dK of its channels into partials + i * H * Wk * C * 2 (zeroed here first).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) __maxnreg__(Cfg::kMaxRegisters)
    cufftdx_backward_kernel(ScalarType dtype, const void* __restrict__ grad_y, Strides4 gs,
                            const void* __restrict__ x, Strides4 xs,
                            const float* __restrict__ weight, void* __restrict__ grad_x,
                            float* __restrict__ grad_weight_partials, VectorFlags vectors,
                            int64_t B, int64_t chunk, int C) {
  constexpr int H = Cfg::H, Wk = Cfg::Wk, CT = Cfg::CT;
  SPECTFORMER_DYNAMIC_SHARED(float4, shared);
  float* x_buffer = reinterpret_cast<float*>(shared);
  float* dy_buffer = x_buffer + Cfg::kBufferFloats;
  const int c0 = blockIdx.x * CT;
  const float scale = 1.f / static_cast<float>(H * Cfg::W);
  float* partial = grad_weight_partials + blockIdx.y * (static_cast<int64_t>(H) * Wk * C * 2);
  float* dk = Cfg::dk_in_shared() ? dy_buffer + Cfg::kBufferFloats : partial + 2 * c0;
  const int dk_stride = Cfg::dk_in_shared() ? CT : C;
  // Zero the slots this thread accumulates into (the same thread owns them all along).
  const int own_c = threadIdx.x % CT, own_k = threadIdx.x / CT;
  const bool owns_slots = threadIdx.x < Cfg::kColumns && c0 + own_c < C;
  if (owns_slots) {
    for (int h = 0; h < H; ++h) {
      float* g = dk + ((static_cast<int64_t>(h) * Wk + own_k) * dk_stride + own_c) * 2;
      g[0] = 0.f;
      g[1] = 0.f;
    }
  }
  const int64_t b_end = min(B, (blockIdx.y + 1) * chunk);
  for (int64_t b = blockIdx.y * chunk; b < b_end; ++b) {
    load_tile_as<Cfg>(dtype, x, xs, b, c0, C, vectors.x, x_buffer);
    load_tile_as<Cfg>(dtype, grad_y, gs, b, c0, C, vectors.dy, dy_buffer);
    __syncthreads();
    forward_along_w<Cfg>(x_buffer);
    forward_along_w<Cfg>(dy_buffer);
    __syncthreads();
    grad_along_h<Cfg>(x_buffer, dy_buffer, weight, dk, dk_stride, c0, C, scale);
    __syncthreads();
    inverse_along_w<Cfg>(dy_buffer);
    __syncthreads();
    store_tile_as<Cfg>(dtype, dy_buffer, b, c0, C, vectors.out, grad_x);
    __syncthreads();
  }
  if (Cfg::dk_in_shared() && owns_slots) {  // the thread's own slots: no barrier needed
    for (int h = 0; h < H; ++h) {
      const int64_t hk = static_cast<int64_t>(h) * Wk + own_k;
      partial[(hk * C + c0 + own_c) * 2] = dk[(hk * CT + own_c) * 2];
      partial[(hk * C + c0 + own_c) * 2 + 1] = dk[(hk * CT + own_c) * 2 + 1];
    }
  }
}

// Chunks whose partial a thread of sum_chunks_kernel loads before adding any: one load at a
// time would leave the kernel waiting on DRAM latency.
constexpr int kSumBatch = 8;

// grad_weight[j] = sum over chunks p of partials[p][j], p in order.
__global__ void sum_chunks_kernel(const float* __restrict__ partials, float* __restrict__ out,
                                  int64_t n, int64_t chunks) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int64_t p0 = 0; p0 < chunks; p0 += kSumBatch) {
      // Unconditional loads (past the last chunk: the last chunk again, not added), so the
      // compiler issues them all before the first add.
      float v[kSumBatch];
SPECTFORMER_UNROLL
      for (int u = 0; u < kSumBatch; ++u) v[u] = partials[min(p0 + u, chunks - 1) * n + j];
SPECTFORMER_UNROLL
      for (int u = 0; u < kSumBatch; ++u) {
        if (p0 + u < chunks) acc += v[u];  // in chunk order, as before
      }
    }
    out[j] = acc;
  }
}

// ---- launch helpers --------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

size_t element_bytes(ScalarType dtype) { return dtype == ScalarType::kFloat32 ? 4 : 2; }

// Whether a (B, H, W, C) tensor with these strides can be read in vectors of `width` channels.
bool vectorizable(const void* p, Strides4 st, int64_t C, int width, size_t elem) {
  return st.c == 1 && C % width == 0 && st.w % width == 0 && st.h % width == 0 &&
         st.b % width == 0 && reinterpret_cast<uintptr_t>(p) % (width * elem) == 0;
}

template <class Cfg>
int vector_width_for(ScalarType dtype) {
  return dtype == ScalarType::kFloat32 ? VectorWidth<Cfg, float>::value
                                     : VectorWidth<Cfg, __half>::value;
}

// The forward's spectrum buffer and its copy of K (the same size).
template <class Cfg>
constexpr size_t forward_shared_bytes() { return 2 * Cfg::kBufferFloats * sizeof(float); }
template <class Cfg>
constexpr size_t backward_shared_bytes() {
  return (Cfg::dk_in_shared() ? 3 : 2) * Cfg::kBufferFloats * sizeof(float);
}

// Opts the kernel into its dynamic shared memory and returns how many blocks fit on one SM.
template <typename Kernel>
Status resident_blocks(Kernel* kernel, int threads, size_t shared, int* blocks) {
  SPECTFORMER_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared)));
  SPECTFORMER_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, threads,
                                                                     shared));
  if (*blocks < 1) return "cuFFTDx path: a block does not fit on an SM";
  return Status();
}

// Batch chunks of the backward: enough blocks to fill the device once; a function of the
// shape and the device only, so dK's summation order is reproducible.
struct BackwardPlan {
  int64_t tiles, chunk, chunks;
};

template <class Cfg>
Status backward_plan(const GateShape& s, int num_sms, BackwardPlan* plan) {
  int blocks = 0;
  const Status st = resident_blocks(cufftdx_backward_kernel<Cfg>, Cfg::kThreads,
                                    backward_shared_bytes<Cfg>(), &blocks);
  if (!st.empty()) return st;
  plan->tiles = ceil_div(s.channels, Cfg::CT);
  const int64_t wanted = static_cast<int64_t>(blocks) * num_sms / plan->tiles;  // all resident
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({s.batch, wanted, 65535}));
  plan->chunk = ceil_div(s.batch, chunks);
  plan->chunks = ceil_div(s.batch, plan->chunk);
  return Status();
}

Status check_shape(const GateShape& s) {
  if (!cufftdx_supports(s)) {
    return "cuFFTDx path: no kernel compiled for H=" + std::to_string(s.height) +
           ", W=" + std::to_string(s.width);
  }
  if (s.channels < 1 || s.channels > (int64_t{1} << 30) || s.batch < 0) {
    return "cuFFTDx path needs 1 <= C < 2^30 and B >= 0";
  }
  return Status();
}

}  // namespace

bool cufftdx_supports(const GateShape& s) {
  return with_grid(s.height, s.width, [](auto) {});
}

Status cufftdx_forward(const GateShape& s, ScalarType dtype, const void* x, Strides4 xs,
                       const float* weight, void* y, int num_sms, cudaStream_t stream) {
  Status st = check_shape(s);
  if (!st.empty() || s.batch == 0) return st;
  with_grid(s.height, s.width, [&](auto grid) {
    using Cfg = typename decltype(grid)::Forward;
    int blocks = 0;
    st = resident_blocks(cufftdx_forward_kernel<Cfg>, Cfg::kThreads, forward_shared_bytes<Cfg>(),
                         &blocks);
    if (!st.empty()) return;
    const int64_t tiles = ceil_div(s.channels, Cfg::CT);
    // Rounded down: one more slot than fits would leave its blocks for a second round.
    const int64_t slots = std::max<int64_t>(
        1, std::min<int64_t>({s.batch, static_cast<int64_t>(blocks) * num_sms / tiles, 65535}));
    const int width = vector_width_for<Cfg>(dtype);
    const size_t elem = element_bytes(dtype);
    const Strides4 out{s.height * s.width * s.channels, s.width * s.channels, s.channels, 1};
    const VectorFlags vectors{vectorizable(x, xs, s.channels, width, elem), false,
                              vectorizable(y, out, s.channels, width, elem)};
    SPECTFORMER_LAUNCH(cufftdx_forward_kernel<Cfg>,
                       dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(slots)),
                       Cfg::kThreads, forward_shared_bytes<Cfg>(), stream, dtype, x, xs, weight,
                       y, vectors, s.batch, static_cast<int>(s.channels));
    st = cuda_status(cudaGetLastError(), "launch of cufftdx_forward_kernel");
  });
  return st;
}

Status cufftdx_backward_workspace_bytes(const GateShape& s, int num_sms, size_t* bytes) {
  *bytes = 0;
  Status st = check_shape(s);
  if (!st.empty() || s.batch == 0) return st;
  with_grid(s.height, s.width, [&](auto grid) {
    using Cfg = typename decltype(grid)::Backward;
    BackwardPlan plan;
    st = backward_plan<Cfg>(s, num_sms, &plan);
    if (st.empty() && plan.chunks > 1) {
      *bytes = static_cast<size_t>(plan.chunks) * s.height * s.half_width() * s.channels * 2 *
               sizeof(float);
    }
  });
  return st;
}

Status cufftdx_backward(const GateShape& s, ScalarType dtype, const void* grad_y, Strides4 gs,
                        const void* x, Strides4 xs, const float* weight, void* grad_x,
                        float* grad_weight, void* workspace, size_t workspace_bytes,
                        int num_sms, cudaStream_t stream) {
  Status st = check_shape(s);
  if (!st.empty()) return st;
  const int64_t weight_elems = s.height * s.half_width() * s.channels * 2;
  if (s.batch == 0) {
    SPECTFORMER_CUDA_TRY(cudaMemsetAsync(grad_weight, 0, weight_elems * sizeof(float), stream));
    return Status();
  }
  with_grid(s.height, s.width, [&](auto grid) {
    using Cfg = typename decltype(grid)::Backward;
    BackwardPlan plan;
    st = backward_plan<Cfg>(s, num_sms, &plan);
    if (!st.empty()) return;
    const size_t needed = plan.chunks > 1 ? plan.chunks * weight_elems * sizeof(float) : 0;
    if (needed > 0 && (workspace == nullptr || workspace_bytes < needed)) {
      st = "cuFFTDx backward: workspace of " + std::to_string(workspace_bytes) + " bytes given, " +
           std::to_string(needed) + " needed";
      return;
    }
    float* partials = plan.chunks > 1 ? static_cast<float*>(workspace) : grad_weight;
    const int width = vector_width_for<Cfg>(dtype);
    const size_t elem = element_bytes(dtype);
    const Strides4 out{s.height * s.width * s.channels, s.width * s.channels, s.channels, 1};
    const VectorFlags vectors{vectorizable(x, xs, s.channels, width, elem),
                              vectorizable(grad_y, gs, s.channels, width, elem),
                              vectorizable(grad_x, out, s.channels, width, elem)};
    SPECTFORMER_LAUNCH(cufftdx_backward_kernel<Cfg>,
                       dim3(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.chunks)),
                       Cfg::kThreads, backward_shared_bytes<Cfg>(), stream, dtype, grad_y, gs, x,
                       xs, weight, grad_x, partials, vectors, s.batch, plan.chunk,
                       static_cast<int>(s.channels));
    st = cuda_status(cudaGetLastError(), "launch of cufftdx_backward_kernel");
    if (!st.empty() || plan.chunks == 1) return;
    constexpr int kSumThreads = 256;
    const int blocks =
        static_cast<int>(std::min<int64_t>(ceil_div(weight_elems, kSumThreads), 4096));
    SPECTFORMER_LAUNCH(sum_chunks_kernel, blocks, kSumThreads, 0, stream, partials, grad_weight,
                       weight_elems, plan.chunks);
    st = cuda_status(cudaGetLastError(), "launch of sum_chunks_kernel");
  });
  return st;
}

}  // namespace spectformer

#endif  // SPECTFORMER_HAVE_CUFFTDX
