// Runs the shipped launchers of csrc/ (cufftdx_gate.cu, cufft_gate.cu, compiled as C++ with
// SPECTFORMER_HOST_EMULATION) on the CPU model of csrc/emulation/, forward and backward, for
// tests/test_cuda_host_emulation.py.
//
//   driver PATH DTYPE ORDER B H W C XS_B XS_H XS_W XS_C GS_B GS_H GS_W GS_C SMS SHARED DIR
//
// PATH cufftdx|cufft; DTYPE f32|bf16|f16; ORDER 0|1|2 (thread order, see host_cuda.h);
// XS/GS element strides of x and dy inside the raw buffers DIR/x.bin and DIR/dy.bin; SMS
// and SHARED the emulated device's SM count and opt-in shared memory per block. Reads
// DIR/k.bin (fp32 (H, W//2+1, C, 2)); writes DIR/y.bin and DIR/dx.bin (DTYPE, contiguous
// (B, H, W, C)) and DIR/dk.bin (fp32). Every output and scratch buffer starts as NaN and ends
// at a guard page.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emulation/host_cufft.h"
#include "spectral_gate.h"

namespace {

using spectformer_emu::GuardedBuffer;

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "driver: %s\n", message.c_str());
  std::exit(2);
}

void read_file(const std::string& path, GuardedBuffer& buffer, size_t* bytes) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) die("cannot open " + path);
  std::fseek(f, 0, SEEK_END);
  *bytes = static_cast<size_t>(std::ftell(f));
  std::fseek(f, 0, SEEK_SET);
  buffer.allocate(*bytes);
  if (std::fread(buffer.data, 1, *bytes, f) != *bytes) die("short read of " + path);
  std::fclose(f);
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, bytes, f) != bytes) die("cannot write " + path);
  std::fclose(f);
}

void* poisoned(GuardedBuffer& buffer, size_t bytes) {
  buffer.allocate(bytes);
  std::memset(buffer.data, 0xff, bytes);  // NaN in every float format
  return buffer.data;
}

void check(const spectformer::Status& status, const char* what) {
  if (!status.empty()) die(std::string(what) + ": " + status);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 19) die("expected 18 arguments, see the header of host_emulation_driver.cpp");
  const std::string path = argv[1], dtype_name = argv[2];
  spectformer_emu::thread_order = std::atoi(argv[3]);
  const spectformer::GateShape s{std::atoll(argv[4]), std::atoll(argv[5]), std::atoll(argv[6]),
                                 std::atoll(argv[7])};
  const spectformer::Strides4 xs{std::atoll(argv[8]), std::atoll(argv[9]), std::atoll(argv[10]),
                                 std::atoll(argv[11])};
  const spectformer::Strides4 gs{std::atoll(argv[12]), std::atoll(argv[13]), std::atoll(argv[14]),
                                 std::atoll(argv[15])};
  const int num_sms = std::atoi(argv[16]);
  const int max_shared = std::atoi(argv[17]);
  spectformer_emu::device_max_shared_bytes = max_shared;
  const std::string dir = argv[18];

  spectformer::ScalarType dtype;
  size_t elem;
  if (dtype_name == "f32") {
    dtype = spectformer::ScalarType::kFloat32, elem = 4;
  } else if (dtype_name == "bf16") {
    dtype = spectformer::ScalarType::kBFloat16, elem = 2;
  } else if (dtype_name == "f16") {
    dtype = spectformer::ScalarType::kFloat16, elem = 2;
  } else {
    die("unknown dtype " + dtype_name);
  }

  GuardedBuffer x, dy, k, y, dx, dk, ws_fwd, ws_bwd;
  size_t bytes = 0;
  read_file(dir + "/x.bin", x, &bytes);
  read_file(dir + "/dy.bin", dy, &bytes);
  read_file(dir + "/k.bin", k, &bytes);
  const size_t out_bytes = static_cast<size_t>(s.batch * s.height * s.width * s.channels) * elem;
  const size_t dk_bytes = static_cast<size_t>(s.height * s.half_width() * s.channels * 2) * 4;
  if (bytes != dk_bytes) die("k.bin has the wrong size");
  const float* weight = reinterpret_cast<const float*>(k.data);
  void* y_ptr = poisoned(y, out_bytes);
  void* dx_ptr = poisoned(dx, out_bytes);
  float* dk_ptr = static_cast<float*>(poisoned(dk, dk_bytes));

  // SPECTFORMER_EMU_PLAN_SWEEP=N: first ask the cuFFT path for the workspace of N other grids
  // (1, n, 2, 1), which makes and caches their plans (the plan cache's bound is then visible in
  // the live plan count printed at the end).
  if (const char* sweep = std::getenv("SPECTFORMER_EMU_PLAN_SWEEP")) {
    for (int n = 1; n <= std::atoi(sweep); ++n) {
      size_t ws = 0;
      check(spectformer::cufft_forward_workspace_bytes(spectformer::GateShape{1, 100 + n, 2, 1},
                                                       dtype, nullptr, &ws),
            "cufft_forward_workspace_bytes (sweep)");
    }
  }
  // SPECTFORMER_EMU_CAPTURE: "cold" runs everything as if the stream were capturing a CUDA
  // graph from the start; "warm" runs once normally (the warm-up that makes the plans), then
  // again capturing on another stream. Outputs are those of the last run.
  const char* capture = std::getenv("SPECTFORMER_EMU_CAPTURE");
  const std::string capture_mode = capture ? capture : "";
  cudaStream_t stream = nullptr;
  int runs = 1;
  if (capture_mode == "cold") spectformer_emu::capturing = true;
  if (capture_mode == "warm") runs = 2;
  for (int run = 0; run < runs; ++run) {
  if (run == 1) {
    spectformer_emu::capturing = true;
    stream = reinterpret_cast<cudaStream_t>(uintptr_t{0x100});  // the capture's own stream
    std::memset(y_ptr, 0xff, out_bytes);
    std::memset(dx_ptr, 0xff, out_bytes);
    std::memset(dk_ptr, 0xff, dk_bytes);
  }
  if (path == "cufftdx") {
    check(spectformer::cufftdx_forward(s, dtype, x.data, xs, weight, y_ptr, num_sms, nullptr),
          "cufftdx_forward");
    size_t ws = 0;
    check(spectformer::cufftdx_backward_workspace_bytes(s, num_sms, &ws),
          "cufftdx_backward_workspace_bytes");
    void* ws_ptr = ws ? poisoned(ws_bwd, ws) : nullptr;
    check(spectformer::cufftdx_backward(s, dtype, dy.data, gs, x.data, xs, weight, dx_ptr, dk_ptr,
                                        ws_ptr, ws, num_sms, nullptr),
          "cufftdx_backward");
  } else if (path == "cufft") {
    size_t ws = 0;
    check(spectformer::cufft_forward_workspace_bytes(s, dtype, stream, &ws), "cufft_forward_workspace_bytes");
    void* ws_ptr = ws ? poisoned(ws_fwd, ws) : nullptr;
    check(spectformer::cufft_forward(s, dtype, x.data, xs, weight, y_ptr, ws_ptr, ws, stream),
          "cufft_forward");
    check(spectformer::cufft_backward_workspace_bytes(s, dtype, stream, &ws), "cufft_backward_workspace_bytes");
    ws_ptr = ws ? poisoned(ws_bwd, ws) : nullptr;
    check(spectformer::cufft_backward(s, dtype, dy.data, gs, x.data, xs, weight, dx_ptr, dk_ptr,
                                      ws_ptr, ws, stream),
          "cufft_backward");
  } else {
    die("unknown path " + path);
  }
  }
  std::printf("cuFFT execs with callbacks: %d\n", spectformer_emu::execs_with_callbacks);
  std::printf("live cuFFT plans: %d\n", spectformer_emu::live_plans());
  std::printf("device synchronizations: %d\n", spectformer_emu::device_synchronizations);
  write_file(dir + "/y.bin", y_ptr, out_bytes);
  write_file(dir + "/dx.bin", dx_ptr, out_bytes);
  write_file(dir + "/dk.bin", dk_ptr, dk_bytes);
  return 0;
}
