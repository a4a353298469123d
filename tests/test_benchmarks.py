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


TRAIN_SCRIPT = SCRIPT.parent / "bench_train.py"


def test_bench_train_quick_prints_the_floor_as_a_paired_ratio():
    """``bench_train.py --quick`` runs (with or without the peers installed) and prints the
    table and the floor, whose GEMM is timed in the same rounds."""
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--quick", "--no-compile"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for workload in ("paper:", "larger:"):
        assert workload in out
    assert out.count("minimal_icl float64                                1.00") == 2
    assert out.count("(512×512, in the same rounds)") == 2
    # float64 and float32 against it in both workloads, the NumPy step by hand in the first
    assert out.count("× the float64 floor") == 5
    assert out.count("NumPy by hand at") == 1


def _run_checked(code: str) -> None:
    """Run ``code`` in a fresh Python beside the benchmarks (importing bench_train pins
    the process to one core, so not in this one); it must end by printing "checked"."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        cwd=SCRIPT.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "checked"


def test_bench_train_reports_a_peer_that_cannot_run():
    """A contender whose first step raises (torch.compile without a C++ compiler, say) is
    reported with its reason and left out; the others are still checked. (In a
    subprocess: importing the script pins the process to one core.)"""
    code = """
import bench_train
workload = bench_train.workloads()[0]
def broken():
    def step():
        raise RuntimeError("no working C++ compiler\\nsecond line")
    return step
makers = {"minimal_icl float32": lambda: bench_train.minimal_icl_step(workload, "float32"),
          "broken peer": broken}
gaps, failed = bench_train.check_losses(workload, makers)
assert failed == {"broken peer": "RuntimeError: no working C++ compiler"}, failed
assert set(gaps) == {"minimal_icl float32"}, gaps
assert gaps["minimal_icl float32"] <= bench_train.tolerance("minimal_icl float32"), gaps
print("checked")
"""
    _run_checked(code)


def test_bench_train_counts_the_matrix_products_of_a_step():
    """The floor's FLOP count, product by product, for the paper step (B 64, T 51, D 3,
    8 heads × 2, MLP 128, query row only): forward x_q W_Qᵀ 48, K and V 2·51·3·16 = 4896,
    scores and P·V 2·8·51·2 = 1632, W_O 48, MLP 2·3·128 = 768 multiply-adds per prompt
    (7392); backward twice that less the input gradients of Q, K and V (the tokens'
    gradient, which training does not compute): 14784 − 4944. A pre-LN first block needs
    those for LN's gain and bias: three times the forward."""
    code = """
import bench_train
from minimal_icl import TransformerConfig
paper = bench_train.workloads()[0]
assert bench_train.matmul_flops(paper.config, 64, 51, True) == 2 * 64 * (7392 + 14784 - 4944)
c = TransformerConfig(d_token=3, n_blocks=1, n_heads=8, d_head=2, d_mlp=128, layer_norm=True)
assert bench_train.matmul_flops(c, 64, 51, True) == 2 * 64 * 3 * 7392
print("checked")
"""
    _run_checked(code)


def test_bench_train_numpy_by_hand_is_the_package_step_to_the_last_bit():
    """The benchmark's hand-written NumPy step (the paper block only) computes the same
    losses as train_step, bit for bit, over four steps (so the same gradients and Adam
    updates), and refuses another configuration."""
    code = """
import bench_train
paper, larger = bench_train.workloads()
ours = bench_train.minimal_icl_step(paper, "float64")
by_hand = bench_train.numpy_by_hand_step(paper, "float64")
losses = [(float(ours()), float(by_hand())) for _ in range(4)]
assert all(a == b for a, b in losses), losses
assert losses[0][0] != losses[-1][0]
try:
    bench_train.numpy_by_hand_step(larger, "float64")
except ValueError as error:
    assert "paper's block only" in str(error)
else:
    raise AssertionError("no error for the larger workload")
print("checked")
"""
    _run_checked(code)
