"""One training step of minimal_icl against fair peers, interleaved in one process on one core.

    make bench                                   (the `bench` extra: PyTorch, JAX)
    python benchmarks/bench_train.py [--rounds 11] [--block 0.25] [--core N] [--quick]

One step is what training does: forward, query loss, backward, Adam update, on a batch
that is already drawn. Two workloads:

  paper   the paper_setting() model (d = 2, tokens of width 3, one block of softmax
          attention + MLP, no skips, no LayerNorm); B = 64 prompts of N = 50 pairs.
  larger  tokens of width 16 (d = 15), 2 pre-LN blocks with both skips, 4 heads of width
          4 and an MLP of width 64; B = 256 prompts of N = 50 pairs.

Contenders, each from the same initial weights and the same batch:

  minimal_icl float64, float32   train.train_step (the loss reads only the query, so the
                                 last block computes the query row only)
  PyTorch eager, query-only      the same trick: keys and values of every token, the query,
                                 attention output and MLP of the last block at the query
                                 row only; F.scaled_dot_product_attention, autograd,
                                 torch.optim.Adam(fused=True); float32 and float64
  PyTorch torch.compile          the query-only step above, forward, loss, backward and
                                 Adam through torch.compile (inductor, C++ kernels from
                                 gcc); float32 and float64 (skip with --no-compile)
  JAX jit, query-only            the same model as pure functions, jax.grad and Adam in one
                                 jax.jit; float32 and float64 (when jax is installed)
  PyTorch eager, whole sequence  (extra row, not a fair peer) every block on all T rows,
                                 as public replications write it, torch.optim.Adam; float32
  NumPy by hand                  (extra row, paper workload only) the same NumPy products
                                 as minimal_icl's step in one function written for the
                                 paper's block, without records or checks: what those
                                 NumPy calls cost alone; float64, equal to minimal_icl's
                                 step to the last bit

Method: the process is pinned to one core (os.sched_setaffinity) with one thread in
every library. After a warm-up (and JIT compilation), each round times a block of about
``--block`` seconds of every contender, in an order that rotates from round to round;
the time per step is the process CPU time of the block divided by its steps. The table
gives, per contender, the median over rounds of its time divided by minimal_icl float64's
time in the same round (a paired ratio: lower is faster), and the median time per step.

Before timing, every peer's loss is checked against minimal_icl float64's, before and
after one Adam step from the same weights on the same batch. The benchmark also prints
the single-core floor of a step (its matrix-product FLOPs at the single-thread rate of a
512×512 matrix product, timed as one more contender in the same rounds, so that "× the
floor" is a paired ratio too: the machine's speed drifts between processes and over
minutes, by 20 % and more on a shared virtual machine) and the number of NumPy calls in
one minimal_icl step.
"""

from __future__ import annotations

import os
import sys

# One core and one thread everywhere, before NumPy, PyTorch or JAX start any thread.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)


def _pin(argv) -> int:
    """Pin this process to one core (``--core N``, default the last allowed); return it."""
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[-1]
    if "--core" in argv:
        core = int(argv[argv.index("--core") + 1])
    os.sched_setaffinity(0, {core})
    return core


CORE = _pin(sys.argv)

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy  # noqa: E402

from minimal_icl import TransformerConfig, init_params, tree_leaves  # noqa: E402
from minimal_icl.data import regression_prompts  # noqa: E402
from minimal_icl.train import (  # noqa: E402
    OptimizerSettings,
    optimizer_init,
    paper_setting,
    train_step,
)

LR = 1e-3  # the learning rate of every contender (the same Adam settings everywhere)
REFERENCE = "minimal_icl float64"
BY_HAND = "NumPy by hand, paper block only, float64 (extra)"


class Workload:
    def __init__(self, name, config, batch_size, n_context):
        self.name, self.config = name, config
        self.batch_size, self.n_context = batch_size, n_context
        self.d = config.d_token - 1

    def describe(self) -> str:
        c = self.config
        return (
            f"B {self.batch_size}, N {self.n_context}, D {c.d_token}, {c.n_blocks} block(s),"
            f" {c.n_heads} heads × {c.d_head}, MLP {c.d_mlp}"
            f"{', pre-LN, skips' if c.layer_norm else ', no skips, no LN'}"
        )


def workloads():
    larger = TransformerConfig(
        d_token=16, n_blocks=2, n_heads=4, d_head=4, d_mlp=64,
        attn_skip=True, mlp_skip=True, layer_norm=True,
    )  # fmt: skip
    return [Workload("paper", paper_setting().config, 64, 50), Workload("larger", larger, 256, 50)]


# -- floating-point operations, the floor, the call count --------------------------------


def matmul_flops(config: TransformerConfig, B: int, T: int, last_only: bool) -> float:
    """2 × multiply-adds of the matrix products of one training step.

    Forward per block, with Tq the query rows (T, or 1 in the last block with last_only):
    Q: Tq·D·HK, K and V: 2·T·D·HK, scores and P·V: 2·H·Tq·T·K, output: Tq·HK·D,
    MLP: 2·Tq·D·M; times 2 flops per multiply-add and B prompts. The backward of a
    product needs one product for the weight (or second operand's) gradient and one for
    the input gradient, twice the forward, except where the input is the tokens: training
    needs no token gradient, so a first block without LayerNorm skips its projections'
    input gradients (Q, K, V: Tq·D·HK + 2·T·D·HK). (A pre-LN first block needs them for
    LN's gain and bias.) Elementwise work (softmax, LayerNorm, Adam) is left out: it is
    small in flops and large in memory traffic.
    """
    D, H, K, M, L = config.d_token, config.n_heads, config.d_head, config.d_mlp, config.n_blocks
    HK = H * K
    multiply_adds = 0.0
    for block in range(L):
        Tq = 1 if (last_only and block == L - 1) else T
        projections = Tq * D * HK + 2 * T * D * HK
        forward = projections + 2 * H * Tq * T * K + Tq * HK * D + 2 * Tq * D * M
        backward = 2 * forward
        if block == 0 and not config.layer_norm:
            backward -= projections  # no gradient for the tokens
        multiply_adds += forward + backward
    return 2.0 * B * multiply_adds


GEMM_N = 512  # the matrix product that measures the single-core rate


def gemm_step(dtype):
    """One GEMM_N × GEMM_N matrix product (2·GEMM_N³ flops) on this core and thread: timed
    in the same rounds as the contenders, so that the floor is a paired ratio too."""
    a = numpy.random.default_rng(0).standard_normal((GEMM_N, GEMM_N)).astype(dtype)

    def step():
        return a @ a

    return step


def numpy_calls(step) -> tuple[int, int]:
    """(NumPy calls, Python calls) in one call of ``step``, counted with ``sys.setprofile``.

    A NumPy call is a call event into NumPy's C code: a ufunc, a NumPy function or an
    ndarray method. Array operators (a @ b, a * b, a[i]) run NumPy code without a call
    event and are not in this count.
    """
    counts = {"numpy": 0, "python": 0}

    def is_numpy(function) -> bool:
        if isinstance(function, numpy.ufunc):
            return True
        owner = getattr(function, "__self__", None)
        if isinstance(owner, (numpy.ndarray, numpy.generic)):
            return True
        module = getattr(function, "__module__", None) or ""
        return module.startswith("numpy") or type(owner).__module__.startswith("numpy")

    def profile(frame, event, arg):
        if event == "c_call" and is_numpy(arg):
            counts["numpy"] += 1
        elif event == "call":
            counts["python"] += 1

    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(None)
    return counts["numpy"], counts["python"]


# -- minimal_icl -------------------------------------------------------------------------


def minimal_icl_step(workload: Workload, dtype: str):
    """A step function returning the loss (a 0-d array) of the parameters before the step."""
    config = workload.config
    params = init_params(config, seed=0, dtype=dtype)
    batch = regression_prompts(
        workload.batch_size, workload.n_context, workload.d, seed=0, dtype=dtype
    )
    optimizer = OptimizerSettings(name="adam", lr=LR)
    state = [params, optimizer_init(optimizer, params)]

    def step():
        # forward(..., last_only=True) inside: the last block computes the query row only
        state[0], state[1], loss = train_step(state[0], state[1], config, batch, optimizer, LR)
        return loss

    return step


def numpy_by_hand_step(workload: Workload, dtype: str):
    """The paper step as one NumPy function written for this model only: what the same
    NumPy operations cost without the package's generality, records and checks.

    The products of ``model_fast``'s query row (the heads' circuits, the unshifted
    softmax, the augmented products with [x, 1]) in one function body, on the parameters
    as views of one flat vector, the gradients written into one flat vector in place, the
    ReLU as a product with its 0/1 mask, no argument checks, no range check of ℓ (which
    the package uses to fall back on the shifted softmax), and Adam on the flat vectors.
    Its loss and gradients are minimal_icl's to the last bit here. Only the paper's
    configuration: one block of softmax attention, ReLU MLP, no skips, no LayerNorm.
    """
    c = workload.config
    if c.n_blocks != 1 or c.layer_norm or c.attn_skip or c.mlp_skip or c.activation != "relu":
        raise ValueError("the NumPy step by hand is written for the paper's block only")
    B, T, D = workload.batch_size, workload.n_context + 1, c.d_token
    H, K, M = c.n_heads, c.d_head, c.d_mlp
    names, leaves = zip(*tree_leaves(init_params(c, seed=0, dtype=dtype)))
    assert [n.rsplit(".", 1)[-1] for n in names] == [
        "W_Q", "W_K", "W_V", "W_O", "W1", "b1", "W2", "b2"], names  # fmt: skip
    ends = numpy.cumsum([0] + [a.size for a in leaves]).tolist()
    span = [slice(ends[i], ends[i + 1]) for i in range(len(leaves))]
    batch = regression_prompts(B, workload.n_context, workload.d, seed=0, dtype=dtype)
    x, target = batch.tokens, batch.target
    xT = numpy.empty((B, D + 1, T), dtype=dtype)  # [x, 1]ᵀ
    xT[:, :D, :] = x.transpose(0, 2, 1)
    xT[:, D, :] = 1.0
    x_q = x[:, -1, :]
    scale = 1.0 / math.sqrt(K)
    ones = numpy.ones((1, B), dtype=dtype)
    minus_ones = -numpy.ones((D, 1), dtype=dtype)
    P = ends[-1]
    state = {"theta": numpy.concatenate([a.ravel() for a in leaves]), "t": 0,
             "m": numpy.zeros(P, dtype=dtype), "v": numpy.zeros(P, dtype=dtype)}  # fmt: skip
    g = numpy.empty(P, dtype=dtype)
    gQ, gK, gV, gO, gW1, gb1, gW2, gb2 = (g[s] for s in span)

    def loss_and_grads(theta):
        WQ, WK, WV = (theta[s].reshape(H, K, D) for s in span[:3])
        WOt = theta[span[3]].reshape(D, H, K).transpose(1, 2, 0)  # (H, K, D)
        W1, b1 = theta[span[4]].reshape(M, D), theta[span[5]]
        W2, b2 = theta[span[6]].reshape(D, M), theta[span[7]]
        QK = (WQ.mT @ WK) * scale  # (H, D, D)
        OV = (WV.mT @ WOt).reshape(H * D, D)
        r = (x_q @ QK.transpose(1, 0, 2).reshape(D, H * D)).reshape(B, H, D)
        E = numpy.exp(r @ xT[:, :D, :])  # (B, H, T)
        yl = E @ xT.mT  # (B, H, D + 1)
        inv_norm = 1.0 / yl[..., D:]
        y_rows = (yl[..., :D] * inv_norm).reshape(B, H * D)
        A = y_rows @ OV  # (B, D)
        pre = A @ W1.T
        pre += b1
        mask = (pre > 0.0).astype(dtype)
        hidden = pre * mask
        out = hidden @ W2.T
        out += b2
        residual = out[:, -1] - target
        loss = (residual @ residual) / B
        dout = numpy.zeros((B, D), dtype=dtype)
        dout[:, -1] = residual * (2.0 / B)
        numpy.matmul(dout.T, hidden, out=gW2.reshape(D, M))
        numpy.matmul(ones, dout, out=gb2.reshape(1, D))
        dpre = (dout @ W2) * mask
        numpy.matmul(dpre.T, A, out=gW1.reshape(M, D))
        numpy.matmul(ones, dpre, out=gb1.reshape(1, M))
        dA = dpre @ W1
        dy_rows = dA @ OV.T
        dOV = (y_rows.T @ dA).reshape(H, D, D)
        row = ((dy_rows * y_rows).reshape(B * H, D) @ minus_ones).reshape(B, H, 1)
        dyl = numpy.concatenate([dy_rows.reshape(B, H, D), row], axis=-1)
        dyl *= inv_norm
        dS = dyl @ xT
        dS *= E
        dr = (dS @ xT.mT)[..., :D].reshape(B, H * D)
        dQK = (x_q.T @ dr).reshape(D, H, D).transpose(1, 0, 2)
        numpy.matmul(WK, dQK.mT, out=gQ.reshape(H, K, D))
        numpy.multiply(gQ, scale, out=gQ)
        numpy.matmul(WQ, dQK, out=gK.reshape(H, K, D))
        numpy.multiply(gK, scale, out=gK)
        numpy.matmul(WOt, dOV.mT, out=gV.reshape(H, K, D))
        gO.reshape(D, H, K)[...] = (WV @ dOV).transpose(2, 0, 1)
        return loss

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def step():
        loss = loss_and_grads(state["theta"])
        t = state["t"] + 1
        root = math.sqrt(1.0 - beta2**t)
        alpha = LR * root / (1.0 - beta1**t)
        m = beta1 * state["m"] + (1.0 - beta1) * g
        v = beta2 * state["v"] + (1.0 - beta2) * (g * g)
        state["theta"] = state["theta"] - alpha * m / (numpy.sqrt(v) + eps * root)
        state["m"], state["v"], state["t"] = m, v, t
        return loss

    return step


# -- PyTorch -----------------------------------------------------------------------------

TORCH_NAMES = {  # PyTorch module parameter -> minimal_icl parameter (same (out, in) layout)
    "q.weight": "attn.W_Q", "k.weight": "attn.W_K", "v.weight": "attn.W_V",
    "o.weight": "attn.W_O", "fc1.weight": "mlp.W1", "fc1.bias": "mlp.b1",
    "fc2.weight": "mlp.W2", "fc2.bias": "mlp.b2", "ln1.weight": "ln1.gain",
    "ln1.bias": "ln1.bias", "ln2.weight": "ln2.gain", "ln2.bias": "ln2.bias",
}  # fmt: skip


def torch_step(workload: Workload, dtype_name: str, query_only: bool, compiled: bool = False):
    """A PyTorch step: query-only with fused Adam, or whole-sequence with Adam; eager, or
    (``compiled``) the whole step (forward, loss, backward, Adam) through torch.compile."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(1)
    c = workload.config
    dtype = getattr(torch, dtype_name)
    H, K = c.n_heads, c.d_head

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            D, M = c.d_token, c.d_mlp
            self.q = nn.Linear(D, H * K, bias=False)
            self.k = nn.Linear(D, H * K, bias=False)
            self.v = nn.Linear(D, H * K, bias=False)
            self.o = nn.Linear(H * K, D, bias=False)
            self.fc1 = nn.Linear(D, M)
            self.fc2 = nn.Linear(M, D)
            if c.layer_norm:
                self.ln1 = nn.LayerNorm(D, eps=c.ln_eps)
                self.ln2 = nn.LayerNorm(D, eps=c.ln_eps)

        def forward(self, x, last_only: bool):
            B, T, _ = x.shape
            Tq = 1 if last_only else T
            u1 = self.ln1(x) if c.layer_norm else x  # (B, T, D)
            q = self.q(u1[:, -Tq:]).view(B, Tq, H, K).transpose(1, 2)  # (B, H, Tq, K)
            k = self.k(u1).view(B, T, H, K).transpose(1, 2)  # (B, H, T, K)
            v = self.v(u1).view(B, T, H, K).transpose(1, 2)
            if c.attention == "softmax":
                heads = F.scaled_dot_product_attention(q, k, v, is_causal=c.causal and Tq == T)
            else:
                heads = (q @ k.transpose(-2, -1) / math.sqrt(K)) @ v
            a = self.o(heads.transpose(1, 2).reshape(B, Tq, H * K))  # (B, Tq, D)
            h = x[:, -Tq:] + a if c.attn_skip else a
            u = self.ln2(h) if c.layer_norm else h
            hidden = self.fc1(u)
            m = self.fc2(F.relu(hidden) if c.activation == "relu" else F.gelu(hidden))
            return h + m if c.mlp_skip else m

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block() for _ in range(c.n_blocks)])

        def forward(self, x):
            for index, block in enumerate(self.blocks):
                x = block(x, last_only=query_only and index == len(self.blocks) - 1)
            return x

    model = Model().to(dtype)
    ours = dict(tree_leaves(init_params(c, seed=0)))
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            _, index, local = name.split(".", 2)
            tensor.copy_(torch.from_numpy(ours[f"blocks.{index}.{TORCH_NAMES[local]}"]))
    batch = regression_prompts(workload.batch_size, workload.n_context, workload.d, seed=0)
    tokens = torch.tensor(batch.tokens, dtype=dtype)
    target = torch.tensor(batch.target, dtype=dtype)
    if query_only:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(tokens)  # (B, 1, D) query-only, (B, T, D) whole sequence
        loss = ((out[:, -1, -1] - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    if compiled:
        return torch.compile(step)  # inductor: C++ kernels built with the system's gcc
    return step


# -- JAX ---------------------------------------------------------------------------------


def jax_step(workload: Workload, dtype_name: str):
    """A jax.jit step (loss, gradient and Adam in one compiled function), query-only."""
    import jax
    import jax.numpy as jnp

    c = workload.config
    H, K = c.n_heads, c.d_head
    dtype = getattr(jnp, dtype_name)
    # ModelParams is a tree of NamedTuples: a JAX pytree as it is
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), init_params(c, seed=0))
    batch = regression_prompts(workload.batch_size, workload.n_context, workload.d, seed=0)
    tokens = jnp.asarray(batch.tokens, dtype=dtype)
    target = jnp.asarray(batch.target, dtype=dtype)

    def layer_norm(x, p):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + c.ln_eps) * p.gain + p.bias

    def block(x, p, last_only):
        B, T, _ = x.shape
        Tq = 1 if last_only else T
        u1 = layer_norm(x, p.ln1) if c.layer_norm else x
        q = (u1[:, -Tq:] @ p.attn.W_Q.T).reshape(B, Tq, H, K)
        k = (u1 @ p.attn.W_K.T).reshape(B, T, H, K)
        v = (u1 @ p.attn.W_V.T).reshape(B, T, H, K)
        scores = jnp.einsum("bqhk,bthk->bhqt", q, k) / math.sqrt(K)
        if c.causal and Tq == T:
            scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-1) if c.attention == "softmax" else scores
        heads = jnp.einsum("bhqt,bthk->bqhk", weights, v).reshape(B, Tq, H * K)
        a = heads @ p.attn.W_O.T
        h = x[:, -Tq:] + a if c.attn_skip else a
        u = layer_norm(h, p.ln2) if c.layer_norm else h
        hidden = u @ p.mlp.W1.T + p.mlp.b1
        if c.activation == "relu":
            hidden = jax.nn.relu(hidden)
        else:
            hidden = jax.nn.gelu(hidden, approximate=False)
        m = hidden @ p.mlp.W2.T + p.mlp.b2
        return h + m if c.mlp_skip else m

    def loss_fn(p):
        x = tokens
        for index, bp in enumerate(p.blocks):
            x = block(x, bp, last_only=index == len(p.blocks) - 1)
        return jnp.mean((x[:, -1, -1] - target) ** 2)

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def update(p, m, v, t):
        loss, g = jax.value_and_grad(loss_fn)(p)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m_, g_: beta1 * m_ + (1 - beta1) * g_, m, g)
        v = jax.tree_util.tree_map(lambda v_, g_: beta2 * v_ + (1 - beta2) * g_ * g_, v, g)
        m_hat_scale = 1 / (1 - beta1**t)
        v_hat_scale = 1 / (1 - beta2**t)
        p = jax.tree_util.tree_map(
            lambda p_, m_, v_: p_ - LR * (m_ * m_hat_scale) / (jnp.sqrt(v_ * v_hat_scale) + eps),
            p, m, v,
        )  # fmt: skip
        return p, m, v, t, loss

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = [params, zeros, zeros, jnp.asarray(0, dtype=dtype)]

    def step():
        state[0], state[1], state[2], state[3], loss = update(*state)
        return loss.block_until_ready()

    return step


# -- checking and timing -----------------------------------------------------------------


def as_float(loss) -> float:
    return float(numpy.asarray(loss))


def check_losses(workload: Workload, makers: dict) -> tuple[dict, dict]:
    """Loss before and after one Adam step, each contender from fresh state. Returns the
    largest relative difference from minimal_icl float64 per contender, and the reason
    for each contender that cannot run here (torch.compile without a C++ compiler, say):
    those are left out of the timing, not allowed to stop it."""
    reference = minimal_icl_step(workload, "float64")
    expected = [as_float(reference()), as_float(reference())]
    gaps, failed = {}, {}
    for name, make in makers.items():
        try:
            step = make()
            got = [as_float(step()), as_float(step())]
        except Exception as error:  # noqa: BLE001 - whatever stops a peer, report it
            lines = str(error).strip().splitlines()
            failed[name] = f"{type(error).__name__}: {lines[0] if lines else ''}"
            continue
        gaps[name] = max(abs(g - e) / abs(e) for g, e in zip(got, expected))
    return gaps, failed


def paired(seconds: list, reference: list) -> float:
    """The median over rounds of seconds / reference in the same round (a paired ratio)."""
    return statistics.median(s / r for s, r in zip(seconds, reference))


def tolerance(name: str) -> float:
    """float64 peers must agree to 1e-9 (rounding, amplified slightly by one Adam step);
    float32 ones to 1e-4 (FLOAT32_RTOL)."""
    return 1e-4 if "float32" in name else 1e-9


def time_block(step, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        step()
    return (time.process_time() - start) / calls


def interleaved(steps: dict, rounds: int, block: float) -> dict:
    """Per contender: the list of seconds per step, one per round, rounds interleaved."""
    names = list(steps)
    calls = {}
    for name in names:  # warm-up (and compilation), then the block size
        for _ in range(3):
            steps[name]()
        once = max(time_block(steps[name], 1), 1e-7)
        calls[name] = max(1, round(block / once))
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(time_block(steps[name], calls[name]))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11, help="timed rounds (default 11)")
    parser.add_argument("--block", type=float, default=0.25,
                        help="seconds of one contender per round (default 0.25)")
    parser.add_argument("--core", type=int, default=None,
                        help="the core to pin to (default: the last allowed)")
    parser.add_argument("--quick", action="store_true", help="3 short rounds, for a smoke test")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the torch.compile peers (their compilation takes minutes)")
    args = parser.parse_args()
    rounds, block = (3, 0.02) if args.quick else (args.rounds, args.block)

    versions = [f"numpy {numpy.__version__}"]
    try:
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        versions.append(f"torch {torch.__version__}")
    except ImportError:
        torch = None
        versions.append("torch not installed (pip install -e '.[bench]')")
    try:
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 arrays where asked for
        versions.append(f"jax {jax.__version__}")
    except ImportError:
        jax = None
        versions.append("jax not installed")
    load = os.getloadavg()
    print(f"pinned to core {CORE} of {os.cpu_count()}, one thread; {', '.join(versions)}")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          " (other processes share the cores)")
    print(f"{rounds} interleaved rounds of ~{block:g} s per contender; CPU time per step;"
          f" ratio = median over rounds of (time / {REFERENCE} time in the same round)\n")

    for workload in workloads():
        T = workload.n_context + 1
        makers = {f"minimal_icl {dt}": (lambda dt=dt: minimal_icl_step(workload, dt))
                  for dt in ("float64", "float32")}
        if workload.name == "paper":
            makers[BY_HAND] = lambda: numpy_by_hand_step(workload, "float64")
        if torch is not None:
            for dt in ("float32", "float64"):
                makers[f"PyTorch eager, query-only, fused Adam, {dt}"] = (
                    lambda dt=dt: torch_step(workload, dt, query_only=True))
            if not args.no_compile:
                for dt in ("float32", "float64"):
                    makers[f"PyTorch torch.compile, query-only, {dt}"] = (
                        lambda dt=dt: torch_step(workload, dt, query_only=True, compiled=True))
        if jax is not None:
            for dt in ("float32", "float64"):
                makers[f"JAX jit, query-only, {dt}"] = lambda dt=dt: jax_step(workload, dt)
        if torch is not None:
            makers["PyTorch eager, whole sequence, float32 (extra)"] = (
                lambda: torch_step(workload, "float32", query_only=False))

        gaps, failed = check_losses(workload, {k: v for k, v in makers.items() if k != REFERENCE})
        for name in failed:
            del makers[name]
        bad = {k: g for k, g in gaps.items() if not g <= tolerance(k)}
        if bad:
            raise SystemExit(f"{workload.name}: losses differ from {REFERENCE}: {bad}")
        steps = {name: make() for name, make in makers.items()}
        gemms = {f"GEMM {dt}": gemm_step(dt) for dt in ("float64", "float32")}
        times = interleaved({**steps, **gemms}, rounds, block)
        gemm_times = {name[5:]: times.pop(name) for name in gemms}  # by dtype
        ours = times[REFERENCE]

        flops = matmul_flops(workload.config, workload.batch_size, T, last_only=True)
        full = matmul_flops(workload.config, workload.batch_size, T, last_only=False)
        print(f"{workload.name}: {workload.describe()}")
        header = f"  {'contender':48s} {'ratio':>6s} {'ms/step':>8s} {'loss gap':>9s}"
        print(header)
        print("  " + "-" * (len(header) - 2))
        for name, seconds in times.items():
            ratio = paired(seconds, ours)
            gap = "" if name == REFERENCE else f"{gaps[name]:9.1e}"
            print(f"  {name:48s} {ratio:6.2f} {statistics.median(seconds) * 1e3:8.3f} {gap}")
        for name, reason in failed.items():
            print(f"  {name:48s} not run here: {reason}")
        counted = minimal_icl_step(workload, "float64")
        counted()  # the first call of a step does one-time work
        calls, python_calls = numpy_calls(counted)
        # the floor of each round: the step's flops at that round's GEMM rate; the ratio
        # to it, as every ratio above, is the median over rounds of the paired quotient
        gemm_flops = 2.0 * GEMM_N**3
        floors = {dt: [flops * t / gemm_flops for t in ts] for dt, ts in gemm_times.items()}
        rate = {dt: gemm_flops / statistics.median(ts) / 1e9 for dt, ts in gemm_times.items()}
        floor64 = statistics.median(floors["float64"]) * 1e3
        floor32 = statistics.median(floors["float32"]) * 1e3
        times32 = times["minimal_icl float32"]
        print(f"  matrix products: {flops / 1e6:.2f} MFLOP a query-only step"
              f" ({full / 1e6:.1f} whole sequence); single-thread GEMM ({GEMM_N}×{GEMM_N},"
              f" in the same rounds) {rate['float64']:.1f} GFLOP/s float64,"
              f" {rate['float32']:.1f} float32: single-core floor {floor64:.3f} ms float64,"
              f" {floor32:.3f} ms float32; minimal_icl float64 at"
              f" {paired(ours, floors['float64']):.1f}× the float64 floor, float32 at"
              f" {paired(times32, floors['float32']):.1f}× the float32 floor,"
              f" {paired(times32, floors['float64']):.1f}× the float64 floor"
              + (f"; NumPy by hand at {paired(times[BY_HAND], floors['float64']):.1f}×"
                 " the float64 floor" if BY_HAND in times else ""))
        print(f"  one minimal_icl step: {calls} NumPy calls (functions, ufuncs, ndarray methods;"
              f" array operators not counted), {python_calls} Python function calls")
        print(f"  loss gap: largest relative difference from {REFERENCE} of the loss before and"
              " after one Adam step (checked: 1e-9 float64, 1e-4 float32)\n")


if __name__ == "__main__":
    main()
