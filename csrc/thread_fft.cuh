// The one part of cuFFTDx the cuFFTDx kernels use: a complex-to-complex FFT computed by one
// thread on data in its registers (the Thread operator), in single precision.
//
// What the kernel relies on, from the cuFFTDx documentation:
// - Thread execution, "FFT().execute(T* input)": input holds FFT::storage_size values of
//   FFT::value_type in registers (any T of the same size and alignment, e.g. float2), and the
//   transform is done in place (cuFFTDx API reference, "Execution Methods", Thread Execute
//   Method: https://docs.nvidia.com/cuda/cufftdx/api/methods.html).
// - For a C2C thread FFT, FFT::storage_size == FFT::elements_per_thread == the FFT size and
//   element i of the array is element i of the sequence, in natural order, on input and output
//   ("Execution Traits", Thread Traits: https://docs.nvidia.com/cuda/cufftdx/api/traits.html;
//   "simple_fft_thread" examples).
// - Direction forward computes X[k] = sum_j x[j] exp(-2 pi i jk / N), inverse the same with
//   +i, both unnormalised, as cuFFT does ("Direction Operator",
//   https://docs.nvidia.com/cuda/cufftdx/api/operators.html).
// - Single-precision thread FFTs take sizes 2..64 (the library's static check, and the list
//   of supported sizes at https://docs.nvidia.com/cuda/cufftdx/single_c2c_sizes.html).
// Everything else (real-to-complex packing, layouts, the gate) is the kernel's own code, so the
// host emulation, which replaces this header's library with a stand-in computing the same
// transform directly in double (emulation/host_cufftdx.h), runs all of it.
#pragma once

#ifdef SPECTFORMER_HOST_EMULATION
#include "emulation/host_cufftdx.h"
#else
#include <cufftdx.hpp>
#endif

#include "spectral_gate.h"

namespace spectformer {

// SM<900>: the project targets Hopper; a thread FFT is plain register arithmetic, so the same
// description also serves other architectures' builds.
template <int N, cufftdx::fft_direction Direction>
using ThreadFft = decltype(cufftdx::Size<N>() + cufftdx::Precision<float>() +
                           cufftdx::Type<cufftdx::fft_type::c2c>() +
                           cufftdx::Direction<Direction>() + cufftdx::SM<900>() +
                           cufftdx::Thread());

// In-place unnormalised FFT of N complex values (natural order) in registers.
template <int N>
__device__ __forceinline__ void fft_forward(float2 (&data)[N]) {
  using Fft = ThreadFft<N, cufftdx::fft_direction::forward>;
  static_assert(Fft::storage_size == N, "a thread FFT holds the whole sequence");
  Fft().execute(data);
}

template <int N>
__device__ __forceinline__ void fft_inverse(float2 (&data)[N]) {
  using Fft = ThreadFft<N, cufftdx::fft_direction::inverse>;
  static_assert(Fft::storage_size == N, "a thread FFT holds the whole sequence");
  Fft().execute(data);
}

}  // namespace spectformer
