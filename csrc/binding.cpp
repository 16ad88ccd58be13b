// Torch binding of the spectral gate kernels: the extension module spectformer_kernels._C.
//
// The public op spectformer::spectral_gate (its schema, fake kernel, autograd formula and
// backend dispatch) is defined once, in Python. This file registers the low-level ops the
// Python `cuda` backend calls from inside that op:
//   spectformer_cuda::spectral_gate_forward(Tensor x, Tensor weight, str path) -> Tensor
//   spectformer_cuda::spectral_gate_backward(Tensor grad_out, Tensor x, Tensor weight,
//                                            str path) -> (Tensor, Tensor)
// with CUDA kernels and Meta kernels (shapes only), and no autograd of their own: gradients
// flow through the public op. `path` is "cufftdx" or "cufft".
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "spectral_gate.h"

namespace {

using spectformer::GateShape;
using spectformer::ScalarType;
using spectformer::Strides4;

ScalarType scalar_type_of(const at::Tensor& t, const char* name) {
  const at::ScalarType st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, name,
                   " must be float32, bfloat16 or float16 for the cuda backend, got ", st);
  if (st == at::kBFloat16) return ScalarType::kBFloat16;
  if (st == at::kHalf) return ScalarType::kFloat16;
  return ScalarType::kFloat32;
}

Strides4 strides_of(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

GateShape check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must have shape (B, H, W, C) (channels-last token grid), got shape ",
                    x.sizes());
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK_VALUE(H >= 1 && W >= 1 && C >= 1, "x must have H, W, C >= 1, got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == H && weight.size(1) == W / 2 + 1 &&
                        weight.size(2) == C && weight.size(3) == 2,
                    "weight must have shape (H, W//2+1, C, 2) = (", H, ", ", W / 2 + 1, ", ", C,
                    ", 2) for x of shape ", x.sizes(), ", got shape ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat,
                   "weight must be float32 for the cuda backend, got ", weight.scalar_type());
  scalar_type_of(x, "x");
  return GateShape{B, H, W, C};
}

void check_device(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " must be on the same device as x (", x.device(),
                    "), got ", t.device());
}

enum class Path { kCufftdx, kCufft };

Path parse_path(c10::string_view path, const GateShape& shape) {
  if (path == "cufftdx") {
    TORCH_CHECK_VALUE(spectformer::cufftdx_supports(shape),
                      "path 'cufftdx' has no kernel for H=", shape.height, ", W=", shape.width,
                      " (compiled grids: see spectformer_kernels._C.cufftdx_grids)");
    return Path::kCufftdx;
  }
  TORCH_CHECK_VALUE(path == "cufft", "path must be 'cufftdx' or 'cufft', got '",
                    std::string(path), "'");
  return Path::kCufft;
}

int device_attribute(cudaDeviceAttr attr, const at::Tensor& on) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, on.get_device()));
  return value;
}

void check_status(const spectformer::Status& status) {
  TORCH_CHECK(status.empty(), "spectformer cuda backend: ", status);
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& weight, c10::string_view path) {
  const GateShape shape = check_inputs(x, weight);
  check_device(x, x, "x");
  check_device(weight, x, "weight");
  const Path which = parse_path(path, shape);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor k = weight.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const ScalarType dtype = scalar_type_of(x, "x");
  if (which == Path::kCufftdx) {
    const int num_sms = device_attribute(cudaDevAttrMultiProcessorCount, x);
    check_status(spectformer::cufftdx_forward(shape, dtype, x.data_ptr(), strides_of(x),
                                              k.data_ptr<float>(), y.data_ptr(), num_sms, stream));
  } else {
    size_t bytes = 0;
    check_status(spectformer::cufft_forward_workspace_bytes(shape, dtype, stream, &bytes));
    at::Tensor scratch = workspace(bytes, x);
    check_status(spectformer::cufft_forward(shape, dtype, x.data_ptr(), strides_of(x),
                                            k.data_ptr<float>(), y.data_ptr(),
                                            bytes ? scratch.data_ptr() : nullptr, bytes, stream));
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                 const at::Tensor& weight, c10::string_view path) {
  const GateShape shape = check_inputs(x, weight);
  check_device(x, x, "x");
  check_device(weight, x, "weight");
  check_device(grad_out, x, "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "grad_out must have the shape of x ", x.sizes(),
                    ", got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), "grad_out must have the dtype of x (",
                   x.scalar_type(), "), got ", grad_out.scalar_type());
  const Path which = parse_path(path, shape);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor k = weight.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  const ScalarType dtype = scalar_type_of(x, "x");
  if (which == Path::kCufftdx) {
    const int num_sms = device_attribute(cudaDevAttrMultiProcessorCount, x);
    size_t bytes = 0;
    check_status(spectformer::cufftdx_backward_workspace_bytes(shape, num_sms, &bytes));
    at::Tensor scratch = workspace(bytes, x);
    check_status(spectformer::cufftdx_backward(
        shape, dtype, grad_out.data_ptr(), strides_of(grad_out), x.data_ptr(), strides_of(x),
        k.data_ptr<float>(), grad_x.data_ptr(), grad_weight.data_ptr<float>(),
        bytes ? scratch.data_ptr() : nullptr, bytes, num_sms, stream));
  } else {
    size_t bytes = 0;
    check_status(spectformer::cufft_backward_workspace_bytes(shape, dtype, stream, &bytes));
    at::Tensor scratch = workspace(bytes, x);
    check_status(spectformer::cufft_backward(
        shape, dtype, grad_out.data_ptr(), strides_of(grad_out), x.data_ptr(), strides_of(x),
        k.data_ptr<float>(), grad_x.data_ptr(), grad_weight.data_ptr<float>(),
        bytes ? scratch.data_ptr() : nullptr, bytes, stream));
  }
  return {grad_x, grad_weight};
}

// Shapes and dtypes only, for FakeTensor tracing of the low-level ops.
at::Tensor forward_meta(const at::Tensor& x, const at::Tensor& weight, c10::string_view /*path*/) {
  check_inputs(x, weight);
  return at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
}

std::tuple<at::Tensor, at::Tensor> backward_meta(const at::Tensor& /*grad_out*/, const at::Tensor& x,
                                                 const at::Tensor& weight, c10::string_view /*path*/) {
  check_inputs(x, weight);
  return {at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous)),
          at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous))};
}

}  // namespace

TORCH_LIBRARY(spectformer_cuda, m) {
  m.def("spectral_gate_forward(Tensor x, Tensor weight, str path) -> Tensor");
  m.def("spectral_gate_backward(Tensor grad_out, Tensor x, Tensor weight, str path) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(spectformer_cuda, CUDA, m) {
  m.impl("spectral_gate_forward", &forward_cuda);
  m.impl("spectral_gate_backward", &backward_cuda);
}

TORCH_LIBRARY_IMPL(spectformer_cuda, Meta, m) {
  m.impl("spectral_gate_forward", &forward_meta);
  m.impl("spectral_gate_backward", &backward_meta);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA kernels of the spectral gate; importing registers torch.ops.spectformer_cuda";
  {
    pybind11::list grids;  // the (H, W) grids the cuFFTDx path has kernels for
    for (int64_t n = 1; n <= spectformer::kCufftdxMaxSize; ++n) {
      if (spectformer::cufftdx_supports(GateShape{1, n, n, 1})) grids.append(pybind11::make_tuple(n, n));
    }
    m.attr("cufftdx_grids") = grids;
  }
  m.attr("cufft_lto_callbacks") = spectformer::cufft_lto_callbacks_built();
  m.def("cufft_callback_failure", &spectformer::cufft_callback_failure,
        "why making cuFFT callback plans first failed here ('' if it never did)");
}
