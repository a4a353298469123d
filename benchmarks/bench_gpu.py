"""NumPy on the CPU against CuPy on a GPU: training steps and implicit updates per second.

    python benchmarks/bench_gpu.py                 # the large workload below
    python benchmarks/bench_gpu.py --small         # a quick look (CPU-friendly sizes)
    python benchmarks/bench_gpu.py --backend cupy  # the GPU rows alone (the CPU ones take minutes)

Workload (default): B = 1024 prompts, N = 255 context pairs (T = 256 tokens),
d_token = 64, 4 pre-LN blocks with both skips, H = 4 heads of width 16, MLP width 256
with GELU, softmax attention. Each backend runs the same minimal_icl code (array API), in
float32 and float64; the GPU numbers appear only where CuPy finds a GPU. On one shared
CPU core a float64 step at B = 64 took 2.5 to 11 s and an implicit update 1.2 to 1.8 s,
so at B = 1024 each takes tens of seconds and the CPU rows minutes (one warm-up and
``--repeats`` calls of each).

A training step is forward (query row only in the last block) + loss + backward + Adam.
An implicit update is ``implicit_update`` for all prompts of the batch (one forward with
the context, then each block on the query alone). The batch is drawn once and kept on
the device: the benchmark measures the model, not the data pipeline.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time

import numpy

import minimal_icl
from minimal_icl.data import regression_prompts
from minimal_icl.implicit import implicit_update
from minimal_icl.train import OptimizerSettings, optimizer_init, train_step


def backends(which: str = "all"):
    """(name, xp, synchronize) for NumPy and, where a GPU exists, CuPy; ``which`` is
    "all", "numpy" or "cupy"."""
    out = [("numpy (CPU)", numpy, lambda: None)] if which in ("all", "numpy") else []
    if which == "numpy":
        return out
    try:
        import cupy

        if cupy.is_available():
            import array_api_compat.cupy as cp

            out.append(("cupy (GPU)", cp, cupy.cuda.Device().synchronize))
    except ImportError:
        pass
    return out


def timed(fn, synchronize, repeats: int) -> float:
    """Seconds per call: one warm-up call, then the mean of ``repeats`` calls."""
    fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="B=128, N=63, 2 blocks")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--backend", choices=("all", "numpy", "cupy"), default="all",
                        help="which rows to time (default: NumPy, and CuPy where a GPU exists)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    if args.small:
        B, N, D, L, H, K, M = 128, 63, 32, 2, 4, 8, 128
    else:
        B, N, D, L, H, K, M = 1024, 255, 64, 4, 4, 16, 256
    config = minimal_icl.TransformerConfig(
        d_token=D, n_blocks=L, n_heads=H, d_head=K, d_mlp=M, attention="softmax",
        activation="gelu", attn_skip=True, mlp_skip=True, layer_norm=True,
    )
    settings = OptimizerSettings(name="adam", lr=1e-4)
    print(f"workload: B={B} prompts, N={N} pairs (T={N + 1}), d_token={D}, {L} pre-LN blocks, "
          f"H={H}, d_head={K}, d_mlp={M}")
    print(f"{'backend':<14}{'dtype':<9}{'train steps/s':>15}{'implicit updates/s':>22}"
          f"{'(prompts/s)':>14}")

    rows = {}
    for name, xp, synchronize in backends(args.backend):
        for dtype in ("float32", "float64"):
            params = minimal_icl.init_params(config, seed=0, dtype=dtype, xp=xp)
            batch = regression_prompts(B, N, D - 1, seed=0, dtype=dtype, xp=xp)
            state = optimizer_init(settings, params)

            def step():
                train_step(params, state, config, batch, settings, settings.lr)

            def update():
                implicit_update(params, config, batch.context, batch.query)

            t_step = timed(step, synchronize, args.repeats)
            t_update = timed(update, synchronize, args.repeats)
            rows[(name, dtype)] = (1 / t_step, 1 / t_update)
            print(f"{name:<14}{dtype:<9}{1 / t_step:>15.3f}{1 / t_update:>22.3f}{B / t_update:>14.0f}")

    if args.backend == "numpy":
        return
    gpu = [key for key in rows if key[0].startswith("cupy")]
    if not gpu:
        print("CuPy with a GPU not found: the GPU columns are skipped "
              "(pip install 'minimal_icl[gpu]' on a machine with an NVIDIA GPU).")
        return
    if args.backend == "cupy":
        return
    for dtype in ("float32", "float64"):
        cpu, dev = rows[("numpy (CPU)", dtype)], rows[("cupy (GPU)", dtype)]
        print(f"GPU / CPU, {dtype}: training {dev[0] / cpu[0]:.1f}x, implicit update "
              f"{dev[1] / cpu[1]:.1f}x")


if __name__ == "__main__":
    main()
