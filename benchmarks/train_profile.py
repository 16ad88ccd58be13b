"""Where a training step's time goes, per spectral-gating backend: the step's wall time, the
device's busy time, and the spectral op's own host and device time (``torch.profiler``).

``benchmarks.train_throughput`` says how fast a step is; this says why. A backend whose op
is fast on the device can still leave the step no faster when the host cannot enqueue the
step's kernels as fast as the device runs them (device busy time well under the wall time),
or when its op's host time grows the step.

    python -m benchmarks.train_profile --models spectformer_s --backends reference triton cuda
    python -m benchmarks.train_profile --device cpu          # a small CPU case (host time only)
"""

from __future__ import annotations

import argparse
import time

import torch

import spectformer
from benchmarks.common import device_time_us
from benchmarks.train_throughput import CPU_MODEL, GPU_MODELS, sync
from spectformer.augment import smooth_one_hot
from spectformer.runtime import TrainStep, adamw

SPECTRAL_OPS = ("spectformer::spectral_gate", "spectformer::spectral_gate_backward")


def profile_steps(model_name: str, backend: str, args, device: torch.device) -> dict:
    """Warm up, then profile ``args.steps`` steps; per-step figures in microseconds."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = spectformer.create_model(model_name, backend=backend).to(device).train()
    in_chans, height, width = model.default_cfg["input_size"]
    images = torch.randn(args.batch_size, in_chans, height, width, device=device)
    target = smooth_one_hot(torch.randint(model.num_classes, (args.batch_size,), device=device),
                            model.num_classes, smoothing=0.1)
    step = TrainStep(model, adamw(model, lr=1e-4, weight_decay=0.05), args.amp, device,
                     clip_grad=1.0)
    for _ in range(args.warmup):
        step(images, target)
    sync(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        begin = time.perf_counter()
        for _ in range(args.steps):
            step(images, target)
        sync(device)
        wall = (time.perf_counter() - begin) / args.steps
    events = prof.key_averages()
    ops = [e for e in events if e.key in SPECTRAL_OPS]
    # Only kernel (and memcpy/memset) events carry self device time.
    kernels = sorted(((e.key, device_time_us(e, self_only=True)) for e in events
                      if device_time_us(e, self_only=True) > 0),
                     key=lambda kv: -kv[1]) if device.type == "cuda" else []
    return {
        "wall_us": wall * 1e6,
        "device_busy_us": sum(us for _, us in kernels) / args.steps,
        "op_calls": sum(e.count for e in ops) / args.steps,
        "op_host_us": sum(e.cpu_time_total for e in ops) / args.steps,
        "op_device_us": sum(device_time_us(e) for e in ops) / args.steps,
        "top_kernels": [(name, us / args.steps) for name, us in kernels[:args.top]],
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser("python -m benchmarks.train_profile", description=__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", help=f"default: {GPU_MODELS[0]} on GPU, "
                        f"{CPU_MODEL} on CPU")
    parser.add_argument("--backends", nargs="+",
                        help="default: reference triton cuda on GPU, reference dft on CPU")
    parser.add_argument("--batch-size", type=int, help="default 128 on GPU, 8 on CPU")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"),
                        help="default bf16 on GPU, none on CPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="kernels listed per backend")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    gpu = args.device == "cuda"
    args.models = args.models or [GPU_MODELS[0] if gpu else CPU_MODEL]
    args.backends = args.backends or (["reference", "triton", "cuda"] if gpu else ["reference", "dft"])
    args.batch_size = args.batch_size or (128 if gpu else 8)
    args.amp = args.amp or ("bf16" if gpu else "none")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    device = torch.device(args.device)
    print(f"# {args.device}, batch {args.batch_size}, amp {args.amp}, {args.steps} profiled "
          f"steps after {args.warmup}; times per step, in microseconds", flush=True)
    rows = []
    for model_name in args.models:
        for backend in args.backends:
            try:
                r = profile_steps(model_name, backend, args, device)
            except (RuntimeError, ValueError) as err:
                print(f"{model_name} / {backend}: {type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]}", flush=True)
                continue
            rows.append({"model": model_name, "backend": backend, **r})
            print(f"{model_name} / {backend}: wall {r['wall_us']:.0f}, device busy "
                  f"{r['device_busy_us']:.0f}, spectral op: {r['op_calls']:.0f} calls, host "
                  f"{r['op_host_us']:.0f}, device {r['op_device_us']:.0f}", flush=True)
            for name, us in r["top_kernels"]:
                print(f"    {us:10.1f}  {name[:110]}")
    return rows


if __name__ == "__main__":
    main()
