"""Linear attention's training dynamics: minimal_icl against the reference's PyTorch algorithm.

    python benchmarks/bench_linattn.py [--rounds 3] [--epochs 200] [--n-train 5000] [--core N]
    python benchmarks/bench_linattn.py --quick       (a smoke test: P 500, 20 epochs, 1 round)

The default run takes about 25 minutes on one core (PyTorch's 1,200 epochs per setting),
so it is not part of ``make bench``; the numbers are in README.md, Speed.

The experiment is Zhang, Singh, Latham & Saxe 2025 (arXiv:2501.16265): full-batch gradient
descent on a fixed set of P in-context regression sequences (d = 4, N = 31 context pairs and
the query, so T = 32 tokens of width d + 1 = 5). Its reference code
(github.com/yedizhang/linattn-icl) trains each model in PyTorch, sequence by sequence:

  per epoch   the layer on all P sequences (tokens as rows, every token's output: the
              (P, H, T, T) attention scores, the (P, H, T, d+1) head outputs summed over
              heads, no 1/N), the query's y-entry against y_q by nn.MSELoss, autograd,
              torch.optim.SGD (full batch, no momentum), loss.item() recorded; float32.
  settings    its README's commands: ATTN_M with H = 8 merged heads, init std 1e-6, lr 0.001
              (its default), 6,001 epochs (its default); rank-1 ATTN_S with H = 5 heads,
              init 0.01 (std init/√numel per weight), lr 0.02, 10,001 epochs; P = 5,000.

This benchmark writes that algorithm out here in PyTorch (its own code is not copied), in
float32 as the reference runs it and in float64, and times it against minimal_icl.linattn's
exact full-batch gradient descent: the prediction depends on a sequence only through
φ = G ⊗ x_q (G = X Xᵀ/N), so the loss is a quadratic in the weights' (d+1)² d-entry
effective tensor with three statistics computed once (``feature_statistics``, the setup)
and an epoch costs the same for any P (``train_gd``, float64, recording the training loss,
a held-out loss, here on the training statistics, and the effective matrix every epoch).

Equal settings: the same P sequences (minimal_icl.linattn.sequences, rounded to float32 so
that every contender sees the same numbers), the same initial weights (drawn the
reference's way in float32) and the same learning rate, converted between the two
conventions: the package's layer has the paper's 1/N, the reference's has none, so the
package's weights are c times the reference's, c = N^{1/2} (ATTN_M) or N^{1/3} (ATTN_S),
and its learning rate c² times the reference's. Before timing, the training-loss
trajectories of a short run are checked against minimal_icl's: PyTorch float64 to 1e-9,
float32 to FLOAT32_RTOL (relative to the largest loss); every timed run is checked again.

Method: one process pinned to one core (os.sched_setaffinity), one thread in every library;
``--rounds`` rounds, each running every contender for ``--epochs`` epochs from the same
initial weights, in an order that rotates from round to round; process CPU time.
minimal_icl's block is repeated until it lasts about 0.2 s (it is a few milliseconds).
The table gives each contender's median time per epoch, and the median over rounds of the
paired ratio (the PyTorch time over minimal_icl's in the same round) per epoch and for the
whole run: the PyTorch run extrapolated from its per-epoch time to the reference's epoch
count, minimal_icl's setup plus its per-epoch time times that count (its whole run is also
timed once, not extrapolated). Skips cleanly when torch is not installed.
"""

from __future__ import annotations

import os
import sys

# One core and one thread everywhere, before NumPy or PyTorch start any thread.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"


def _pin(argv) -> int:
    """Pin this process to one core (``--core N``, default the last allowed); return it."""
    allowed = sorted(os.sched_getaffinity(0))
    core = int(argv[argv.index("--core") + 1]) if "--core" in argv else allowed[-1]
    os.sched_setaffinity(0, {core})
    return core


CORE = _pin(sys.argv)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy  # noqa: E402

from minimal_icl import linattn as la  # noqa: E402
from minimal_icl.tolerances import FLOAT32_RTOL, relative_residual  # noqa: E402

try:
    import torch
except ImportError:  # the benchmark's only peer
    torch = None

D_INPUT = 4  # d, the reference's in_dim
N_CONTEXT = 31  # N: the reference's seq_len 32 counts the query
SEED = 10  # the reference's default seed (here: of the data and the weights)
FLOAT64_RTOL = 1e-9  # PyTorch float64 against minimal_icl: rounding only


@dataclass(frozen=True)
class Setting:
    """One of the reference's commands, in the reference's units."""

    name: str
    model: str  # "merged" or "separate"
    n_heads: int
    rank: int  # ATTN_S only
    init: float
    lr: float
    epochs: int  # the reference's whole run

    def describe(self, n_train: int) -> str:
        kind = "ATTN_M" if self.model == "merged" else f"ATTN_S, rank {self.rank}"
        return (f"{kind}, H {self.n_heads}, P {n_train}, d {D_INPUT}, N {N_CONTEXT}, init "
                f"{self.init:g}, lr {self.lr:g} (reference units), {self.epochs:,} epochs")


SETTINGS = (
    Setting("ATTN_M", "merged", n_heads=8, rank=0, init=1e-6, lr=0.001, epochs=6001),
    Setting("ATTN_S", "separate", n_heads=5, rank=1, init=0.01, lr=0.02, epochs=10001),
)


# -- the reference's algorithm in PyTorch ------------------------------------------------


def _torch_model(setting: Setting, weights: dict, dtype):
    """The reference's layer (tokens as rows, all T outputs, no 1/N, no skip) holding
    ``weights`` (name -> float32 array in nn.Linear's (out, in) layout)."""
    nn = torch.nn
    D, H, R = D_INPUT + 1, setting.n_heads, setting.rank

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            for name, value in weights.items():
                linear = nn.Linear(value.shape[1], value.shape[0], bias=False)
                with torch.no_grad():
                    linear.weight.copy_(torch.from_numpy(value))
                setattr(self, name, linear.to(dtype))

        def forward(self, x):  # x: (P, T, D)
            P, T, _ = x.shape
            values = self.value(x).view(P, T, H, D).transpose(1, 2)  # (P, H, T, D): W^V x_s
            if setting.model == "merged":
                # scores[t, s] = x_tᵀ (W_h x_s), W_h the head's block of kq
                keys = self.kq(x).view(P, T, H, D).transpose(1, 2)  # (P, H, T, D)
                scores = x.unsqueeze(1) @ keys.transpose(-1, -2)  # (P, H, T, T)
            else:
                # scores[t, s] = (W^Q x_t)ᵀ (W^K x_s)
                queries = self.query(x).view(P, T, H, R).transpose(1, 2)  # (P, H, T, R)
                keys = self.key(x).view(P, T, H, R).transpose(1, 2)
                scores = queries @ keys.transpose(-1, -2)  # (P, H, T, T)
            return (scores @ values).sum(dim=1)  # (P, T, D), summed over heads

    return Layer()


def reference_weights(setting: Setting, seed: int) -> dict:
    """Initial weights the reference's way, float32, nn.Linear layout (out, in):
    normal entries of std init (ATTN_M) or init/√numel (ATTN_S), then zeros on the
    zero-initialised entries (ū, v̄ of every head; the key's y-column for ATTN_S)."""
    rng = numpy.random.default_rng(seed)
    D, H, R, d = D_INPUT + 1, setting.n_heads, setting.rank, D_INPUT

    def normal(shape, merged_std):
        std = merged_std if setting.model == "merged" else setting.init / numpy.sqrt(
            numpy.prod(shape))
        return (std * rng.standard_normal(shape)).astype(numpy.float32)

    weights = {}
    if setting.model == "merged":
        weights["kq"] = normal((H * D, D), setting.init)
        weights["kq"].reshape(H, D, D)[:, :d, d] = 0.0  # W_h[:d, d] = ū_i (W^KQ_i = W_hᵀ)
    else:
        weights["key"] = normal((H * R, D), None)
        weights["key"][:, d] = 0.0  # the key's y-entry
        weights["query"] = normal((H * R, D), None)
    weights["value"] = normal((H * D, D), setting.init)
    weights["value"].reshape(H, D, D)[:, d, :d] = 0.0  # v̄_i
    return weights


def package_params(setting: Setting, weights: dict):
    """The same weights in minimal_icl's convention (1/N in the layer): c times the
    reference's, c = N^{1/2} (ATTN_M) or N^{1/3} (ATTN_S); float64."""
    D, H, R = D_INPUT + 1, setting.n_heads, setting.rank
    w = {k: v.astype(numpy.float64) for k, v in weights.items()}
    if setting.model == "merged":
        c = N_CONTEXT ** 0.5
        return la.MergedParams(c * w["value"].reshape(H, D, D),
                               c * numpy.swapaxes(w["kq"].reshape(H, D, D), 1, 2))
    c = N_CONTEXT ** (1.0 / 3.0)
    return la.SeparateParams(c * w["value"].reshape(H, D, D), c * w["key"].reshape(H, R, D),
                             c * w["query"].reshape(H, R, D))


def package_lr(setting: Setting) -> float:
    """c² times the reference's learning rate: N (ATTN_M), N^{2/3} (ATTN_S)."""
    return setting.lr * N_CONTEXT ** (1.0 if setting.model == "merged" else 2.0 / 3.0)


def reference_run(setting: Setting, weights: dict, tokens, targets, epochs: int, dtype):
    """The reference's training loop: per epoch zero_grad, the layer on every sequence,
    nn.MSELoss on the query's y-entry, loss.item(), backward, SGD step. Returns the
    losses before each step (epochs,), the CPU seconds of the loop and the final weights
    (name -> float64 array)."""
    model = _torch_model(setting, weights, dtype)
    x = torch.from_numpy(tokens).to(dtype)
    y = torch.from_numpy(targets).to(dtype)[:, None]
    criterion = torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr)
    losses = numpy.empty(epochs)
    start = time.process_time()
    for t in range(epochs):
        optimizer.zero_grad()
        loss = criterion(model(x)[:, -1, D_INPUT:], y)
        losses[t] = loss.item()
        loss.backward()
        optimizer.step()
    seconds = time.process_time() - start
    final = {name: getattr(model, name).weight.detach().to(torch.float64).numpy()
             for name in weights}
    return losses, seconds, final


# -- minimal_icl -------------------------------------------------------------------------


def package_run(setting: Setting, params, data: la.Sequences, epochs: int, final=False):
    """minimal_icl's run: statistics once, then train_gd (stride 1). Returns the losses
    before each of the first ``epochs`` steps, setup and training CPU seconds (and, with
    ``final``, the final weights)."""
    start = time.process_time()
    stats = la.feature_statistics(data)
    middle = time.process_time()
    trajectory = la.train_gd(params, stats, stats, package_lr(setting), epochs, stride=1)
    end = time.process_time()
    result = trajectory.train_loss[:epochs], middle - start, end - middle
    return result + (trajectory.params,) if final else result


def package_block(setting, params, data, epochs: int, repeats: int):
    """``repeats`` package runs; (losses, setup seconds, training seconds) per run."""
    setup = train = 0.0
    for _ in range(repeats):
        losses, s, t = package_run(setting, params, data, epochs)
        setup, train = setup + s, train + t
    return losses, setup / repeats, train / repeats


# -- the benchmark -----------------------------------------------------------------------


def problem(n_train: int, seed: int):
    """The P training sequences, rounded to float32 (the reference's dtype) and back, as
    minimal_icl's Sequences and as the reference's (P, T, D) tokens and targets."""
    cov = la.covariance(D_INPUT, seed=seed)
    data = la.sequences(n_train, N_CONTEXT, cov, seed=seed + 1)
    X = data.X.astype(numpy.float32).astype(numpy.float64)
    y = data.y_query.astype(numpy.float32).astype(numpy.float64)
    return la.Sequences(X, y), numpy.ascontiguousarray(numpy.swapaxes(X, 1, 2)), y


def check(name: str, losses, expected, tol: float) -> float:
    gap = relative_residual(losses, expected)
    if not gap <= tol:
        raise SystemExit(f"{name}: the loss trajectory differs from minimal_icl's by {gap:.1e}"
                         f" (tolerance {tol:g})")
    return gap


def bench(setting: Setting, n_train: int, epochs: int, rounds: int, check_epochs: int):
    data, tokens, targets = problem(n_train, SEED)
    weights = reference_weights(setting, SEED + 3)
    params = package_params(setting, weights)
    peers = {"PyTorch float32 (the reference's)": torch.float32,
             "PyTorch float64": torch.float64}
    tol = {torch.float32: FLOAT32_RTOL, torch.float64: FLOAT64_RTOL}

    # the check (and warm-up): the same loss trajectory from the same weights and data,
    # and the same change of the weights (the gradients, on a plateau where the loss
    # hardly moves)
    expected, _, _, moved = package_run(setting, params, data, check_epochs, final=True)
    step = numpy.concatenate([(a - b).ravel() for a, b in zip(moved, params)])
    gaps, step_gaps = {}, {}
    for name, dtype in peers.items():
        losses, _, final = reference_run(setting, weights, tokens, targets, check_epochs, dtype)
        gaps[name] = check(name, losses, expected, tol[dtype])
        ref_step = numpy.concatenate([(a - b).ravel() for a, b in zip(
            package_params(setting, final), params)])
        step_gaps[name] = check(name + " (weight change)", ref_step, step, tol[dtype])
    block_losses, s, t = package_run(setting, params, data, epochs)  # every timed run's
    repeats = max(1, round(0.2 / max(s + t, 1e-6)))

    names = list(peers) + ["minimal_icl"]
    per_epoch = {name: [] for name in names}
    setup = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name == "minimal_icl":
                _, s, t = package_block(setting, params, data, epochs, repeats)
                setup.append(s)
                per_epoch[name].append(t / epochs)
            else:
                losses, seconds, _ = reference_run(setting, weights, tokens, targets, epochs,
                                                   peers[name])
                per_epoch[name].append(seconds / epochs)
                gaps[name] = max(gaps[name], relative_residual(losses, block_losses))
        for name, dtype in peers.items():
            if not gaps[name] <= tol[dtype]:
                raise SystemExit(f"{name}: a timed trajectory differs by {gaps[name]:.1e}")
    _, full_setup, full_train = package_run(setting, params, data, setting.epochs)
    return per_epoch, setup, gaps, step_gaps, full_setup + full_train, repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--epochs", type=int, default=200,
                        help="epochs of every contender per round (default 200)")
    parser.add_argument("--n-train", type=int, default=5000,
                        help="P, the training sequences (default 5000, the reference's)")
    parser.add_argument("--core", type=int, default=None,
                        help="the core to pin to (default: the last allowed)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: P 500, 20 epochs, 1 round")
    args = parser.parse_args()
    rounds, epochs, n_train = ((1, 20, 500) if args.quick
                               else (args.rounds, args.epochs, args.n_train))
    for name, value in (("--rounds", rounds), ("--epochs", epochs), ("--n-train", n_train)):
        if value < 1:
            raise SystemExit(f"{name} must be ≥ 1, got {value}")
    if torch is None:
        print("bench_linattn: torch is not installed (pip install -e '.[bench]'); skipped")
        return
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    load = os.getloadavg()
    print(f"pinned to core {CORE} of {os.cpu_count()}, one thread; numpy {numpy.__version__},"
          f" torch {torch.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{rounds} interleaved round(s) of {epochs} epochs per contender; CPU time; ratio ="
          " median over rounds of (PyTorch time / minimal_icl time in the same round)\n")
    check_epochs = min(epochs, 20)
    for setting in SETTINGS:
        per_epoch, setup, gaps, step_gaps, full, repeats = bench(setting, n_train, epochs, rounds,
                                                      check_epochs)
        ours = per_epoch["minimal_icl"]
        ours_full = [s + setting.epochs * t for s, t in zip(setup, ours)]
        print(f"{setting.name}: {setting.describe(n_train)}")
        header = (f"  {'contender':36s} {'ms/epoch':>9s} {'ratio/epoch':>12s}"
                  f" {'whole run (s)':>14s} {'ratio, run':>11s} {'loss gap':>9s} {'step gap':>9s}")
        print(header)
        print("  " + "-" * (len(header) - 2))
        for name, seconds in per_epoch.items():
            if name == "minimal_icl":
                continue
            ratio = statistics.median(p / o for p, o in zip(seconds, ours))
            run = [setting.epochs * p for p in seconds]
            ratio_run = statistics.median(p / o for p, o in zip(run, ours_full))
            print(f"  {name:36s} {statistics.median(seconds) * 1e3:9.3f} {ratio:12.0f}"
                  f" {statistics.median(run):14.1f} {ratio_run:11.0f} {gaps[name]:9.1e}"
                  f" {step_gaps[name]:9.1e}")
        print(f"  {'minimal_icl float64 (statistics)':36s} {statistics.median(ours) * 1e3:9.4f}"
              f" {1:12.0f} {statistics.median(ours_full):14.3f} {1:11.0f}")
        print(f"  PyTorch whole runs extrapolated from {epochs} epochs to {setting.epochs:,};"
              f" minimal_icl's: setup (feature_statistics) {statistics.median(setup) * 1e3:.1f}"
              f" ms + {setting.epochs:,} epochs; timed once whole: {full:.3f} s;"
              f" its block repeated {repeats}× per round")
        print(f"  loss gap: relative difference of the training-loss trajectories from"
              f" minimal_icl's; step gap: of the weights' change over the first {check_epochs}"
              f" epochs (both checked: {FLOAT64_RTOL:g} float64, {FLOAT32_RTOL:g} float32)\n")


if __name__ == "__main__":
    main()
