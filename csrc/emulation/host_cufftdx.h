// Host stand-in for the subset of cuFFTDx that csrc/thread_fft.cuh uses, for the host
// emulation tests (see host_cuda.h). Never part of the extension build.
//
// It mimics only what the cuFFTDx documentation states without ambiguity (see the citations
// in thread_fft.cuh): descriptors built by adding the operators Size, Precision, Type,
// Direction, SM and Thread; the traits value_type (a complex of the precision, members x and
// y), storage_size and elements_per_thread (both the FFT size for a thread FFT); and
// execute(T*) for any T of value_type's size and alignment, transforming storage_size values
// in place, natural order in and out, forward exp(-2 pi i jk/N), inverse exp(+2 pi i jk/N),
// unnormalised. The transform is computed directly in double, then rounded to the precision.
// Anything else (block execution, real FFT types, other traits) fails to compile here, so
// the kernels cannot start using an unmodelled part by accident.
#pragma once

#include <cmath>
#include <initializer_list>
#include <type_traits>

#include "host_cuda.h"

namespace cufftdx {

enum class fft_type { c2c, r2c, c2r };
enum class fft_direction { forward, inverse };

namespace detail {

struct operator_base {};

template <class... Ops>
struct description;

template <class T>
struct as_description {
  using type = description<T>;
};
template <class... Ops>
struct as_description<description<Ops...>> {
  using type = description<Ops...>;
};

template <class A, class B>
struct concat;
template <class... As, class... Bs>
struct concat<description<As...>, description<Bs...>> {
  using type = description<As..., Bs...>;
};

}  // namespace detail

template <unsigned N>
struct Size : detail::operator_base {
  static constexpr unsigned value = N;
};
template <class P>
struct Precision : detail::operator_base {
  using type = P;
};
template <fft_type T>
struct Type : detail::operator_base {
  static constexpr fft_type value = T;
};
template <fft_direction D>
struct Direction : detail::operator_base {
  static constexpr fft_direction value = D;
};
template <unsigned CC>
struct SM : detail::operator_base {};
struct Thread : detail::operator_base {};

template <class A, class B,
          class = std::enable_if_t<std::is_base_of_v<detail::operator_base, A> &&
                                   std::is_base_of_v<detail::operator_base, B>>>
constexpr auto operator+(A, B) {
  return typename detail::concat<typename detail::as_description<A>::type,
                                 typename detail::as_description<B>::type>::type{};
}

template <class T>
struct alignas(2 * sizeof(T)) complex {
  using value_type = T;
  T x, y;
};

namespace detail {

template <class T>
struct size_of_op : std::integral_constant<int, -1> {};
template <unsigned N>
struct size_of_op<Size<N>> : std::integral_constant<int, static_cast<int>(N)> {};

template <class T>
struct is_thread : std::false_type {};
template <>
struct is_thread<Thread> : std::true_type {};

template <class T>
struct precision_of_op {
  using type = void;
};
template <class P>
struct precision_of_op<Precision<P>> {
  using type = P;
};

template <class T>
struct direction_op : std::integral_constant<int, -1> {};
template <fft_direction D>
struct direction_op<Direction<D>> : std::integral_constant<int, static_cast<int>(D)> {};

template <class T>
struct type_op : std::integral_constant<int, -1> {};
template <fft_type T>
struct type_op<Type<T>> : std::integral_constant<int, static_cast<int>(T)> {};

template <class... Ts>
struct first_non_void {
  using type = void;
};
template <class T, class... Ts>
struct first_non_void<T, Ts...> {
  using type = std::conditional_t<std::is_void_v<T>, typename first_non_void<Ts...>::type, T>;
};

constexpr int pick(std::initializer_list<int> values) {
  int found = -1;
  for (int v : values) {
    if (v >= 0) found = v;
  }
  return found;
}

template <class... Ops>
struct description : operator_base {
  static constexpr int size = pick({size_of_op<Ops>::value...});
  static constexpr int direction = pick({direction_op<Ops>::value...});
  static constexpr int kind = pick({type_op<Ops>::value...});
  using precision = typename first_non_void<typename precision_of_op<Ops>::type...>::type;
  static constexpr bool thread = (is_thread<Ops>::value || ...);

  using value_type = complex<precision>;
  static constexpr unsigned storage_size = static_cast<unsigned>(size);
  static constexpr unsigned elements_per_thread = static_cast<unsigned>(size);

  template <class T>
  void execute(T* data) {
    static_assert(size >= 2, "Size<N> is missing or too small");
    static_assert(!std::is_void_v<precision>, "Precision<P> is missing");
    static_assert(thread, "the stand-in models only Thread() execution");
    static_assert(kind == static_cast<int>(fft_type::c2c), "the stand-in models only c2c");
    static_assert(direction >= 0, "Direction<D> is missing");
    static_assert(!std::is_same_v<precision, float> || size <= 64,
                  "thread execution in fp32 supports sizes 2..64");
    static_assert(sizeof(T) == sizeof(value_type) && alignof(T) == alignof(value_type),
                  "execute takes value_type or a type of the same size and alignment");
    auto* values = reinterpret_cast<value_type*>(data);
    const double sign = direction == static_cast<int>(fft_direction::forward) ? -1.0 : 1.0;
    double re[size], im[size];
    for (int k = 0; k < size; ++k) {
      double acc_re = 0.0, acc_im = 0.0;
      for (int j = 0; j < size; ++j) {
        const double angle = sign * 2.0 * M_PI * static_cast<double>((j * k) % size) / size;
        const double c = std::cos(angle), s = std::sin(angle);
        const double x = values[j].x, y = values[j].y;
        acc_re += x * c - y * s;
        acc_im += x * s + y * c;
      }
      re[k] = acc_re;
      im[k] = acc_im;
    }
    for (int k = 0; k < size; ++k) {
      values[k].x = static_cast<precision>(re[k]);
      values[k].y = static_cast<precision>(im[k]);
    }
  }
};

}  // namespace detail
}  // namespace cufftdx
