// CPU model of the cuFFT calls the cuFFT path makes, for the host emulation tests (see
// host_cuda.h). Plans are batched, contiguous 2-D R2C/C2R transforms computed in double and
// stored as float, unnormalised, like cuFFT. It is deliberately strict where cuFFT is
// allowed to be unfriendly:
// - auto-allocation must be off and a work area set before exec; exec fills the work area
//   with NaN, so scratch that overlaps it is caught;
// - LTO callbacks (cufftXtSetJITCallback) are looked up by symbol name in the running program
//   (link it with -rdynamic); the LTO-IR bytes are ignored. Loads and stores go through them
//   in descending element order, the input of a plan with a load callback is NaN-filled first
//   and the output of a plan with a store callback too, so the callbacks must do all the I/O.
// - C2R trusts only half of the DC and Nyquist columns (rows 0..H/2, as an implementation
//   exploiting Hermitian symmetry may), so input that is not Hermitian there gives a result
//   different from CPU irfft2; and it overwrites its input with NaN afterwards, as cuFFT's
//   out-of-place multi-dimensional C2R may.
#pragma once

#include <dlfcn.h>

#include <complex>
#include <cstring>
#include <vector>

#include "host_cuda.h"

using cufftHandle = int;
using cufftComplex = float2;
using cufftReal = float;

enum cufftResult {
  CUFFT_SUCCESS = 0,
  CUFFT_INVALID_PLAN = 1,
  CUFFT_ALLOC_FAILED = 2,
  CUFFT_INVALID_TYPE = 3,
  CUFFT_INVALID_VALUE = 4,
  CUFFT_INTERNAL_ERROR = 5,
  CUFFT_EXEC_FAILED = 6,
  CUFFT_SETUP_FAILED = 7,
  CUFFT_INVALID_SIZE = 8,
  CUFFT_UNALIGNED_DATA = 9,
  CUFFT_INVALID_DEVICE = 11,
  CUFFT_NO_WORKSPACE = 13,
  CUFFT_NOT_IMPLEMENTED = 14,
  CUFFT_NOT_SUPPORTED = 16,
};
enum cufftType { CUFFT_R2C = 0x2a, CUFFT_C2R = 0x2c };
enum cufftXtCallbackType {
  CUFFT_CB_LD_COMPLEX = 0x0,
  CUFFT_CB_LD_REAL = 0x2,
  CUFFT_CB_ST_COMPLEX = 0x4,
  CUFFT_CB_ST_REAL = 0x6,
};

namespace spectformer_emu {

constexpr size_t kFakeWorkBytes = 4096;
inline int execs_with_callbacks = 0;  // reported by the test driver

using LoadReal = float (*)(void*, unsigned long long, void*, void*);
using StoreComplex = void (*)(void*, unsigned long long, float2, void*, void*);
using StoreReal = void (*)(void*, unsigned long long, float, void*, void*);

struct FakePlan {
  bool alive = true, auto_allocate = true, made = false;
  cufftType type = CUFFT_R2C;
  long long batch = 0, H = 0, W = 0;
  void* work = nullptr;
  LoadReal load_real = nullptr;
  StoreComplex store_complex = nullptr;
  StoreReal store_real = nullptr;
  void* load_info = nullptr;
  void* store_info = nullptr;
};

inline std::vector<FakePlan>& fake_plans() {
  static std::vector<FakePlan> plans;
  return plans;
}

inline FakePlan* find_plan(cufftHandle h) {
  auto& plans = fake_plans();
  if (h < 0 || h >= static_cast<int>(plans.size()) || !plans[h].alive) return nullptr;
  return &plans[h];
}

using cd = std::complex<double>;

// In-place unnormalised complex DFT of n points with stride, sign -1 forward, +1 inverse.
inline void dft(cd* data, long long n, long long stride, int sign) {
  std::vector<cd> out(n);
  for (long long k = 0; k < n; ++k) {
    cd acc = 0;
    for (long long j = 0; j < n; ++j) {
      const double angle = sign * 2.0 * M_PI * static_cast<double>((j * k) % n) / n;
      acc += data[j * stride] * cd(std::cos(angle), std::sin(angle));
    }
    out[k] = acc;
  }
  for (long long k = 0; k < n; ++k) data[k * stride] = out[k];
}

inline void r2c_plane(const float* in, float2* out, long long H, long long W) {
  std::vector<cd> full(H * W);
  for (long long i = 0; i < H * W; ++i) full[i] = in[i];
  for (long long h = 0; h < H; ++h) dft(&full[h * W], W, 1, -1);
  for (long long w = 0; w < W; ++w) dft(&full[w], H, W, -1);
  const long long Wk = W / 2 + 1;
  for (long long h = 0; h < H; ++h) {
    for (long long k = 0; k < Wk; ++k) {
      const cd v = full[h * W + k];
      out[h * Wk + k] = make_float2(static_cast<float>(v.real()), static_cast<float>(v.imag()));
    }
  }
}

inline void c2r_plane(float2* in, float* out, long long H, long long W) {
  const long long Wk = W / 2 + 1;
  std::vector<cd> full(H * W);
  for (long long h = 0; h < H; ++h) {
    for (long long k = 0; k < Wk; ++k) full[h * W + k] = cd(in[h * Wk + k].x, in[h * Wk + k].y);
  }
  for (long long k = 0; k < Wk; ++k) {
    if (k != 0 && 2 * k != W) continue;
    for (long long h = 0; h <= H / 2; ++h) {  // rows H/2+1.. are rebuilt from 1..
      if (h == 0 || 2 * h == H) {
        full[h * W + k] = full[h * W + k].real();
      } else {
        full[(H - h) * W + k] = std::conj(full[h * W + k]);
      }
    }
  }
  for (long long k = Wk; k < W; ++k) {
    for (long long h = 0; h < H; ++h) full[h * W + k] = std::conj(full[((H - h) % H) * W + (W - k)]);
  }
  for (long long w = 0; w < W; ++w) dft(&full[w], H, W, +1);
  for (long long h = 0; h < H; ++h) dft(&full[h * W], W, 1, +1);
  for (long long i = 0; i < H * W; ++i) out[i] = static_cast<float>(full[i].real());
}

inline cufftResult exec(cufftHandle h, cufftType type, void* in, void* out) {
  FakePlan* p = find_plan(h);
  if (p == nullptr || !p->made) return CUFFT_INVALID_PLAN;
  if (p->type != type) return CUFFT_INVALID_TYPE;
  if (!p->auto_allocate && p->work == nullptr) return CUFFT_NO_WORKSPACE;
  if (p->work) std::memset(p->work, 0xff, kFakeWorkBytes);
  const long long Wk = p->W / 2 + 1;
  const long long n_real = p->batch * p->H * p->W, n_complex = p->batch * p->H * Wk;
  const long long n_in = type == CUFFT_R2C ? n_real : n_complex;
  const long long n_out = type == CUFFT_R2C ? n_complex : n_real;
  const size_t in_bytes = n_in * (type == CUFFT_R2C ? sizeof(float) : sizeof(float2));
  const size_t out_bytes = n_out * (type == CUFFT_R2C ? sizeof(float2) : sizeof(float));
  // Stage through private buffers so that callbacks, not cuFFT, do the caller-visible I/O.
  std::vector<char> src(in_bytes), dst(out_bytes);
  execs_with_callbacks += p->load_real || p->store_complex || p->store_real;
  if (p->load_real) {
    if (type != CUFFT_R2C) return CUFFT_INVALID_TYPE;
    std::memset(in, 0xff, in_bytes);
    float* v = reinterpret_cast<float*>(src.data());
    for (long long i = n_in - 1; i >= 0; --i) v[i] = p->load_real(in, i, p->load_info, nullptr);
  } else {
    std::memcpy(src.data(), in, in_bytes);
  }
  for (long long i = 0; i < p->batch; ++i) {
    if (type == CUFFT_R2C) {
      r2c_plane(reinterpret_cast<const float*>(src.data()) + i * p->H * p->W,
                reinterpret_cast<float2*>(dst.data()) + i * p->H * Wk, p->H, p->W);
    } else {
      c2r_plane(reinterpret_cast<float2*>(src.data()) + i * p->H * Wk,
                reinterpret_cast<float*>(dst.data()) + i * p->H * p->W, p->H, p->W);
    }
  }
  if (type == CUFFT_C2R) std::memset(in, 0xff, in_bytes);  // C2R may overwrite its input
  if (p->store_complex || p->store_real) {
    std::memset(out, 0xff, out_bytes);  // cuFFT may have used the output as scratch
    for (long long i = n_out - 1; i >= 0; --i) {
      if (p->store_complex) {
        p->store_complex(out, i, reinterpret_cast<float2*>(dst.data())[i], p->store_info, nullptr);
      } else {
        p->store_real(out, i, reinterpret_cast<float*>(dst.data())[i], p->store_info, nullptr);
      }
    }
  } else {
    std::memcpy(out, dst.data(), out_bytes);
  }
  return CUFFT_SUCCESS;
}

}  // namespace spectformer_emu

inline cufftResult cufftCreate(cufftHandle* h) {
  // Plan creation allocates device memory: never during graph capture.
  if (spectformer_emu::capturing) spectformer_emu::fail("cufftCreate during graph capture");
  auto& plans = spectformer_emu::fake_plans();
  plans.emplace_back();
  *h = static_cast<cufftHandle>(plans.size() - 1);
  return CUFFT_SUCCESS;
}
namespace spectformer_emu {
inline int live_plans() {
  int n = 0;
  for (const auto& p : fake_plans()) n += p.alive;
  return n;
}
}  // namespace spectformer_emu
inline cufftResult cufftDestroy(cufftHandle h) {
  auto* p = spectformer_emu::find_plan(h);
  if (p == nullptr) return CUFFT_INVALID_PLAN;
  p->alive = false;
  return CUFFT_SUCCESS;
}
inline cufftResult cufftSetAutoAllocation(cufftHandle h, int on) {
  auto* p = spectformer_emu::find_plan(h);
  if (p == nullptr) return CUFFT_INVALID_PLAN;
  p->auto_allocate = on != 0;
  return CUFFT_SUCCESS;
}
// Must come after cufftCreate and before planning, as the cuFFT documentation requires.
inline cufftResult cufftXtSetJITCallback(cufftHandle h, const char* name, const void* fatbin,
                                         size_t fatbin_bytes, cufftXtCallbackType type,
                                         void** caller_info) {
  auto* p = spectformer_emu::find_plan(h);
  if (p == nullptr || p->made) return CUFFT_INVALID_PLAN;
  if (name == nullptr || fatbin == nullptr || fatbin_bytes == 0) return CUFFT_INVALID_VALUE;
  void* symbol = dlsym(RTLD_DEFAULT, name);
  if (symbol == nullptr) return CUFFT_INVALID_VALUE;
  void* info = caller_info ? caller_info[0] : nullptr;
  using namespace spectformer_emu;
  switch (type) {
    case CUFFT_CB_LD_REAL:
      p->load_real = reinterpret_cast<LoadReal>(symbol);
      p->load_info = info;
      break;
    case CUFFT_CB_ST_COMPLEX:
      p->store_complex = reinterpret_cast<StoreComplex>(symbol);
      p->store_info = info;
      break;
    case CUFFT_CB_ST_REAL:
      p->store_real = reinterpret_cast<StoreReal>(symbol);
      p->store_info = info;
      break;
    default:
      return CUFFT_NOT_IMPLEMENTED;
  }
  return CUFFT_SUCCESS;
}

inline cufftResult cufftMakePlanMany64(cufftHandle h, int rank, long long* n, long long* inembed,
                                       long long, long long, long long* onembed, long long,
                                       long long, cufftType type, long long batch,
                                       size_t* work_bytes) {
  auto* p = spectformer_emu::find_plan(h);
  if (p == nullptr) return CUFFT_INVALID_PLAN;
  // Only what the cuFFT path asks for: contiguous batched 2-D real transforms.
  if (rank != 2 || inembed != nullptr || onembed != nullptr) return CUFFT_NOT_IMPLEMENTED;
  if (type != CUFFT_R2C && type != CUFFT_C2R) return CUFFT_INVALID_TYPE;
  if ((p->load_real || p->store_complex) && type != CUFFT_R2C) return CUFFT_INVALID_TYPE;
  if (p->store_real && type != CUFFT_C2R) return CUFFT_INVALID_TYPE;
  if (n[0] < 1 || n[1] < 1 || batch < 1) return CUFFT_INVALID_SIZE;
  p->type = type;
  p->H = n[0];
  p->W = n[1];
  p->batch = batch;
  p->made = true;
  *work_bytes = spectformer_emu::kFakeWorkBytes;
  return CUFFT_SUCCESS;
}
inline cufftResult cufftSetStream(cufftHandle h, cudaStream_t) {
  return spectformer_emu::find_plan(h) ? CUFFT_SUCCESS : CUFFT_INVALID_PLAN;
}
inline cufftResult cufftSetWorkArea(cufftHandle h, void* work) {
  auto* p = spectformer_emu::find_plan(h);
  if (p == nullptr) return CUFFT_INVALID_PLAN;
  p->work = work;
  return CUFFT_SUCCESS;
}
inline cufftResult cufftExecR2C(cufftHandle h, cufftReal* in, cufftComplex* out) {
  return spectformer_emu::exec(h, CUFFT_R2C, in, out);
}
inline cufftResult cufftExecC2R(cufftHandle h, cufftComplex* in, cufftReal* out) {
  return spectformer_emu::exec(h, CUFFT_C2R, in, out);
}
