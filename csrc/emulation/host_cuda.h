// A sequential CPU model of the parts of CUDA the kernels in csrc/ use, so that the shipped
// kernel and launcher code compiles as plain C++ (SPECTFORMER_HOST_EMULATION) and runs in
// tests on machines without a GPU. Never part of the extension build.
//
// What it models:
// - A launch runs every block in turn. Inside a block each CUDA thread is a fiber (ucontext)
//   with its own stack; the scheduler runs each thread until it reaches __syncthreads() or
//   returns, and starts the next phase only when every thread is at the barrier. Threads
//   that return while others wait at a barrier are reported as barrier divergence (undefined
//   behaviour on a GPU). The order in which threads run inside a phase is selectable
//   (ascending, descending, alternating), so a missing barrier or a cross-thread race shows
//   up as stale or NaN data, or as results that change with the order.
// - Dynamic shared memory is filled with NaN before every block and ends at a guard page, so
//   reads before writes poison the result and writes past its end fault.
// - Launch configurations are validated like the runtime does (block size, grid limits,
//   dynamic shared memory against cudaFuncSetAttribute's opt-in), and the error surfaces at
//   cudaGetLastError().
// - bf16 and fp16 storage types with round-to-nearest-even conversions.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __shared__ static  // static arrays are shared by all fibers of the running block
#define SPECTFORMER_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::spectformer_emu::dynamic_shared())
#define SPECTFORMER_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::spectformer_emu::launch(kernel, grid, block, shared_bytes, stream, __VA_ARGS__)

// ---- vector types and built-in variables ---------------------------------------------------

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
// Raw vectors for wide loads and stores.
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }

// ---- bf16 / fp16 -------------------------------------------------------------------------

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fff + ((u >> 16) & 1);  // round to nearest, ties to even
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

struct __half {
  _Float16 value;
};
inline float __half2float(__half v) { return static_cast<float>(v.value); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }

// ---- runtime API subset ------------------------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
using cudaStream_t = struct CUstream_st*;

namespace spectformer_emu {

// Largest opt-in dynamic shared memory per block the emulated device allows (tests set it).
inline int device_max_shared_bytes = 227 * 1024;
constexpr int kDefaultDynamicSharedLimit = 48 * 1024;

// Thread order inside a phase: 0 ascending, 1 descending, 2 alternating per phase.
inline int thread_order = 2;

inline cudaError_t last_error = cudaSuccess;
// Whether every stream is capturing a CUDA graph (tests set it). While capturing, device
// allocation and synchronisation abort the program, as capture forbids them.
inline bool capturing = false;
inline int device_synchronizations = 0;
inline std::map<const void*, int> shared_opt_in;  // kernel -> MaxDynamicSharedMemorySize

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "host emulation: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

// Page-aligned mapping with `bytes` usable bytes ending right before a PROT_NONE page.
struct GuardedBuffer {
  char* base = nullptr;
  size_t mapped = 0;
  char* data = nullptr;
  void allocate(size_t bytes) {
    release();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t rounded = (bytes + 255) / 256 * 256;  // keep 256-byte alignment
    const size_t body = (rounded + page - 1) / page * page;
    mapped = body + page;
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("mmap failed");
    base = static_cast<char*>(p);
    if (mprotect(base + body, page, PROT_NONE) != 0) fail("mprotect failed");
    data = base + body - rounded;
  }
  void release() {
    if (base) munmap(base, mapped);
    base = data = nullptr;
  }
  ~GuardedBuffer() { release(); }
};

inline GuardedBuffer& dynamic_shared_buffer() {
  static GuardedBuffer buffer;
  return buffer;
}
inline void* dynamic_shared() { return dynamic_shared_buffer().data; }

// ---- fibers ------------------------------------------------------------------------------

enum class FiberState { kRunnable, kAtBarrier, kDone };

struct Fiber {
  ucontext_t context;
  FiberState state;
  uint3 index;
};

constexpr size_t kFiberStack = 256 * 1024;

inline ucontext_t scheduler_context;
inline Fiber* current_fiber = nullptr;
inline const std::function<void()>* block_body = nullptr;

inline std::vector<char*>& fiber_stacks() {
  static std::vector<char*> stacks;
  return stacks;
}

inline void fiber_entry() {
  (*block_body)();
  current_fiber->state = FiberState::kDone;
  // returning resumes scheduler_context through uc_link
}

[[gnu::noinline]] inline void start_fiber(Fiber& f, char* stack) {
  if (getcontext(&f.context) != 0) fail("getcontext failed");
  f.context.uc_stack.ss_sp = stack;
  f.context.uc_stack.ss_size = kFiberStack;
  f.context.uc_link = &scheduler_context;
  makecontext(&f.context, fiber_entry, 0);
}

// Runs one thread until its next barrier or its end. These two are kept out of line so
// that the setjmp-like getcontext/swapcontext are not in the frame of run_block's loops.
[[gnu::noinline]] inline void resume(Fiber& f) {
  f.state = FiberState::kRunnable;
  current_fiber = &f;
  threadIdx = f.index;
  if (swapcontext(&scheduler_context, &f.context) != 0) fail("swapcontext failed");
}

// Runs one block: every thread to the next barrier, phase after phase.
inline void run_block(const std::function<void()>& body) {
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  auto& stacks = fiber_stacks();
  while (stacks.size() < n) stacks.push_back(static_cast<char*>(std::malloc(kFiberStack)));
  std::vector<Fiber> fibers(n);
  block_body = &body;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = fibers[t];
    f.state = FiberState::kRunnable;
    f.index = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    start_fiber(f, stacks[t]);
  }
  for (int phase = 0;; ++phase) {
    const bool descending = thread_order == 1 || (thread_order == 2 && phase % 2 == 1);
    for (unsigned i = 0; i < n; ++i) {
      Fiber& f = fibers[descending ? n - 1 - i : i];
      if (f.state != FiberState::kDone) resume(f);
    }
    unsigned done = 0;
    for (const Fiber& f : fibers) done += f.state == FiberState::kDone;
    if (done == n) break;
    if (done != 0) fail("barrier divergence: some threads exited while others wait at __syncthreads");
  }
  current_fiber = nullptr;
}

inline bool valid_launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes) {
  const unsigned long long threads =
      static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64) return false;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) return false;
  auto it = shared_opt_in.find(kernel);
  const int limit = it == shared_opt_in.end() ? kDefaultDynamicSharedLimit : it->second;
  return shared_bytes <= static_cast<size_t>(limit);
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t /*stream*/, Args&&... args) {
  if (!valid_launch(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes)) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Kernel parameters are copies, converted as the real launch converts them.
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const std::function<void()> body = [&] { std::apply(kernel, params); };
  gridDim = grid;
  blockDim = block;
  GuardedBuffer& shared = dynamic_shared_buffer();
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        shared.allocate(shared_bytes);
        std::memset(shared.data, 0xff, (shared_bytes + 255) / 256 * 256);  // NaN
        run_block(body);
      }
    }
  }
}

}  // namespace spectformer_emu

inline void __syncthreads() {
  using namespace spectformer_emu;
  if (current_fiber == nullptr) fail("__syncthreads outside a kernel");
  current_fiber->state = FiberState::kAtBarrier;
  if (swapcontext(&current_fiber->context, &scheduler_context) != 0) fail("swapcontext failed");
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = spectformer_emu::last_error;
  spectformer_emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > spectformer_emu::device_max_shared_bytes) {
    return cudaErrorInvalidValue;
  }
  spectformer_emu::shared_opt_in[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (spectformer_emu::capturing) spectformer_emu::fail("cudaMalloc during graph capture");
  *p = std::malloc(bytes);
  if (*p) std::memset(*p, 0xff, bytes);
  return *p ? cudaSuccess : cudaErrorInvalidValue;
}
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}

// Resident blocks per SM the emulated device reports (tests set it); 0 when the launch could
// not run at all (more dynamic shared memory than the opt-in allows).
namespace spectformer_emu {
inline int occupancy_blocks_per_sm = 2;
}
template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel* kernel, int threads,
                                                          size_t shared_bytes) {
  if (threads <= 0 || threads > 1024) return cudaErrorInvalidValue;
  auto it = spectformer_emu::shared_opt_in.find(reinterpret_cast<const void*>(kernel));
  const int limit = it == spectformer_emu::shared_opt_in.end()
                        ? spectformer_emu::kDefaultDynamicSharedLimit : it->second;
  *blocks = shared_bytes <= static_cast<size_t>(limit) ? spectformer_emu::occupancy_blocks_per_sm : 0;
  return cudaSuccess;
}

inline cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  *status = spectformer_emu::capturing ? cudaStreamCaptureStatusActive
                                       : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize() {
  if (spectformer_emu::capturing) spectformer_emu::fail("cudaDeviceSynchronize during graph capture");
  ++spectformer_emu::device_synchronizations;
  return cudaSuccess;
}

inline cudaError_t cudaPeekAtLastError() { return spectformer_emu::last_error; }

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
