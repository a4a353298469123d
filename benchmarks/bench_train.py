"""Training steps per second: minimal_icl (NumPy) against the same models in PyTorch.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_train.py [--repeat 5] [--quick]

One step is what training does: forward, query loss, backward, Adam update, on a batch
that is already drawn (data generation is timed separately). Two workloads:

  paper   the paper_setting() model (d = 2, tokens of width 3, one block of softmax
          attention + MLP, no skips, no LayerNorm); B = 64 prompts of N = 50 pairs.
  larger  tokens of width 16 (d = 15), 2 pre-LN blocks with both skips, 4 heads of width
          4 (H·K = D, the usual d_head = D/H) and an MLP of width 64 (= 4 D, the usual
          ratio); B = 256 prompts of N = 50 pairs.

When torch is importable, the same models written the way public PyTorch replications
write them (nn.Module with nn.Linear, F.softmax over the whole sequence, the output read
at the query afterwards, loss.backward(), torch.optim.Adam) run in the same process with
one thread, in float32 and float64, from the same initial weights.

Each time is the best of ``--repeat`` runs of about ``--seconds`` CPU seconds each (the
least disturbed by other processes); GFLOP/s counts the matrix products only (see
``matmul_flops``).
"""

from __future__ import annotations

import os

# One thread everywhere, set before NumPy (and OpenBLAS) is imported.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy  # noqa: E402

from minimal_icl import TransformerConfig, init_params, tree_leaves  # noqa: E402
from minimal_icl.data import default_batches_per_draw, regression_prompts, regression_stream  # noqa: E402
from minimal_icl.train import OptimizerSettings, optimizer_init, paper_setting, train_step  # noqa: E402


class Workload:
    def __init__(self, name, config, batch_size, n_context):
        self.name, self.config, self.batch_size, self.n_context = (
            name,
            config,
            batch_size,
            n_context,
        )
        self.d = config.d_token - 1


def workloads():
    larger = TransformerConfig(
        d_token=16,
        n_blocks=2,
        n_heads=4,
        d_head=4,
        d_mlp=64,
        attn_skip=True,
        mlp_skip=True,
        layer_norm=True,
    )
    return [Workload("paper", paper_setting().config, 64, 50), Workload("larger", larger, 256, 50)]


# -- floating-point operations ---------------------------------------------------------


def matmul_flops(config: TransformerConfig, B: int, T: int, last_only: bool) -> float:
    """Multiply-adds × 2 of the matrix products of one training step, roughly.

    Forward per block, with Tq the query rows (T, or 1 in the last block with last_only):
    Q: Tq·D·HK, K and V: 2·T·D·HK, scores and P·V: 2·H·Tq·T·K, output: Tq·HK·D,
    MLP: 2·Tq·D·M; times 2 flops per multiply-add and B prompts. The backward is counted
    as twice the forward (one product for the input gradient, one for the weight
    gradient), so a step is 3 × forward. Elementwise work (softmax, LayerNorm, Adam) is
    left out: it is small in flops and large in memory traffic.
    """
    D, H, K, M, L = config.d_token, config.n_heads, config.d_head, config.d_mlp, config.n_blocks
    HK = H * K
    forward_flops = 0.0
    for block in range(L):
        Tq = 1 if (last_only and block == L - 1) else T
        multiply_adds = (
            Tq * D * HK + 2 * T * D * HK + 2 * H * Tq * T * K + Tq * HK * D + 2 * Tq * D * M
        )
        forward_flops += 2.0 * B * multiply_adds
    return 3.0 * forward_flops


def peak_gemm_gflops(n: int = 512, repeat: int = 5) -> float:
    """GFLOP/s of one large float64 matrix product on one thread: the arithmetic ceiling."""
    a = numpy.random.default_rng(0).standard_normal((n, n))
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        a @ a
        best = min(best, time.process_time() - start)
    return 2.0 * n**3 / best / 1e9


def best_time_per_step(step, seconds: float, repeat: int) -> float:
    """CPU seconds per call of ``step``: the best of ``repeat`` runs of about ``seconds`` each.

    CPU time of this process (one thread) rather than wall time: on a shared machine it
    leaves out the time spent waiting for a core.
    """
    step()  # warm-up (allocations, caches)
    start = time.process_time()
    step()
    once = max(time.process_time() - start, 1e-6)
    calls = max(3, int(seconds / once))
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(calls):
            step()
        best = min(best, (time.process_time() - start) / calls)
    return best


# -- minimal_icl -----------------------------------------------------------------------


def minimal_icl_step(workload: Workload, dtype):
    config = workload.config
    params = init_params(config, seed=0, dtype=dtype)
    batch = regression_prompts(
        workload.batch_size, workload.n_context, workload.d, seed=0, dtype=dtype
    )
    optimizer = OptimizerSettings(name="adam", lr=1e-4)
    state = [params, optimizer_init(optimizer, params)]

    def step():
        # train_step runs forward(..., last_only=True): the loss reads only the query
        # position, so the last block computes its query row only (the other T − 1 rows
        # of the last block cannot change the loss).
        state[0], state[1], _ = train_step(state[0], state[1], config, batch, optimizer, 1e-4)

    return step


# -- PyTorch ---------------------------------------------------------------------------


def torch_step(workload: Workload, dtype_name: str):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(1)
    config = workload.config
    dtype = getattr(torch, dtype_name)

    class Block(nn.Module):
        def __init__(self, c: TransformerConfig):
            super().__init__()
            D, H, K, M = c.d_token, c.n_heads, c.d_head, c.d_mlp
            self.c = c
            self.q = nn.Linear(D, H * K, bias=False)
            self.k = nn.Linear(D, H * K, bias=False)
            self.v = nn.Linear(D, H * K, bias=False)
            self.o = nn.Linear(H * K, D, bias=False)
            self.fc1 = nn.Linear(D, M)
            self.fc2 = nn.Linear(M, D)
            if c.layer_norm:
                self.ln1 = nn.LayerNorm(D, eps=c.ln_eps)
                self.ln2 = nn.LayerNorm(D, eps=c.ln_eps)

        def forward(self, x):
            c = self.c
            B, T, _ = x.shape
            u1 = self.ln1(x) if c.layer_norm else x
            q = self.q(u1).view(B, T, c.n_heads, c.d_head).transpose(1, 2)
            k = self.k(u1).view(B, T, c.n_heads, c.d_head).transpose(1, 2)
            v = self.v(u1).view(B, T, c.n_heads, c.d_head).transpose(1, 2)
            att = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(c.d_head), dim=-1)
            a = self.o((att @ v).transpose(1, 2).reshape(B, T, c.n_heads * c.d_head))
            h = x + a if c.attn_skip else a
            u = self.ln2(h) if c.layer_norm else h
            m = self.fc2(F.relu(self.fc1(u)) if c.activation == "relu" else F.gelu(self.fc1(u)))
            return h + m if c.mlp_skip else m

    class Model(nn.Module):
        def __init__(self, c: TransformerConfig):
            super().__init__()
            self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_blocks)])

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    model = Model(config).to(dtype)
    # the same initial weights as minimal_icl's
    ours = dict(tree_leaves(init_params(config, seed=0)))
    rename = {
        "q.weight": "attn.W_Q",
        "k.weight": "attn.W_K",
        "v.weight": "attn.W_V",
        "o.weight": "attn.W_O",
        "fc1.weight": "mlp.W1",
        "fc1.bias": "mlp.b1",
        "fc2.weight": "mlp.W2",
        "fc2.bias": "mlp.b2",
        "ln1.weight": "ln1.gain",
        "ln1.bias": "ln1.bias",
        "ln2.weight": "ln2.gain",
        "ln2.bias": "ln2.bias",
    }
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            _, index, local = name.split(".", 2)
            tensor.copy_(torch.from_numpy(ours[f"blocks.{index}.{rename[local]}"]))
    batch = regression_prompts(workload.batch_size, workload.n_context, workload.d, seed=0)
    tokens = torch.tensor(batch.tokens, dtype=dtype)
    target = torch.tensor(batch.target, dtype=dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad()
        out = model(tokens)
        loss = ((out[:, -1, -1] - target) ** 2).mean()
        loss.backward()
        optimizer.step()

    return step


def data_cost(workload: Workload, seconds: float) -> tuple[float, float]:
    """Seconds per batch: a fresh draw per step, and the stream (several batches per draw)."""
    rng = numpy.random.default_rng(0)
    single = best_time_per_step(
        lambda: regression_prompts(workload.batch_size, workload.n_context, workload.d, rng),
        seconds,
        3,
    )
    per_draw = default_batches_per_draw(workload.batch_size, workload.n_context, workload.d)
    stream = regression_stream(workload.batch_size, workload.n_context, workload.d, seed=0)
    best = math.inf
    for _ in range(3):  # whole draws each time
        start = time.process_time()
        for _ in range(8 * per_draw):
            next(stream)
        best = min(best, (time.process_time() - start) / (8 * per_draw))
    return single, best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="length of one timed run (default 1 s)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs; the best is reported (default 5)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    args = parser.parse_args()
    seconds = 0.1 if args.quick else args.seconds
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None

    peak = peak_gemm_gflops()
    print(f"one thread; numpy {numpy.__version__}; torch {torch_version or 'not installed'}")
    print(f"arithmetic ceiling: a 512×512 float64 GEMM runs at {peak:.1f} GFLOP/s here\n")
    header = (
        f"{'workload':8s} {'implementation':34s} {'ms/step':>9s} {'steps/s':>9s} {'GFLOP/s':>8s}"
    )
    print(header)
    print("-" * len(header))
    for workload in workloads():
        T = workload.n_context + 1
        ours_flops = matmul_flops(workload.config, workload.batch_size, T, last_only=True)
        full_flops = matmul_flops(workload.config, workload.batch_size, T, last_only=False)
        rows = {}
        for dtype in ("float64", "float32"):
            rows[f"minimal_icl {dtype} (last_only)"] = (
                best_time_per_step(minimal_icl_step(workload, dtype), seconds, args.repeat),
                ours_flops,
            )
        if torch_version is not None:
            for dtype in ("float32", "float64"):
                rows[f"PyTorch CPU {dtype} (full sequence)"] = (
                    best_time_per_step(torch_step(workload, dtype), seconds, args.repeat),
                    full_flops,
                )
        for name, (seconds, flops) in rows.items():
            print(
                f"{workload.name:8s} {name:34s} {seconds * 1e3:9.3f} {1 / seconds:9.0f} {flops / seconds / 1e9:8.2f}"
            )
        ours = rows["minimal_icl float64 (last_only)"][0]
        if torch_version is not None:
            t32 = rows["PyTorch CPU float32 (full sequence)"][0]
            t64 = rows["PyTorch CPU float64 (full sequence)"][0]

            def versus(theirs, ours=ours):
                return (
                    f"{theirs / ours:.1f}× faster than"
                    if theirs >= ours
                    else f"{ours / theirs:.1f}× slower than"
                )

            print(
                f"{'':8s} minimal_icl float64 is {versus(t32)} PyTorch float32"
                f" and {versus(t64)} PyTorch float64"
            )
        single, pooled = data_cost(workload, seconds)
        print(
            f"{'':8s} data per step: {single * 1e3:.3f} ms drawn alone, {pooled * 1e3:.3f} ms from the stream"
            f" ({ours_flops / 1e6:.1f} MFLOP per minimal_icl step, {full_flops / 1e6:.1f} MFLOP full sequence)\n"
        )


if __name__ == "__main__":
    main()
