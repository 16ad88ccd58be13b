#!/usr/bin/env bash
# One GPU session, from a clean tree: build the CUDA extension in place, run the GPU tests,
# compute-sanitizer (memcheck, racecheck) over the CUDA and Triton kernel tests, the kernel
# benchmark, and the benchmark joined with the static model's predictions. Everything lands
# in OUTDIR (logs, CSV, PNG, a summary). The steps are time-boxed so that each call stays
# well inside 10 minutes.
#
# Each stage builds first (ninja keeps an earlier build of the same tree, so a later stage on
# the same machine only links), and then:
#
#     bash benchmarks/gpu_session.sh OUTDIR            # kernels: benchmark, model comparison, profile
#     bash benchmarks/gpu_session.sh OUTDIR check      # tests, memcheck, racecheck
#     bash benchmarks/gpu_session.sh OUTDIR train      # training throughput and step profile
#
# Each stage fits one 10-minute call on an H100 (measured: build 61 s, benchmark of every
# backend 210 s, the GPU tests over 5 minutes). The benchmark also checks every backend
# against the reference on real data.
set -uo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 2 ] && [ "$2" != kernels ] && [ "$2" != check ] \
    && [ "$2" != train ]; }; then
  echo "usage: $0 OUTDIR [kernels|check|train]" >&2
  exit 2
fi
STAGE="${2:-kernels}"
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export SPECTFORMER_STREAM_FAILURES=1  # tests print each failure when it happens (conftest.py)
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
SUMMARY="$OUT/summary.txt"
DEADLINE=${SPECTFORMER_SESSION_SECONDS:-560}  # the caller's limit is 600 s
: > "$SUMMARY"
FAILED=0

# step NAME SECONDS COMMAND...: run with a time limit (never past the session deadline), log
# to OUT/NAME.log, record the outcome.
step() {
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 10 ]; then
    printf '%-22s %-40s\n' "$name" "SKIPPED (session deadline reached)" | tee -a "$SUMMARY"
    FAILED=1
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  # SIGINT first: the benchmarks save the rows they measured, pytest prints its summary.
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local outcome="ok"
  [ $rc -ne 0 ] && outcome="FAILED (exit $rc$([ $rc -eq 124 ] && echo ", timed out after ${limit}s"))" && FAILED=1
  printf '%-22s %-40s %4ds\n' "$name" "$outcome" $((SECONDS - start)) | tee -a "$SUMMARY"
  return $rc
}

{
  echo "commit: $(git rev-parse HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -1
} > "$OUT/environment.txt" 2>&1

# The cuFFTDx kernels need the header-only nvidia-mathdx wheel (or MATHDX_ROOT): without it the
# build leaves the cuFFTDx path out, and its GPU tests skip. On a machine without network,
# bring the wheel along in .whl/ (pip download --no-deps nvidia-mathdx on a networked one):
# it is unpacked here and used through MATHDX_ROOT.
WHEEL=$(ls .whl/nvidia_mathdx-*.whl 2>/dev/null | head -1)
if [ -z "${MATHDX_ROOT:-}" ] && [ -n "$WHEEL" ]; then
  MATHDX_DIR=$(mktemp -d)
  python -m zipfile -e "$WHEEL" "$MATHDX_DIR" && export MATHDX_ROOT="$MATHDX_DIR/nvidia/mathdx"
fi
python -c "import importlib.util, sys; sys.path.insert(0, 'csrc'); import cufft_paths; \
sys.exit(0 if cufft_paths.find_cufftdx() else 1)" \
  || echo "WARNING: no cuFFTDx headers (nvidia-mathdx): the cuda_cufftdx path will be missing" \
  | tee -a "$SUMMARY"

# 1. Build in place with the machine's own torch (no downloads). cufftdx_gate.cu instantiates
#    thread FFTs for every model grid, the longest compile of the extension. If the build fails,
#    install without the extension so that the Triton and PyTorch backends are still measured.
step build 240 env SPECTFORMER_BUILD_CUDA=1 \
  python -m pip install --no-build-isolation --no-deps --no-index -v -e . || {
  echo "CUDA build failed (see $OUT/build.log): going on without the extension" | tee -a "$SUMMARY"
  step install_without_cuda 60 env SPECTFORMER_BUILD_CUDA=0 \
    python -m pip install --no-build-isolation --no-deps --no-index -e . || exit 1
}
step import 30 python -c "import spectformer_kernels as sk; from spectformer_kernels import cuda_backend as cb; print(sk.available_backends()); print('cuFFT LTO callbacks built:', cb.CUFFT_LTO_CALLBACKS)"
TRITON_TESTS=$(ls tests/test_triton*.py 2>/dev/null | tr '\n' ' ')

if [ "$STAGE" = train ]; then
  step train_throughput 330 python -m benchmarks.train_throughput --device cuda --warmup 5 \
    --steps 20 --out "$OUT" --plot
  # Why a backend's step is as fast as it is: device busy time, the op's host and device time.
  step train_profile 120 python -m benchmarks.train_profile --device cuda \
    --backends reference triton cuda
  echo "total ${SECONDS}s; logs in $OUT" | tee -a "$SUMMARY"
  exit $FAILED
fi

if [ "$STAGE" = kernels ]; then
  # 2. Kernel benchmark: every available backend (cuda, cuda_cufftdx, cuda_cufft, triton,
  #    reference, dft), the shapes of benchmarks/shapes.py, fp32 and bf16, fwd and fwd+bwd.
  #    Interrupted by its limit, it still saves the cases it finished.
  step benchmark 300 python -m benchmarks.spectral_gate --device cuda --out "$OUT" --plot
  # The measured table next to the static model's predictions (OUT/model_vs_measured.csv, with
  # the committed model CSV copied beside it): the model's first calibration.
  cp benchmarks/results/gpu_model_sm_90a.csv "$OUT/" 2>/dev/null
  step model_vs_measured 30 python -m benchmarks.model_vs_measured "$OUT"
  # The benchmark's CUDA events time what the host enqueues as much as the kernels: device
  # time per kernel against host time per call tells the two apart.
  step kernel_profile 120 python -m benchmarks.kernel_profile \
    --backends reference triton cuda_cufftdx cuda_cufft --shapes 14x14x384 28x28x192 7x7x768
fi

if [ "$STAGE" = check ]; then
  # 3. Every Triton config the pruner keeps, one by one, on the cases where earlier GPU runs
  #    failed once (the autotuner's pick varies between runs).
  step every_config 150 python -m pytest -q -rf tests/test_triton.py -k every_kept_config

  # 4. compute-sanitizer over the small GPU cases (-k sanitizer) of the kernel tests. The
  #    caching allocator is off so that memcheck sees every allocation's real bounds.
  SANITIZE=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --error-exitcode 99
            --target-processes all)
  SANITIZED_TESTS=(python -m pytest -q -x -p no:cacheprovider -k sanitizer
                   tests/test_cuda_backend.py $TRITON_TESTS)
  step memcheck 90 "${SANITIZE[@]}" --tool memcheck "${SANITIZED_TESTS[@]}"
  step racecheck 90 "${SANITIZE[@]}" --tool racecheck "${SANITIZED_TESTS[@]}"

  # 5. The GPU tests of the CUDA and Triton backends with the time left (the whole suite takes
  #    over 5 minutes on an H100: every Triton test shape is autotuned and compiled; failures
  #    print as they happen, and an interrupted run still prints its summary).
  step tests 600 python -m pytest -q --maxfail=20 -rs tests/test_cuda_backend.py $TRITON_TESTS \
    --junitxml="$OUT/tests.xml"
fi

echo "total ${SECONDS}s; logs in $OUT" | tee -a "$SUMMARY"
exit $FAILED
