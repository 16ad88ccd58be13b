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
