// Runs the host stand-in of cuFFTDx (csrc/emulation/host_cufftdx.h) the way
// csrc/thread_fft.cuh describes its FFTs, for tests/test_cuda_host_emulation.py to compare
// with torch.fft in double.
//
//   cufftdx_standin_driver PRECISION DIRECTION N < N complex values (re im) > N complex values
//
// PRECISION f64|f32, DIRECTION forward|inverse, N one of the sizes instantiated below.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "emulation/host_cufftdx.h"

namespace {

template <typename P, int N, cufftdx::fft_direction D>
using Fft = decltype(cufftdx::Size<N>() + cufftdx::Precision<P>() +
                     cufftdx::Type<cufftdx::fft_type::c2c>() + cufftdx::Direction<D>() +
                     cufftdx::SM<900>() + cufftdx::Thread());

template <typename P, int N, cufftdx::fft_direction D>
int run() {
  using F = Fft<P, N, D>;
  static_assert(F::storage_size == N && F::elements_per_thread == N, "thread FFT traits");
  static_assert(sizeof(typename F::value_type) == 2 * sizeof(P), "value_type is a complex");
  typename F::value_type data[F::storage_size];
  for (int i = 0; i < N; ++i) {
    double re, im;
    if (std::scanf("%lf %lf", &re, &im) != 2) return 2;
    data[i].x = static_cast<P>(re);
    data[i].y = static_cast<P>(im);
  }
  F().execute(data);
  for (int i = 0; i < N; ++i) {
    std::printf("%.17g %.17g\n", static_cast<double>(data[i].x), static_cast<double>(data[i].y));
  }
  return 0;
}

template <typename P, cufftdx::fft_direction D>
int run_size(int n) {
  switch (n) {
    case 2: return run<P, 2, D>();
    case 7: return run<P, 7, D>();
    case 12: return run<P, 12, D>();
    case 14: return run<P, 14, D>();
    case 24: return run<P, 24, D>();
    case 28: return run<P, 28, D>();
    case 48: return run<P, 48, D>();
    case 56: return run<P, 56, D>();
    case 64: return run<P, 64, D>();
  }
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return 1;
  const bool f64 = std::strcmp(argv[1], "f64") == 0;
  const bool forward = std::strcmp(argv[2], "forward") == 0;
  const int n = std::atoi(argv[3]);
  using cufftdx::fft_direction;
  if (f64) {
    return forward ? run_size<double, fft_direction::forward>(n)
                   : run_size<double, fft_direction::inverse>(n);
  }
  return forward ? run_size<float, fft_direction::forward>(n)
                 : run_size<float, fft_direction::inverse>(n);
}
