"""Benchmarks write to an untracked folder by default and report the spread of timings."""

from __future__ import annotations

import csv
import subprocess

import pytest

from benchmarks import spectral_gate
from benchmarks.common import DEFAULT_OUT, REPO_ROOT

QUICK = ["--device", "cpu", "--shapes", "7x7x768", "--dtypes", "fp32", "--modes", "fwd",
         "--backends", "reference", "dft", "--batch", "2", "--quick", "--min-seconds", "0.05"]


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout


pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_run_leaves_git_status_unchanged(tmp_path, monkeypatch):
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    before = git_status()
    # The default folder is relative to where the benchmark runs: the repository root is the
    # usual place, and there it is ignored; here a temporary folder stands in for it.
    ignored = subprocess.run(["git", "check-ignore", "-q", str(DEFAULT_OUT / "x.csv")],
                             cwd=REPO_ROOT)
    assert ignored.returncode == 0, f"{DEFAULT_OUT} must be git-ignored"
    monkeypatch.chdir(tmp_path)
    rows = spectral_gate.main([*QUICK, "--plot"])
    assert git_status() == before
    saved = tmp_path / DEFAULT_OUT / "spectral_gate_cpu.csv"
    with saved.open() as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 2
    assert (saved.with_suffix(".png")).stat().st_size > 0
    # The spread is reported with every median.
    assert all(r["p25_us"] <= r["median_us"] <= r["p75_us"] for r in rows)


def test_list_flags_take_spaces_or_commas():
    spaced = spectral_gate.parse_args(["--shapes", "7x7x768", "14x14x256", "--dtypes", "fp32"])
    commas = spectral_gate.parse_args(["--shapes", "7x7x768,14x14x256", "--dtypes", "fp32"])
    assert spaced.shapes == commas.shapes == ["7x7x768", "14x14x256"]
    with pytest.raises(SystemExit):
        spectral_gate.parse_args(["--shapes", "3x3x3"])


def test_old_results_file_gains_the_new_columns(tmp_path):
    from benchmarks.common import append_csv

    path = tmp_path / "r.csv"
    path.write_text("a,b\n1,2\n")
    append_csv([{"a": 3, "b": 4, "c": 5}], path, ["a", "b", "c"])
    with path.open() as f:
        assert list(csv.DictReader(f)) == [{"a": "1", "b": "2", "c": ""},
                                           {"a": "3", "b": "4", "c": "5"}]


def test_cpu_timing_interleaves_backends_and_pairs_rounds():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("reference", "a", "b")}
    times = spectral_gate.time_cpu_interleaved(runs, min_seconds=0.0, min_rounds=4)
    assert calls[:3] == ["reference", "a", "b"]  # the warm-up call of each
    rounds = [calls[3 + 3 * i: 6 + 3 * i] for i in range(4)]
    # every backend once per round, and who goes first rotates
    assert all(sorted(r) == ["a", "b", "reference"] for r in rounds)
    assert [r[0] for r in rounds] == ["reference", "a", "b", "reference"]
    assert all(len(t) == 4 for t in times.values())
    # A machine that slows down 3x mid-run leaves the paired ratio alone.
    reference = [2.0, 2.0, 6.0, 6.0, 6.0]
    candidate = [1.0, 1.0, 3.0, 3.0, 3.0]
    assert spectral_gate.paired_speedups(reference, candidate) == (2.0, 2.0, 2.0)


def test_model_vs_measured_joins_times_and_triton_configs(tmp_path):
    """A GPU run's rows (here made up, with the autotuner's configs as the benchmark writes
    them) set against the committed model: fwd+bwd is the model's fwd + bwd."""
    from benchmarks import model_vs_measured as mvm

    with mvm.MODEL.open() as f:
        model = {(r["backend"], r["shape"], r["dtype"], r["direction"]): r
                 for r in csv.DictReader(f) if r["batch"] == "128"}
    fwd, bwd = (model[("triton", "14x14x384", "bf16", d)] for d in ("fwd", "bwd"))
    measured = tmp_path / "spectral_gate_gpu.csv"
    fields = ["device", "backend", "shape", "batch", "dtype", "mode", "median_us", "commit",
              "config"]
    with measured.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for mode, us, config in (("fwd", 20.0, "A"), ("fwd+bwd", 60.0, "A | B")):
            writer.writerow({"device": "H100", "backend": "triton", "shape": "14x14x384",
                             "batch": 128, "dtype": "bf16", "mode": mode, "median_us": us,
                             "commit": "x", "config": config})
        writer.writerow({**dict.fromkeys(fields, ""), "backend": "triton", "shape": "3x3x3",
                         "batch": 128, "dtype": "bf16", "mode": "fwd", "median_us": 1.0})
    rows = mvm.compare(measured)
    assert [r["mode"] for r in rows] == ["fwd", "fwd+bwd"]  # the unmodelled shape is left out
    assert rows[0]["predicted_us"] == round(float(fwd["predicted_us"]), 2)
    total = float(fwd["predicted_us"]) + float(bwd["predicted_us"])
    assert rows[1]["measured_over_predicted"] == round(60.0 / total, 2)
    assert rows[1]["measured_config"] == "A | B"
    assert rows[1]["model_config"] == f"{fwd['config']} | {bwd['config']}"
    assert "batch/program=" in fwd["config"]


def test_interrupted_run_saves_the_cases_it_finished(tmp_path, monkeypatch):
    """A time limit (SIGINT/SIGTERM) in the second case keeps the first case's rows: they are
    printed, saved, and the run exits with 130."""
    real_interleaved = spectral_gate.time_cpu_interleaved
    calls = []

    def interrupted_second_time(runs, min_seconds):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_interleaved(runs, min_seconds)

    monkeypatch.setattr(spectral_gate, "time_cpu_interleaved", interrupted_second_time)
    quick_two_shapes = [a if a != "7x7x768" else "7x7x768,14x14x256" for a in QUICK]
    with pytest.raises(SystemExit) as exit_info:
        spectral_gate.main([*quick_two_shapes, "--out", str(tmp_path)])
    assert exit_info.value.code == 130
    with (tmp_path / "spectral_gate_cpu.csv").open() as f:
        saved = list(csv.DictReader(f))
    assert [(r["shape"], r["backend"]) for r in saved] == [("7x7x768", "reference"),
                                                           ("7x7x768", "dft")]


def test_train_profile_reports_each_backend_on_cpu():
    from benchmarks import train_profile

    rows = train_profile.main(["--device", "cpu", "--backends", "reference", "dft",
                               "--steps", "1", "--warmup", "1", "--batch-size", "2"])
    assert [r["backend"] for r in rows] == ["reference", "dft"]
    for r in rows:
        assert r["wall_us"] > 0 and r["op_host_us"] > 0
        # The digits model's spectral layers: one forward and one backward op call each.
        assert r["op_calls"] > 0 and r["op_calls"] % 2 == 0
        assert r["device_busy_us"] == 0 and r["top_kernels"] == []  # no device on a CPU run
