"""The GPU benchmark script runs as the README says (its NumPy rows, at --small sizes)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def test_bench_gpu_numpy_rows():
    result = run("--small", "--backend", "numpy", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("numpy (CPU)")]
    assert [row[2] for row in rows] == ["float32", "float64"]
    assert all(float(value) > 0 for row in rows for value in row[3:6])
    assert "GPU" not in result.stdout.split("prompts/s)")[-1]  # no GPU rows or ratios asked for


def test_bench_gpu_refuses_no_repeats():
    result = run("--small", "--repeats", "0")
    assert result.returncode == 2 and "--repeats must be at least 1, got 0" in result.stderr
