// cuFFT path of the spectral gate, for every token grid the cuFFTDx kernels are not compiled for.
//
// cuFFT's advanced layout has a single batch distance, but the B*C transforms of a
// channels-last (B, H, W, C) tensor sit at offsets b*H*W*C + c: no single distance. So the
// path packs x into fp32 planes (B*C, H, W) with a tiled transpose (which also converts the
// dtype), runs one batched R2C plan, gates the half spectrum in one kernel, runs one batched
// C2R plan and unpacks into the channels-last output:
//   forward   pack(x) -> R2C -> gate -> C2R -> unpack(y)
//   backward  pack(x) -> R2C -> X,  pack(dy) -> R2C -> D,
//             one kernel: dK = c_k/(HW) sum_b conj(X) D (b in order), G = D conj(K)/(HW),
//             C2R(G) -> unpack(dx)
// Transforms are unnormalised; the two ortho factors are the 1/(HW) applied in the gate.
//
// CPU irfft2 semantics: the inverse along W ignores the imaginary parts of the DC and (W
// even) Nyquist columns *after* the inverse along H. For those columns, Re(ifft_H(Y)) is
// the ifft_H of the Hermitian part (Y[h] + conj(Y[-h])) / 2, so the gate writes that part:
// the C2R input is then exactly Hermitian where it must be, and any correct C2R (cuFFT's
// included, whatever it does with non-Hermitian input) returns the CPU result.
#ifdef SPECTFORMER_HOST_EMULATION
#include "emulation/host_cufft.h"  // CPU model of these cuFFT calls for the no-GPU tests
#else
#include <cufft.h>
#endif

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "gate_rules.cuh"
#include "plan_cache.h"

#ifndef SPECTFORMER_CUFFT_LTO_CALLBACKS
#define SPECTFORMER_CUFFT_LTO_CALLBACKS 0
#endif
// With SPECTFORMER_CUFFT_LTO_CALLBACKS (set by setup.py when the toolkit can build them) the
// pack, gate and unpack passes move into cuFFT as LTO callbacks (cufft_callbacks.cu); the
// kernel path below stays as the fallback wherever callback plans cannot be made.
#if SPECTFORMER_CUFFT_LTO_CALLBACKS
#ifndef SPECTFORMER_HOST_EMULATION
#include <cufftXt.h>
#endif

#include "cufft_callbacks.h"
#include "spectformer_cufft_callbacks_fatbin.h"  // generated at build time: the LTO-IR fatbin
#endif

namespace spectformer {
namespace {

const char* cufft_result_name(cufftResult r) {
  switch (r) {
    case CUFFT_SUCCESS: return "CUFFT_SUCCESS";
    case CUFFT_INVALID_PLAN: return "CUFFT_INVALID_PLAN";
    case CUFFT_ALLOC_FAILED: return "CUFFT_ALLOC_FAILED";
    case CUFFT_INVALID_TYPE: return "CUFFT_INVALID_TYPE";
    case CUFFT_INVALID_VALUE: return "CUFFT_INVALID_VALUE";
    case CUFFT_INTERNAL_ERROR: return "CUFFT_INTERNAL_ERROR";
    case CUFFT_EXEC_FAILED: return "CUFFT_EXEC_FAILED";
    case CUFFT_SETUP_FAILED: return "CUFFT_SETUP_FAILED";
    case CUFFT_INVALID_SIZE: return "CUFFT_INVALID_SIZE";
    case CUFFT_UNALIGNED_DATA: return "CUFFT_UNALIGNED_DATA";
    case CUFFT_INVALID_DEVICE: return "CUFFT_INVALID_DEVICE";
    case CUFFT_NO_WORKSPACE: return "CUFFT_NO_WORKSPACE";
    case CUFFT_NOT_IMPLEMENTED: return "CUFFT_NOT_IMPLEMENTED";
    case CUFFT_NOT_SUPPORTED: return "CUFFT_NOT_SUPPORTED";
    default: return "unknown cufftResult";
  }
}

#define SPECTFORMER_CUFFT_TRY(call)                                                    \
  do {                                                                                 \
    const cufftResult result_ = (call);                                                \
    if (result_ != CUFFT_SUCCESS) {                                                    \
      return ::spectformer::Status(#call " failed: ") + cufft_result_name(result_) +   \
             " (" + std::to_string(static_cast<int>(result_)) + ")";                   \
    }                                                                                  \
  } while (0)

#define SPECTFORMER_RETURN_IF_ERROR(expr) \
  do {                                    \
    ::spectformer::Status status_ = (expr); \
    if (!status_.empty()) return status_; \
  } while (0)

constexpr int kTile = 32;      // transpose tile edge
constexpr int kTileRows = 8;   // threads per tile column: (32, 8) blocks
constexpr int kThreads = 256;  // elementwise kernels

// planes[(b*C + c)*HW + p] = x[b, p / W, p % W, c] for one b per grid.z slice: a
// (HW, C) -> (C, HW) transpose through a padded shared tile, converting to fp32.
template <typename T>
__global__ void pack_kernel(const T* __restrict__ x, Strides4 xs, float* __restrict__ planes,
                            int64_t B, int H, int W, int C) {
  __shared__ float tile[kTile][kTile + 1];
  const int HW = H * W;
  const int c_base = blockIdx.x * kTile;
  const int p_base = blockIdx.y * kTile;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    for (int r = threadIdx.y; r < kTile; r += kTileRows) {
      const int p = p_base + r;
      const int c = c_base + threadIdx.x;
      if (p < HW && c < C) {
        tile[r][threadIdx.x] = to_float(x[b * xs.b + (p / W) * xs.h + (p % W) * xs.w + c * xs.c]);
      }
    }
    __syncthreads();
    for (int r = threadIdx.y; r < kTile; r += kTileRows) {
      const int c = c_base + r;
      const int p = p_base + threadIdx.x;
      if (p < HW && c < C) planes[(b * C + c) * HW + p] = tile[threadIdx.x][r];
    }
    __syncthreads();
  }
}

// out[b, p, c] (contiguous channels-last) = planes[(b*C + c)*HW + p], converted to T.
template <typename T>
__global__ void unpack_kernel(const float* __restrict__ planes, T* __restrict__ out, int64_t B,
                              int HW, int C) {
  __shared__ float tile[kTile][kTile + 1];
  const int c_base = blockIdx.x * kTile;
  const int p_base = blockIdx.y * kTile;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    for (int r = threadIdx.y; r < kTile; r += kTileRows) {
      const int c = c_base + r;
      const int p = p_base + threadIdx.x;
      if (p < HW && c < C) tile[r][threadIdx.x] = planes[(b * C + c) * HW + p];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < kTile; r += kTileRows) {
      const int p = p_base + r;
      const int c = c_base + threadIdx.x;
      if (p < HW && c < C) out[(b * HW + p) * C + c] = from_float<T>(tile[threadIdx.x][r]);
    }
    __syncthreads();
  }
}

// out[h, k] = spec[h, k] * K[h, k] * scale for one (b, c) plane of the half spectrum
// (H, Wk), with the DC/Nyquist columns replaced by their Hermitian part along H.
__device__ __forceinline__ float2 gated_bin(const float2* plane, const float* weight, int h,
                                            int k, int c, int H, int W, int C, float scale,
                                            bool conjugate) {
  const int Wk = W / 2 + 1;
  float2 v = gate::complex_mul(plane[h * Wk + k], gate::load_weight(weight, h, k, c, Wk, C, conjugate));
  if (gate::is_self_conjugate_bin(k, W)) {
    const int hn = gate::mirror_row(h, H);
    v = gate::hermitian_part(
        v, gate::complex_mul(plane[hn * Wk + k], gate::load_weight(weight, hn, k, c, Wk, C, conjugate)));
  }
  return make_float2(v.x * scale, v.y * scale);
}

// One thread per spectrum bin of all B*C planes.
__global__ void gate_forward_kernel(const float2* __restrict__ spec, const float* __restrict__ weight,
                                    float2* __restrict__ out, int64_t planes, int H, int W, int C,
                                    float scale) {
  const int Wk = W / 2 + 1;
  const int64_t per_plane = static_cast<int64_t>(H) * Wk;
  const int64_t n = planes * per_plane;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t plane = i / per_plane;
    const int hk = static_cast<int>(i - plane * per_plane);
    const int h = hk / Wk;
    const int k = hk % Wk;
    const int c = static_cast<int>(plane % C);
    out[i] = gated_bin(spec + plane * per_plane, weight, h, k, c, H, W, C, scale, false);
  }
}

// One thread per (c, h, k), walking b in order: dK[h, k, c] and G for every b.
// out may alias x_spec (not restrict-qualified for that reason).
__global__ void gate_backward_kernel(const float2* x_spec, const float2* __restrict__ dy_spec,
                                     const float* __restrict__ weight, float2* out,
                                     float* __restrict__ grad_weight, int64_t B, int H, int W,
                                     int C, float scale) {
  const int Wk = W / 2 + 1;
  const int64_t per_plane = static_cast<int64_t>(H) * Wk;
  const int64_t n = per_plane * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i / per_plane);
    const int hk = static_cast<int>(i - c * per_plane);
    const int h = hk / Wk;
    const int k = hk % Wk;
    float2 acc = make_float2(0.f, 0.f);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t plane = (b * C + c) * per_plane;
      const float2 prod = gate::complex_mul(gate::complex_conj(x_spec[plane + hk]), dy_spec[plane + hk]);
      acc.x += prod.x;
      acc.y += prod.y;
      out[plane + hk] = gated_bin(dy_spec + plane, weight, h, k, c, H, W, C, scale, true);
    }
    const float ck = gate::column_weight(k, W) * scale;
    float* g = grad_weight + ((static_cast<int64_t>(h) * Wk + k) * C + c) * 2;
    g[0] = ck * acc.x;
    g[1] = ck * acc.y;
  }
}

// ---- plans ----------------------------------------------------------------------------

// One R2C and one C2R plan for B*C planes of (H, W), without their own work area (the
// caller passes one from its allocator). exec_mutex serialises set-stream/set-work-area/exec
// on the plan, which cuFFT requires when host threads share a plan.
struct PlanPair {
  cufftHandle r2c = 0, c2r = 0;
  bool has_r2c = false, has_c2r = false;
  size_t work_bytes = 0;
  std::mutex exec_mutex;
  ~PlanPair() {
    // Destroying a plan while the process exits may find the driver gone; nothing to report.
    if (has_r2c) cufftDestroy(r2c);
    if (has_c2r) cufftDestroy(c2r);
  }
};

// device, planes (B*C), H, W. The plans work in fp32 whatever the dtype (the pack and unpack
// kernels convert), and the stream is set at each execution, so one entry serves every
// stream and dtype.
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t>;

std::mutex cache_mutex;
PlanCache<PlanKey, PlanPair>& plan_cache() {
  static auto* cache = new PlanCache<PlanKey, PlanPair>(kMaxCachedPlans);
  return *cache;
}

Status make_plan(cufftHandle* plan, bool* created, cufftType type, int64_t planes, int64_t H,
                 int64_t W, size_t* work_bytes) {
  SPECTFORMER_CUFFT_TRY(cufftCreate(plan));
  *created = true;
  SPECTFORMER_CUFFT_TRY(cufftSetAutoAllocation(*plan, 0));
  long long n[2] = {H, W};
  SPECTFORMER_CUFFT_TRY(cufftMakePlanMany64(*plan, 2, n, nullptr, 1, 0, nullptr, 1, 0, type,
                                            planes, work_bytes));
  return Status();
}

std::string shape_words(int64_t planes, int64_t H, int64_t W) {
  return "H=" + std::to_string(H) + ", W=" + std::to_string(W) + ", B*C=" + std::to_string(planes);
}

// Evicted plans may still be read by queued kernels: let the device finish first.
void finish_device_work() { cudaDeviceSynchronize(); }

// The cached plans for this shape on the current device, created on first use outside graph
// capture. A failure is returned, never cached: the next call tries again.
Status get_plans(int64_t planes, int64_t H, int64_t W, cudaStream_t stream,
                 std::shared_ptr<PlanPair>* out) {
  int device = 0;
  SPECTFORMER_CUDA_TRY(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(cache_mutex);
  const PlanKey key{device, planes, H, W};
  *out = plan_cache().find(key);
  if (*out) return Status();
  bool capturing = false;
  SPECTFORMER_RETURN_IF_ERROR(stream_is_capturing(stream, &capturing));
  if (capturing) return no_plans_during_capture(shape_words(planes, H, W));
  auto plans = std::make_shared<PlanPair>();
  size_t r2c_bytes = 0, c2r_bytes = 0;
  Status s = make_plan(&plans->r2c, &plans->has_r2c, CUFFT_R2C, planes, H, W, &r2c_bytes);
  if (s.empty()) s = make_plan(&plans->c2r, &plans->has_c2r, CUFFT_C2R, planes, H, W, &c2r_bytes);
  if (!s.empty()) return "creating the cuFFT plans for " + shape_words(planes, H, W) + ": " + s;
  plans->work_bytes = std::max(r2c_bytes, c2r_bytes);
  plan_cache().insert(key, plans, finish_device_work);
  *out = plans;
  return Status();
}

Status exec_r2c(PlanPair* plans, float* in, float2* out, void* work, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(plans->exec_mutex);
  SPECTFORMER_CUFFT_TRY(cufftSetStream(plans->r2c, stream));
  SPECTFORMER_CUFFT_TRY(cufftSetWorkArea(plans->r2c, work));
  SPECTFORMER_CUFFT_TRY(cufftExecR2C(plans->r2c, in, reinterpret_cast<cufftComplex*>(out)));
  return Status();
}

// Note: an out-of-place multi-dimensional C2R overwrites its input.
Status exec_c2r(PlanPair* plans, float2* in, float* out, void* work, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(plans->exec_mutex);
  SPECTFORMER_CUFFT_TRY(cufftSetStream(plans->c2r, stream));
  SPECTFORMER_CUFFT_TRY(cufftSetWorkArea(plans->c2r, work));
  SPECTFORMER_CUFFT_TRY(cufftExecC2R(plans->c2r, reinterpret_cast<cufftComplex*>(in), out));
  return Status();
}

// ---- scratch layout -----------------------------------------------------------------------

constexpr size_t kAlign = 256;
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

struct Scratch {
  float* planes;    // (B*C, H, W) fp32
  float2* spec_a;   // (B*C, H, Wk) complex
  float2* spec_b;   // (B*C, H, Wk) complex
  void* work;       // cuFFT work area
};

size_t planes_bytes(const GateShape& s) {
  return aligned(static_cast<size_t>(s.batch * s.channels * s.height * s.width) * sizeof(float));
}
size_t spec_bytes(const GateShape& s) {
  return aligned(static_cast<size_t>(s.batch * s.channels * s.height * s.half_width()) *
                 sizeof(float2));
}

// Both directions use planes + two spectra + the work area.
size_t scratch_bytes(const GateShape& s, size_t work_bytes) {
  return planes_bytes(s) + 2 * spec_bytes(s) + aligned(work_bytes);
}

Scratch carve(const GateShape& s, void* workspace) {
  char* p = static_cast<char*>(workspace);
  Scratch sc;
  sc.planes = reinterpret_cast<float*>(p);
  p += planes_bytes(s);
  sc.spec_a = reinterpret_cast<float2*>(p);
  p += spec_bytes(s);
  sc.spec_b = reinterpret_cast<float2*>(p);
  p += spec_bytes(s);
  sc.work = p;
  return sc;
}

Status validate_workspace(const GateShape& s, size_t work_bytes, void* workspace, size_t bytes) {
  const size_t needed = scratch_bytes(s, work_bytes);
  if (workspace == nullptr || bytes < needed) {
    return "cuFFT path: workspace of " + std::to_string(bytes) + " bytes given, " +
           std::to_string(needed) + " needed";
  }
  if (reinterpret_cast<uintptr_t>(workspace) % kAlign != 0) {
    return "cuFFT path: workspace must be 256-byte aligned";
  }
  return Status();
}

dim3 transpose_grid(const GateShape& s) {
  const int64_t hw = s.height * s.width;
  return dim3(static_cast<unsigned>((s.channels + kTile - 1) / kTile),
              static_cast<unsigned>((hw + kTile - 1) / kTile),
              static_cast<unsigned>(std::min<int64_t>(s.batch, 65535)));
}

unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)));
}

template <typename T>
Status pack(const GateShape& s, const void* src, Strides4 st, float* planes, cudaStream_t stream) {
  SPECTFORMER_LAUNCH(pack_kernel<T>, transpose_grid(s), dim3(kTile, kTileRows), 0, stream,
      static_cast<const T*>(src), st, planes, s.batch, static_cast<int>(s.height),
      static_cast<int>(s.width), static_cast<int>(s.channels));
  SPECTFORMER_LAUNCH_CHECK("pack_kernel");
  return Status();
}

template <typename T>
Status unpack(const GateShape& s, const float* planes, void* dst, cudaStream_t stream) {
  SPECTFORMER_LAUNCH(unpack_kernel<T>, transpose_grid(s), dim3(kTile, kTileRows), 0, stream,
      planes, static_cast<T*>(dst), s.batch, static_cast<int>(s.height * s.width),
      static_cast<int>(s.channels));
  SPECTFORMER_LAUNCH_CHECK("unpack_kernel");
  return Status();
}

// Shapes the int32 indexing inside one plane / one weight row can take.
Status check_sizes(const GateShape& s) {
  if (s.height < 1 || s.width < 1 || s.channels < 1 || s.batch < 0) {
    return "cuFFT path needs H, W, C >= 1 and B >= 0";
  }
  if (s.height * s.width > (int64_t{1} << 30) || s.channels > (int64_t{1} << 30)) {
    return "cuFFT path: H*W and C must each be below 2^30";
  }
  return Status();
}


// ---- cuFFT LTO callback plans ------------------------------------------------------------

#if SPECTFORMER_CUFFT_LTO_CALLBACKS

// Callback plans bake in callerInfo (a parameter block rewritten before each exec on the
// caller's stream) and the dtype's load/store callbacks, so they are cached per device,
// stream, shape and dtype. Three plans: R2C with load + gate store (forward), R2C with load
// only (backward: X and D stay raw for dK), C2R with the real store (both directions).
enum CallbackPlanIndex { kR2CGate = 0, kR2CLoad = 1, kC2RStore = 2, kCallbackPlans = 3 };

struct CallbackPlans {
  cufftHandle plan[kCallbackPlans] = {};
  bool created[kCallbackPlans] = {};
  CallbackParams* params = nullptr;    // device memory, one block per plan
  void* caller_info[kCallbackPlans] = {};  // stable storage for the pointers cuFFT is given
  size_t work_bytes = 0;
  std::mutex exec_mutex;
  ~CallbackPlans() {
    for (int i = 0; i < kCallbackPlans; ++i) {
      if (created[i]) cufftDestroy(plan[i]);
    }
    if (params) cudaFree(params);
  }
};

// device, stream, planes, H, W, dtype: a plan's parameter block is rewritten in stream order
// before each exec, which is only safe for execs on one stream.
using CallbackKey = std::tuple<int, uintptr_t, int64_t, int64_t, int64_t, int>;
// device, planes, H, W, dtype: where callback plans could not be linked at all.
using CallbackShapeKey = std::tuple<int, int64_t, int64_t, int64_t, int>;

std::mutex callback_cache_mutex;
std::string first_callback_failure;  // guarded by callback_cache_mutex
PlanCache<CallbackKey, CallbackPlans>& callback_plan_cache() {
  static auto* cache = new PlanCache<CallbackKey, CallbackPlans>(kMaxCachedPlans);
  return *cache;
}
// Shapes whose callback plans failed for a lasting reason (cuFFT could not link the
// callbacks), so the gate-kernel path is used without retrying; allocation failures are not
// recorded here and are retried on the next call.
std::map<CallbackShapeKey, std::string>& callbacks_unavailable() {
  static auto* failures = new std::map<CallbackShapeKey, std::string>();
  return *failures;
}

bool is_transient_failure(const Status& s) {
  return s.find("ALLOC_FAILED") != std::string::npos ||
         s.find("cudaErrorMemoryAllocation") != std::string::npos;
}

// SPECTFORMER_CUFFT_CALLBACKS=0 at run time forces the kernel path (for comparisons).
bool callbacks_disabled_by_env() {
  const char* v = std::getenv("SPECTFORMER_CUFFT_CALLBACKS");
  return v != nullptr && v[0] == '0' && v[1] == '\0';
}

const char* load_callback_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::kBFloat16: return kLoadRealBF16;
    case ScalarType::kFloat16: return kLoadRealF16;
    default: return kLoadRealF32;
  }
}

const char* store_callback_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::kBFloat16: return kStoreRealBF16;
    case ScalarType::kFloat16: return kStoreRealF16;
    default: return kStoreRealF32;
  }
}

Status set_jit_callback(cufftHandle plan, const char* name, cufftXtCallbackType type,
                        void** caller_info) {
  SPECTFORMER_CUFFT_TRY(cufftXtSetJITCallback(plan, name, kCufftCallbacksFatbin,
                                              sizeof(kCufftCallbacksFatbin), type, caller_info));
  return Status();
}

// Callbacks must be attached after cufftCreate and before the planning call.
Status make_callback_plans(CallbackPlans* p, ScalarType dtype, int64_t planes, int64_t H,
                           int64_t W) {
  const cudaError_t allocated = cudaMalloc(&p->params, kCallbackPlans * sizeof(CallbackParams));
  if (allocated != cudaSuccess) {
    cudaGetLastError();  // clears exactly this (non-sticky) allocation error
    return cuda_status(allocated, "cudaMalloc of the callback parameter blocks");
  }
  for (int i = 0; i < kCallbackPlans; ++i) {
    SPECTFORMER_CUFFT_TRY(cufftCreate(&p->plan[i]));
    p->created[i] = true;
    SPECTFORMER_CUFFT_TRY(cufftSetAutoAllocation(p->plan[i], 0));
    p->caller_info[i] = p->params + i;
    void** info = &p->caller_info[i];
    if (i == kR2CGate || i == kR2CLoad) {
      SPECTFORMER_RETURN_IF_ERROR(
          set_jit_callback(p->plan[i], load_callback_name(dtype), CUFFT_CB_LD_REAL, info));
    }
    if (i == kR2CGate) {
      SPECTFORMER_RETURN_IF_ERROR(
          set_jit_callback(p->plan[i], kStoreGate, CUFFT_CB_ST_COMPLEX, info));
    }
    if (i == kC2RStore) {
      SPECTFORMER_RETURN_IF_ERROR(
          set_jit_callback(p->plan[i], store_callback_name(dtype), CUFFT_CB_ST_REAL, info));
    }
    long long n[2] = {H, W};
    size_t work = 0;
    SPECTFORMER_CUFFT_TRY(cufftMakePlanMany64(p->plan[i], 2, n, nullptr, 1, 0, nullptr, 1, 0,
                                              i == kC2RStore ? CUFFT_C2R : CUFFT_R2C, planes,
                                              &work));
    p->work_bytes = std::max(p->work_bytes, work);
  }
  return Status();
}

// The callback plans for this call in *out, or null where they are disabled, cannot be made
// here (e.g. no nvJitLink at run time, or a driver too old for the embedded LTO-IR), or
// would have to be made during graph capture: the caller then uses the gate-kernel path.
// Errors that are not about callbacks (a pending error from earlier work) are returned.
Status get_callback_plans(const GateShape& s, ScalarType dtype, cudaStream_t stream,
                          std::shared_ptr<CallbackPlans>* out) {
  *out = nullptr;
  if (callbacks_disabled_by_env()) return Status();
  int device = 0;
  SPECTFORMER_CUDA_TRY(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(callback_cache_mutex);
  const int64_t planes = s.batch * s.channels;
  const CallbackKey key{device, reinterpret_cast<uintptr_t>(stream), planes, s.height, s.width,
                        static_cast<int>(dtype)};
  *out = callback_plan_cache().find(key);
  if (*out) return Status();
  const CallbackShapeKey shape_key{device, planes, s.height, s.width, static_cast<int>(dtype)};
  if (callbacks_unavailable().count(shape_key)) return Status();
  bool capturing = false;
  SPECTFORMER_RETURN_IF_ERROR(stream_is_capturing(stream, &capturing));
  if (capturing) return Status();
  // A pending error would make the plan calls fail for a reason unrelated to callbacks.
  SPECTFORMER_CUDA_TRY(cudaPeekAtLastError());
  auto plans = std::make_shared<CallbackPlans>();
  const Status made = make_callback_plans(plans.get(), dtype, planes, s.height, s.width);
  if (!made.empty()) {
    if (first_callback_failure.empty()) first_callback_failure = made;
    if (!is_transient_failure(made)) callbacks_unavailable()[shape_key] = made;
    return Status();
  }
  callback_plan_cache().insert(key, plans, finish_device_work);
  *out = plans;
  return Status();
}

__global__ void set_callback_params_kernel(CallbackParams* dst, CallbackParams value) {
  *dst = value;
}

// Rewrites plan i's parameter block, then runs it; both on `stream`, so an earlier exec of
// the same plan has finished reading the block before it changes.
Status exec_with_callbacks(CallbackPlans* p, int i, const CallbackParams& params, void* in,
                           void* out, void* work, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(p->exec_mutex);
  SPECTFORMER_LAUNCH(set_callback_params_kernel, 1, 1, 0, stream, p->params + i, params);
  SPECTFORMER_LAUNCH_CHECK("set_callback_params_kernel");
  SPECTFORMER_CUFFT_TRY(cufftSetStream(p->plan[i], stream));
  SPECTFORMER_CUFFT_TRY(cufftSetWorkArea(p->plan[i], work));
  if (i == kC2RStore) {
    SPECTFORMER_CUFFT_TRY(cufftExecC2R(p->plan[i], static_cast<cufftComplex*>(in),
                                       static_cast<cufftReal*>(out)));
  } else {
    SPECTFORMER_CUFFT_TRY(cufftExecR2C(p->plan[i], static_cast<cufftReal*>(in),
                                       static_cast<cufftComplex*>(out)));
  }
  return Status();
}

CallbackParams callback_params(const GateShape& s, const void* src, Strides4 src_strides,
                               void* dst, const float* weight) {
  CallbackParams p;
  p.src = src;
  p.src_strides = src_strides;
  p.dst = dst;
  p.weight = weight;
  p.H = static_cast<int>(s.height);
  p.W = static_cast<int>(s.width);
  p.C = static_cast<int>(s.channels);
  p.scale = 1.f / static_cast<float>(s.height * s.width);
  return p;
}

// x -> R2C (load: read and cast x; store: gate) -> C2R (store: cast and write y). cuFFT's
// own input and output pointers are scratch it may use; the callbacks do the real I/O.
Status forward_with_callbacks(CallbackPlans* p, const GateShape& s, const void* x, Strides4 xs,
                              const float* weight, void* y, const Scratch& sc,
                              cudaStream_t stream) {
  const Strides4 none{0, 0, 0, 0};
  SPECTFORMER_RETURN_IF_ERROR(exec_with_callbacks(p, kR2CGate,
                                                  callback_params(s, x, xs, nullptr, weight),
                                                  sc.planes, sc.spec_a, sc.work, stream));
  return exec_with_callbacks(p, kC2RStore, callback_params(s, nullptr, none, y, nullptr),
                             sc.spec_a, sc.planes, sc.work, stream);
}

Status backward_with_callbacks(CallbackPlans* p, const GateShape& s, const void* grad_y,
                               Strides4 gs, const void* x, Strides4 xs, const float* weight,
                               void* grad_x, float* grad_weight, const Scratch& sc,
                               cudaStream_t stream) {
  const Strides4 none{0, 0, 0, 0};
  SPECTFORMER_RETURN_IF_ERROR(exec_with_callbacks(p, kR2CLoad,
                                                  callback_params(s, x, xs, nullptr, nullptr),
                                                  sc.planes, sc.spec_a, sc.work, stream));
  SPECTFORMER_RETURN_IF_ERROR(exec_with_callbacks(p, kR2CLoad,
                                                  callback_params(s, grad_y, gs, nullptr, nullptr),
                                                  sc.planes, sc.spec_b, sc.work, stream));
  const int64_t weight_bins = s.channels * s.height * s.half_width();
  SPECTFORMER_LAUNCH(gate_backward_kernel, elementwise_blocks(weight_bins), kThreads, 0, stream,
      sc.spec_a, sc.spec_b, weight, sc.spec_a, grad_weight, s.batch, static_cast<int>(s.height),
      static_cast<int>(s.width), static_cast<int>(s.channels),
      1.f / static_cast<float>(s.height * s.width));
  SPECTFORMER_LAUNCH_CHECK("gate_backward_kernel");
  return exec_with_callbacks(p, kC2RStore, callback_params(s, nullptr, none, grad_x, nullptr),
                             sc.spec_a, sc.planes, sc.work, stream);
}

#endif  // SPECTFORMER_CUFFT_LTO_CALLBACKS

// The plans one call runs on: the callback plans where they can be made (cb), else the
// plain pair (plain); and, once a call carves its workspace, that workspace (sc).
struct CallPlans {
#if SPECTFORMER_CUFFT_LTO_CALLBACKS
  std::shared_ptr<CallbackPlans> cb;
#endif
  std::shared_ptr<PlanPair> plain;
  Scratch sc{};
};

// Picks (creating on first use) the plans a call of this shape runs on, and their
// work-area bytes.
Status select_plans(const GateShape& s, ScalarType dtype, cudaStream_t stream, CallPlans* call,
                    size_t* work_bytes) {
#if SPECTFORMER_CUFFT_LTO_CALLBACKS
  SPECTFORMER_RETURN_IF_ERROR(get_callback_plans(s, dtype, stream, &call->cb));
  if (call->cb) {
    *work_bytes = call->cb->work_bytes;
    return Status();
  }
#else
  (void)dtype;
#endif
  SPECTFORMER_RETURN_IF_ERROR(
      get_plans(s.batch * s.channels, s.height, s.width, stream, &call->plain));
  *work_bytes = call->plain->work_bytes;
  return Status();
}

// Work-area bytes of the plans this call will use, creating them on first use.
Status plan_work_bytes(const GateShape& s, ScalarType dtype, cudaStream_t stream,
                       size_t* work_bytes) {
  CallPlans call;
  SPECTFORMER_RETURN_IF_ERROR(select_plans(s, dtype, stream, &call, work_bytes));
#if SPECTFORMER_CUFFT_LTO_CALLBACKS
  if (call.cb) {
    // Outside capture, also make the plain plans: a later capture on another stream (whose
    // callback plans cannot be made then) runs the gate-kernel path on them.
    bool capturing = false;
    SPECTFORMER_RETURN_IF_ERROR(stream_is_capturing(stream, &capturing));
    if (!capturing) {
      SPECTFORMER_RETURN_IF_ERROR(
          get_plans(s.batch * s.channels, s.height, s.width, stream, &call.plain));
    }
  }
#endif
  return Status();
}

// The call's plans, with its workspace checked and carved.
Status plans_for_call(const GateShape& s, ScalarType dtype, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream, CallPlans* call) {
  size_t work_bytes = 0;
  SPECTFORMER_RETURN_IF_ERROR(select_plans(s, dtype, stream, call, &work_bytes));
  SPECTFORMER_RETURN_IF_ERROR(validate_workspace(s, work_bytes, workspace, workspace_bytes));
  call->sc = carve(s, workspace);
  return Status();
}

template <typename T>
Status forward_impl(const GateShape& s, ScalarType dtype, const void* x, Strides4 xs,
                    const float* weight, void* y, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream) {
  CallPlans call;
  SPECTFORMER_RETURN_IF_ERROR(plans_for_call(s, dtype, workspace, workspace_bytes, stream, &call));
#if SPECTFORMER_CUFFT_LTO_CALLBACKS
  if (call.cb) return forward_with_callbacks(call.cb.get(), s, x, xs, weight, y, call.sc, stream);
#endif
  PlanPair* plans = call.plain.get();
  const Scratch& sc = call.sc;
  const int64_t bins = s.batch * s.channels * s.height * s.half_width();
  const float scale = 1.f / static_cast<float>(s.height * s.width);

  SPECTFORMER_RETURN_IF_ERROR(pack<T>(s, x, xs, sc.planes, stream));
  SPECTFORMER_RETURN_IF_ERROR(exec_r2c(plans, sc.planes, sc.spec_a, sc.work, stream));
  SPECTFORMER_LAUNCH(gate_forward_kernel, elementwise_blocks(bins), kThreads, 0, stream,
      sc.spec_a, weight, sc.spec_b, s.batch * s.channels, static_cast<int>(s.height),
      static_cast<int>(s.width), static_cast<int>(s.channels), scale);
  SPECTFORMER_LAUNCH_CHECK("gate_forward_kernel");
  SPECTFORMER_RETURN_IF_ERROR(exec_c2r(plans, sc.spec_b, sc.planes, sc.work, stream));
  return unpack<T>(s, sc.planes, y, stream);
}

template <typename T>
Status backward_impl(const GateShape& s, ScalarType dtype, const void* grad_y, Strides4 gs,
                     const void* x, Strides4 xs, const float* weight, void* grad_x,
                     float* grad_weight, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  CallPlans call;
  SPECTFORMER_RETURN_IF_ERROR(plans_for_call(s, dtype, workspace, workspace_bytes, stream, &call));
#if SPECTFORMER_CUFFT_LTO_CALLBACKS
  if (call.cb) {
    return backward_with_callbacks(call.cb.get(), s, grad_y, gs, x, xs, weight, grad_x,
                                   grad_weight, call.sc, stream);
  }
#endif
  PlanPair* plans = call.plain.get();
  const Scratch& sc = call.sc;
  const int64_t weight_bins = s.channels * s.height * s.half_width();
  const float scale = 1.f / static_cast<float>(s.height * s.width);

  SPECTFORMER_RETURN_IF_ERROR(pack<T>(s, x, xs, sc.planes, stream));
  SPECTFORMER_RETURN_IF_ERROR(exec_r2c(plans, sc.planes, sc.spec_a, sc.work, stream));
  SPECTFORMER_RETURN_IF_ERROR(pack<T>(s, grad_y, gs, sc.planes, stream));
  SPECTFORMER_RETURN_IF_ERROR(exec_r2c(plans, sc.planes, sc.spec_b, sc.work, stream));
  // G overwrites X in place: each bin of X is read (for dK) by the thread that writes it.
  SPECTFORMER_LAUNCH(gate_backward_kernel, elementwise_blocks(weight_bins), kThreads, 0, stream,
      sc.spec_a, sc.spec_b, weight, sc.spec_a, grad_weight, s.batch, static_cast<int>(s.height),
      static_cast<int>(s.width), static_cast<int>(s.channels), scale);
  SPECTFORMER_LAUNCH_CHECK("gate_backward_kernel");
  SPECTFORMER_RETURN_IF_ERROR(exec_c2r(plans, sc.spec_a, sc.planes, sc.work, stream));
  return unpack<T>(s, sc.planes, grad_x, stream);
}

}  // namespace

bool cufft_lto_callbacks_built() { return SPECTFORMER_CUFFT_LTO_CALLBACKS != 0; }

std::string cufft_callback_failure() {
#if SPECTFORMER_CUFFT_LTO_CALLBACKS
  std::lock_guard<std::mutex> lock(callback_cache_mutex);
  return first_callback_failure;
#else
  return std::string();
#endif
}

Status cufft_forward_workspace_bytes(const GateShape& s, ScalarType dtype, cudaStream_t stream,
                                     size_t* bytes) {
  SPECTFORMER_RETURN_IF_ERROR(check_sizes(s));
  *bytes = 0;
  if (s.batch == 0) return Status();
  size_t work = 0;
  SPECTFORMER_RETURN_IF_ERROR(plan_work_bytes(s, dtype, stream, &work));
  *bytes = scratch_bytes(s, work);
  return Status();
}

Status cufft_backward_workspace_bytes(const GateShape& s, ScalarType dtype, cudaStream_t stream,
                                      size_t* bytes) {
  return cufft_forward_workspace_bytes(s, dtype, stream, bytes);
}

Status cufft_forward(const GateShape& s, ScalarType dtype, const void* x, Strides4 xs,
                     const float* weight, void* y, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  SPECTFORMER_RETURN_IF_ERROR(check_sizes(s));
  if (s.batch == 0) return Status();
  SPECTFORMER_DISPATCH_DTYPE(dtype, T, [&]() -> Status {
    return forward_impl<T>(s, dtype, x, xs, weight, y, workspace, workspace_bytes, stream);
  });
}

Status cufft_backward(const GateShape& s, ScalarType dtype, const void* grad_y, Strides4 gs,
                      const void* x, Strides4 xs, const float* weight, void* grad_x,
                      float* grad_weight, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  SPECTFORMER_RETURN_IF_ERROR(check_sizes(s));
  if (s.batch == 0) {
    SPECTFORMER_CUDA_TRY(cudaMemsetAsync(
        grad_weight, 0, s.height * s.half_width() * s.channels * 2 * sizeof(float), stream));
    return Status();
  }
  SPECTFORMER_DISPATCH_DTYPE(dtype, T, [&]() -> Status {
    return backward_impl<T>(s, dtype, grad_y, gs, x, xs, weight, grad_x, grad_weight, workspace,
                            workspace_bytes, stream);
  });
}

}  // namespace spectformer
