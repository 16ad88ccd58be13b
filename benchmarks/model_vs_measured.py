"""Put GPU measurements next to the static model's predictions, row by row.

    python -m benchmarks.model_vs_measured OUTDIR

Reads the measured kernel benchmark ``OUTDIR/spectral_gate_gpu.csv`` (written by
``benchmarks/gpu_session.sh``) and the committed static model
``benchmarks/results/gpu_model_sm_90a.csv``, joins them on backend, shape, batch, dtype
and mode (the model's fwd, and fwd+bwd as its fwd + bwd), and writes
``OUTDIR/model_vs_measured.csv`` with the ratio measured / predicted. This is how the model
gets calibrated the first day a GPU is lent: a ratio far from 1 says which bound or
constant (``benchmarks/gpu_target.py``) is wrong, and the measured order of the backends is
what ``auto`` should follow from then on (``spectformer_kernels/cuda_auto_table.py``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from spectformer_kernels.cuda_backend import cuda_path

MODEL = Path(__file__).resolve().parent / "results" / "gpu_model_sm_90a.csv"
FIELDS = ["device", "backend", "shape", "batch", "dtype", "mode", "measured_us",
          "predicted_us", "measured_over_predicted", "model_bound", "measured_config",
          "model_config", "commit"]


def compare(measured_csv: Path, model_csv: Path = MODEL) -> list:
    with model_csv.open() as f:
        model = list(csv.DictReader(f))
    predicted = {}
    for r in model:
        if r["predicted_us"]:
            predicted[(r["backend"], r["shape"], r["batch"], r["dtype"], r["direction"])] = r
    rows = []
    with measured_csv.open() as f:
        for m in csv.DictReader(f):
            backend = m["backend"]
            if backend == "cuda":  # the path the cuda backend runs for this grid
                h, w = (int(n) for n in m["shape"].split("x")[:2])
                backend = f"cuda_{cuda_path(h, w)}"
            key = (backend, m["shape"], m["batch"], m["dtype"])
            parts = [predicted.get((*key, d)) for d in
                     (("fwd",) if m["mode"] == "fwd" else ("fwd", "bwd"))]
            if not all(parts):
                continue
            total = sum(float(p["predicted_us"]) for p in parts)
            rows.append({
                "device": m["device"], "backend": m["backend"], "shape": m["shape"],
                "batch": m["batch"], "dtype": m["dtype"], "mode": m["mode"],
                "measured_us": m["median_us"], "predicted_us": round(total, 2),
                "measured_over_predicted": round(float(m["median_us"]) / total, 2),
                "model_bound": "+".join(p["bound"] for p in parts),
                # Triton: the autotuner's configs against the model's (fwd, then bwd)
                "measured_config": m.get("config", ""),
                "model_config": " | ".join(p["config"] for p in parts),
                "commit": m["commit"],
            })
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    rows = compare(args.outdir / "spectral_gate_gpu.csv")
    out = args.outdir / "model_vs_measured.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(f"{r['shape']:>10} {r['dtype']:>5} {r['mode']:>8} {r['backend']:>10} "
              f"measured {float(r['measured_us']):9.1f} us  model {r['predicted_us']:9.1f} us  "
              f"x{r['measured_over_predicted']}")
    print(f"{len(rows)} rows in {out} (measured on {rows[0]['device'] if rows else '?'}; "
          "predictions are the static model)")


if __name__ == "__main__":
    main()
