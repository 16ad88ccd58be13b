// Fully fused spectral gate for small token grids (H, W <= kFusedMaxSize).
//
// One thread block owns one batch element and a block of CB channels. It reads the
// (H, W, CB) tile of x once into shared memory and runs the whole op there in fp32:
//   1. real DFT along W      (H, W) -> (H, Wk) complex       twiddles exp(-2 pi i k w / W)
//   2. complex DFT along H   -> X, then the gate Y = X * K / (H W)
//   3. inverse DFT along H   -> Z
//   4. real inverse along W with CPU irfft semantics: y[w] = sum_k c_k (Re Z cos - Im Z sin),
//      c_k = 1 for the DC and (W even) Nyquist bins, whose Im Z is ignored, 2 otherwise,
// and writes the (H, W, CB) tile of y once. Transforms are unnormalised; the ortho factors
// of both directions are the 1 / (H W) applied with the gate.
//
// The backward runs the same stages on dy (the adjoint of stages 3-4 is the forward DFT
// times c_k, and c_k cancels against the adjoint of stage 4 in dx), so per tile:
//   Dy = DFT(dy), X = DFT(x), dK += c_k / (H W) conj(X) Dy, G = Dy conj(K) / (H W),
//   dx = inverse(G).
// dK is accumulated in shared memory over a fixed chunk of the batch per block, then the
// per-chunk partials are summed in chunk order by a second kernel: deterministic.
//
// Shared-memory layouts (fp32), with cc the channel inside the block, fastest so that the
// threads of a warp touch consecutive words:
//   real tile  [h][w][cc]
//   spectrum   [h][k][part][cc], part 0 = real, 1 = imaginary
#include <algorithm>

#include "common.cuh"
#include "gate_rules.cuh"

namespace spectformer {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChannelBlock = 32;

struct TileDims {
  int H, W, Wk, C, CB;
  int c0, nc;  // first channel of this block, and how many of its CB channels exist
};

struct Twiddles {
  const float* cos_w;  // cos(2 pi j / W), j < W
  const float* sin_w;
  const float* cos_h;  // cos(2 pi j / H), j < H
  const float* sin_h;
};

__device__ __forceinline__ int spec_index(const TileDims& d, int h, int k, int part, int cc) {
  return ((h * d.Wk + k) * 2 + part) * d.CB + cc;
}

// Tables in double then rounded, so sin(pi) and friends are exactly zero.
__device__ void build_twiddles(float* table, int H, int W) {
  for (int j = threadIdx.x; j < W; j += blockDim.x) {
    double s, c;
    sincospi(2.0 * j / W, &s, &c);
    table[j] = static_cast<float>(c);
    table[kFusedMaxSize + j] = static_cast<float>(s);
  }
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    double s, c;
    sincospi(2.0 * j / H, &s, &c);
    table[2 * kFusedMaxSize + j] = static_cast<float>(c);
    table[3 * kFusedMaxSize + j] = static_cast<float>(s);
  }
}

template <typename T>
__device__ void load_tile(const T* __restrict__ src, Strides4 st, int64_t b, const TileDims& d,
                          float* tile) {
  const int n = d.H * d.W * d.CB;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int cc = i % d.CB;
    const int hw = i / d.CB;
    const int w = hw % d.W;
    const int h = hw / d.W;
    float v = 0.f;
    if (cc < d.nc) {
      v = to_float(src[b * st.b + h * st.h + w * st.w + (d.c0 + cc) * st.c]);
    }
    tile[i] = v;
  }
}

// Stage 1: real tile [h][w][cc] -> half spectrum along W.
__device__ void dft_along_w(const float* tile, float* spec, const TileDims& d, Twiddles tw) {
  const int n = d.H * d.Wk * d.CB;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int cc = i % d.CB;
    const int hk = i / d.CB;
    const int k = hk % d.Wk;
    const int h = hk / d.Wk;
    const float* row = tile + h * d.W * d.CB + cc;
    float re = 0.f, im = 0.f;
    int t = 0;  // (k * w) mod W
    for (int w = 0; w < d.W; ++w) {
      const float v = row[w * d.CB];
      re = fmaf(v, tw.cos_w[t], re);
      im = fmaf(-v, tw.sin_w[t], im);
      t += k;
      if (t >= d.W) t -= d.W;
    }
    spec[spec_index(d, h, k, 0, cc)] = re;
    spec[spec_index(d, h, k, 1, cc)] = im;
  }
}

// No-op epilogue for dft_along_h.
struct KeepSpectrum {
  __device__ void operator()(int, int, int, int, float&, float&) const {}
};

// Stages 2 and 3: complex DFT along H, exp(sign * 2 pi i h h' / H), then epilogue(i, h, k,
// cc, re, im) on the result held by the thread that computed it (so the epilogue may read
// and write other per-element buffers at the same index without a barrier).
template <typename Epilogue>
__device__ void dft_along_h(const float* in, float* out, const TileDims& d, Twiddles tw,
                            float sign, Epilogue epilogue) {
  const int n = d.H * d.Wk * d.CB;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int cc = i % d.CB;
    const int hk = i / d.CB;
    const int k = hk % d.Wk;
    const int h = hk / d.Wk;
    float re = 0.f, im = 0.f;
    int t = 0;  // (h * h') mod H
    for (int hp = 0; hp < d.H; ++hp) {
      const float a_re = in[spec_index(d, hp, k, 0, cc)];
      const float a_im = in[spec_index(d, hp, k, 1, cc)];
      const float c = tw.cos_h[t];
      const float s = sign * tw.sin_h[t];
      re = fmaf(c, a_re, fmaf(-s, a_im, re));
      im = fmaf(c, a_im, fmaf(s, a_re, im));
      t += h;
      if (t >= d.H) t -= d.H;
    }
    epilogue(i, h, k, cc, re, im);
    out[spec_index(d, h, k, 0, cc)] = re;
    out[spec_index(d, h, k, 1, cc)] = im;
  }
}

// Stage 4: half spectrum -> real tile of the output, stored straight to global memory.
template <typename T>
__device__ void inverse_along_w_store(const float* spec, T* __restrict__ dst, int64_t b,
                                      const TileDims& d, Twiddles tw) {
  const int n = d.H * d.W * d.CB;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int cc = i % d.CB;
    const int hw = i / d.CB;
    const int w = hw % d.W;
    const int h = hw / d.W;
    float acc = 0.f;
    int t = 0;  // (k * w) mod W
    for (int k = 0; k < d.Wk; ++k) {
      const float z_re = spec[spec_index(d, h, k, 0, cc)];
      if (gate::is_self_conjugate_bin(k, d.W)) {
        acc = fmaf(z_re, tw.cos_w[t], acc);
      } else {
        const float z_im = spec[spec_index(d, h, k, 1, cc)];
        acc = fmaf(2.f, fmaf(z_re, tw.cos_w[t], -z_im * tw.sin_w[t]), acc);
      }
      t += w;
      if (t >= d.W) t -= d.W;
    }
    if (cc < d.nc) {
      dst[((b * d.H + h) * d.W + w) * static_cast<int64_t>(d.C) + d.c0 + cc] =
          from_float<T>(acc);
    }
  }
}

// Y = X * K * scale (K conjugated for the backward).
struct ApplyGate {
  const float* weight;  // (H, Wk, C, 2)
  TileDims d;
  float scale;
  bool conjugate;
  __device__ void operator()(int, int h, int k, int cc, float& re, float& im) const {
    float k_re = 0.f, k_im = 0.f;
    if (cc < d.nc) {
      const float* kp = weight + ((static_cast<int64_t>(h) * d.Wk + k) * d.C + d.c0 + cc) * 2;
      k_re = kp[0];
      k_im = conjugate ? -kp[1] : kp[1];
    }
    const float y_re = (re * k_re - im * k_im) * scale;
    const float y_im = (re * k_im + im * k_re) * scale;
    re = y_re;
    im = y_im;
  }
};

// Backward: accumulate c_k * scale * conj(X) * Dy into dk (same layout as the spectrum),
// then turn Dy into the gated gradient G = Dy * conj(K) * scale.
struct AccumulateGradWeightThenGate {
  const float* x_spec;
  float* dk;
  ApplyGate gate;
  __device__ void operator()(int, int h, int k, int cc, float& re, float& im) const {
    const TileDims& d = gate.d;
    const int i_re = spec_index(d, h, k, 0, cc);
    const int i_im = spec_index(d, h, k, 1, cc);
    const float x_re = x_spec[i_re];
    const float x_im = x_spec[i_im];
    const float ck = spectformer::gate::column_weight(k, d.W) * gate.scale;
    dk[i_re] = fmaf(ck, x_re * re + x_im * im, dk[i_re]);
    dk[i_im] = fmaf(ck, x_re * im - x_im * re, dk[i_im]);
    gate(0, h, k, cc, re, im);
  }
};

__device__ TileDims tile_dims(int H, int W, int C, int CB) {
  TileDims d;
  d.H = H;
  d.W = W;
  d.Wk = W / 2 + 1;
  d.C = C;
  d.CB = CB;
  d.c0 = blockIdx.x * CB;
  d.nc = min(CB, C - d.c0);
  return d;
}

__device__ Twiddles twiddles_in(const float* table) {
  return Twiddles{table, table + kFusedMaxSize, table + 2 * kFusedMaxSize,
                  table + 3 * kFusedMaxSize};
}

// grid: (channel blocks, min(B, 65535)); each block walks b in steps of gridDim.y.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fused_forward_kernel(const T* __restrict__ x, Strides4 xs, const float* __restrict__ weight,
                         T* __restrict__ y, int64_t B, int H, int W, int C, int CB) {
  SPECTFORMER_DYNAMIC_SHARED(float, smem);
  const TileDims d = tile_dims(H, W, C, CB);
  const int spec_elems = d.H * d.Wk * 2 * d.CB;
  float* buf0 = smem + 4 * kFusedMaxSize;
  float* buf1 = buf0 + spec_elems;
  build_twiddles(smem, H, W);
  const Twiddles tw = twiddles_in(smem);
  const ApplyGate gate{weight, d, 1.f / (static_cast<float>(H) * W), false};
  __syncthreads();

  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    load_tile(x, xs, b, d, buf0);
    __syncthreads();
    dft_along_w(buf0, buf1, d, tw);
    __syncthreads();
    dft_along_h(buf1, buf0, d, tw, -1.f, gate);
    __syncthreads();
    dft_along_h(buf0, buf1, d, tw, 1.f, KeepSpectrum{});
    __syncthreads();
    inverse_along_w_store(buf1, y, b, d, tw);
    __syncthreads();  // buf0/buf1 are reused by the next b
  }
}

// grid: (channel blocks, chunks); block (cb, j) handles b in [j * chunk, (j+1) * chunk) and
// writes its dK partial to partials[j] (or straight to grad_weight when there is one chunk).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fused_backward_kernel(const T* __restrict__ grad_y, Strides4 gs, const T* __restrict__ x,
                          Strides4 xs, const float* __restrict__ weight, T* __restrict__ grad_x,
                          float* __restrict__ grad_weight_partials, int64_t B, int64_t chunk,
                          int H, int W, int C, int CB) {
  SPECTFORMER_DYNAMIC_SHARED(float, smem);
  const TileDims d = tile_dims(H, W, C, CB);
  const int spec_elems = d.H * d.Wk * 2 * d.CB;
  float* buf0 = smem + 4 * kFusedMaxSize;
  float* buf1 = buf0 + spec_elems;
  float* x_spec = buf1 + spec_elems;
  float* dk = x_spec + spec_elems;
  build_twiddles(smem, H, W);
  for (int i = threadIdx.x; i < spec_elems; i += blockDim.x) dk[i] = 0.f;
  const Twiddles tw = twiddles_in(smem);
  const AccumulateGradWeightThenGate grad_gate{
      x_spec, dk, ApplyGate{weight, d, 1.f / (static_cast<float>(H) * W), true}};
  __syncthreads();

  const int64_t b_begin = blockIdx.y * chunk;
  const int64_t b_end = min(B, b_begin + chunk);
  for (int64_t b = b_begin; b < b_end; ++b) {
    load_tile(x, xs, b, d, buf0);
    __syncthreads();
    dft_along_w(buf0, buf1, d, tw);
    __syncthreads();
    dft_along_h(buf1, x_spec, d, tw, -1.f, KeepSpectrum{});
    __syncthreads();
    load_tile(grad_y, gs, b, d, buf0);
    __syncthreads();
    dft_along_w(buf0, buf1, d, tw);
    __syncthreads();
    dft_along_h(buf1, buf0, d, tw, -1.f, grad_gate);
    __syncthreads();
    dft_along_h(buf0, buf1, d, tw, 1.f, KeepSpectrum{});
    __syncthreads();
    inverse_along_w_store(buf1, grad_x, b, d, tw);
    __syncthreads();
  }

  // dk [h][k][part][cc] -> partial (H, Wk, C, 2)
  float* out = grad_weight_partials + blockIdx.y * static_cast<int64_t>(d.H) * d.Wk * d.C * 2;
  for (int i = threadIdx.x; i < spec_elems; i += blockDim.x) {
    const int cc = i % d.CB;
    const int part = (i / d.CB) % 2;
    const int hk = i / (2 * d.CB);
    if (cc < d.nc) out[(static_cast<int64_t>(hk) * d.C + d.c0 + cc) * 2 + part] = dk[i];
  }
}

// grad_weight[j] = sum over chunks, in chunk order.
__global__ void sum_partials_kernel(const float* __restrict__ partials, float* __restrict__ out,
                                    int64_t n, int64_t chunks) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int64_t p = 0; p < chunks; ++p) acc += partials[p * n + j];
    out[j] = acc;
  }
}

size_t shared_bytes(const GateShape& s, int CB, int buffers) {
  const size_t spec_elems = static_cast<size_t>(s.height) * s.half_width() * 2 * CB;
  return (4 * kFusedMaxSize + buffers * spec_elems) * sizeof(float);
}

// Largest power-of-two channel block (<= 32, not far past C) whose buffers fit the budget;
// 0 if even one channel does not fit.
int channel_block(const GateShape& s, int buffers, size_t budget) {
  int cb = kMaxChannelBlock;
  while (cb > 1 && cb / 2 >= s.channels) cb /= 2;
  while (cb >= 1 && shared_bytes(s, cb, buffers) > budget) cb /= 2;
  return cb;
}

// Shared-memory budgets: two (forward) or four (backward) spectrum buffers per block,
// kept small enough for two or more resident blocks per SM on Hopper.
constexpr size_t kForwardBudget = 64 * 1024;
constexpr size_t kBackwardBudget = 112 * 1024;
constexpr int kForwardBuffers = 2;
constexpr int kBackwardBuffers = 4;

size_t budget(size_t preferred, int max_shared_bytes) {
  return std::min(preferred, static_cast<size_t>(max_shared_bytes));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct BackwardLaunch {
  int cb;
  int64_t channel_blocks, chunk, chunks;
};

BackwardLaunch backward_launch(const GateShape& s, int num_sms, int max_shared_bytes) {
  BackwardLaunch l;
  l.cb = channel_block(s, kBackwardBuffers, budget(kBackwardBudget, max_shared_bytes));
  l.channel_blocks = l.cb > 0 ? ceil_div(s.channels, l.cb) : 0;
  // Enough chunks of the batch to give every SM about two blocks; depends only on the
  // shape and the device, so the summation order (and dK) is reproducible.
  const int64_t wanted = l.channel_blocks > 0 ? ceil_div(2 * num_sms, l.channel_blocks) : 1;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(s.batch, wanted));
  l.chunk = ceil_div(s.batch, chunks);
  l.chunks = ceil_div(s.batch, l.chunk);
  return l;
}

}  // namespace

bool fused_supports(const GateShape& s) {
  return s.height >= 1 && s.width >= 1 && s.height <= kFusedMaxSize &&
         s.width <= kFusedMaxSize;
}

Status fused_forward(const GateShape& s, ScalarType dtype, const void* x, Strides4 xs,
                     const float* weight, void* y, int max_shared_bytes, cudaStream_t stream) {
  if (!fused_supports(s)) return "fused path needs 1 <= H, W <= 64";
  if (s.batch == 0) return Status();
  const size_t limit = budget(kForwardBudget, max_shared_bytes);
  const int cb = channel_block(s, kForwardBuffers, limit);
  if (cb == 0) return "fused forward: one channel does not fit in shared memory";
  const size_t smem = shared_bytes(s, cb, kForwardBuffers);
  const dim3 grid(static_cast<unsigned>(ceil_div(s.channels, cb)),
                  static_cast<unsigned>(std::min<int64_t>(s.batch, 65535)));
  SPECTFORMER_DISPATCH_DTYPE(dtype, T, [&]() -> Status {
    SPECTFORMER_CUDA_TRY(cudaFuncSetAttribute(fused_forward_kernel<T>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(smem)));
    SPECTFORMER_LAUNCH(fused_forward_kernel<T>, grid, kThreads, smem, stream,
        static_cast<const T*>(x), xs, weight, static_cast<T*>(y), s.batch,
        static_cast<int>(s.height), static_cast<int>(s.width), static_cast<int>(s.channels), cb);
    SPECTFORMER_LAUNCH_CHECK("fused_forward_kernel");
    return Status();
  });
}

size_t fused_backward_workspace_bytes(const GateShape& s, int num_sms, int max_shared_bytes) {
  if (!fused_supports(s) || s.batch == 0) return 0;
  const BackwardLaunch l = backward_launch(s, num_sms, max_shared_bytes);
  if (l.chunks <= 1) return 0;
  return static_cast<size_t>(l.chunks) * s.height * s.half_width() * s.channels * 2 *
         sizeof(float);
}

Status fused_backward(const GateShape& s, ScalarType dtype, const void* grad_y, Strides4 gs,
                      const void* x, Strides4 xs, const float* weight, void* grad_x,
                      float* grad_weight, void* workspace, int num_sms, int max_shared_bytes,
                      cudaStream_t stream) {
  if (!fused_supports(s)) return "fused path needs 1 <= H, W <= 64";
  const int64_t weight_elems = s.height * s.half_width() * s.channels * 2;
  if (s.batch == 0) {
    SPECTFORMER_CUDA_TRY(
        cudaMemsetAsync(grad_weight, 0, weight_elems * sizeof(float), stream));
    return Status();
  }
  const BackwardLaunch l = backward_launch(s, num_sms, max_shared_bytes);
  if (l.cb == 0) return "fused backward: one channel does not fit in shared memory";
  if (l.chunks > 1 && workspace == nullptr) return "fused backward: workspace is missing";
  float* partials = l.chunks > 1 ? static_cast<float*>(workspace) : grad_weight;
  const size_t smem = shared_bytes(s, l.cb, kBackwardBuffers);
  const dim3 grid(static_cast<unsigned>(l.channel_blocks), static_cast<unsigned>(l.chunks));
  const Status launched = [&]() -> Status {
    SPECTFORMER_DISPATCH_DTYPE(dtype, T, [&]() -> Status {
      SPECTFORMER_CUDA_TRY(cudaFuncSetAttribute(fused_backward_kernel<T>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem)));
      SPECTFORMER_LAUNCH(fused_backward_kernel<T>, grid, kThreads, smem, stream,
          static_cast<const T*>(grad_y), gs, static_cast<const T*>(x), xs, weight,
          static_cast<T*>(grad_x), partials, s.batch, l.chunk, static_cast<int>(s.height),
          static_cast<int>(s.width), static_cast<int>(s.channels), l.cb);
      SPECTFORMER_LAUNCH_CHECK("fused_backward_kernel");
      return Status();
    });
  }();
  if (!launched.empty() || l.chunks == 1) return launched;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(weight_elems, kThreads), 4096));
  SPECTFORMER_LAUNCH(sum_partials_kernel, blocks, kThreads, 0, stream, partials, grad_weight,
                     weight_elems, l.chunks);
  SPECTFORMER_LAUNCH_CHECK("sum_partials_kernel");
  return Status();
}

}  // namespace spectformer
