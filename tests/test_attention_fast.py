"""The fast attention backward equals the textbook one.

``attention_fast.attention_backward_fast`` (what training runs) computes the key and value
projections' gradients by reassociated products; ``attention.attention_backward`` (what a
reader checks line by line) builds dk = dSᵀ q and dv = Pᵀ dPv. The two are the same sums
in another order, so they agree to rounding: here to IDENTITY_RTOL = 1e-12 in float64,
measured against the size of the terms each gradient is summed from (``term_scales``).

Why against the terms: softmax's dS has rows that sum to 0, so dW_K = Σ_t dk_tᵀ x_t and
dx cancel when the tokens x_t are nearly equal, as they become in deep stacks of
non-causal softmax attention without a skip (rank collapse). There the two orders' plain
relative difference reaches 3e-7 (measured over the grid, 3-block stacks with LayerNorm),
while against the terms it stays below 4e-16 (2 eps) on every configuration.

* Every attention call of the model's backward, on every combination of the model grid of
  tests/test_model.py (1536) at the grid's widths: there the key and value projections
  take the direct order on every position and the reassociated one with last_only.
  With heads wider than the tokens (K = D = 3), where they take the reassociated order
  everywhere, the grid's pairwise covering selection. array_api_strict, ten times
  slower, runs the pairwise selection at both widths.
* One attention layer on shapes drawn by hypothesis.
* The two orders of ``head_projection_backward`` against the direct formula.
"""

from __future__ import annotations

import itertools
import math

import numpy
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_model import (
    MODEL_CASES,
    MODEL_SWITCHES,
    make_config,
    on,
    random_params,
    random_patches,
    random_tokens,
)

import minimal_icl.block
from minimal_icl import IDENTITY_RTOL, backward, forward, relative_residual
from minimal_icl.attention import attention_backward, attention_forward
from minimal_icl.attention_fast import attention_backward_fast, head_projection_backward
from minimal_icl.linear import linear_forward
from minimal_icl.params import AttentionParams

WHOLE_GRID = [dict(zip(MODEL_SWITCHES, v)) for v in itertools.product(*MODEL_SWITCHES.values())]
# (name, config overrides, NumPy cases): the grid's widths (D = 3, H·K = 2) on the whole
# grid, and heads wider than the tokens (D = K = 3) on the pairwise selection
WIDTHS = [("grid-widths", {}, WHOLE_GRID), ("wide-heads", {"d_head": 3}, MODEL_CASES)]


def uses_direct_order(Tq: int, K: int, D: int) -> bool:
    """The order head_projection_backward takes (see attention_fast's docstring)."""
    return 2 * Tq * D >= Tq * K + 2 * K * D


def test_widths_reach_both_orders():
    """At the grid's widths (D = 3, K = 1 or 2, T = 3) the projections take the direct
    order on every position and the reassociated one with last_only (Tq = 1); with the
    wide heads, the reassociated one always: both branches of the fast path are compared."""
    for K in (1, 2):
        assert uses_direct_order(3, K, 3) and not uses_direct_order(1, K, 3)
    assert not uses_direct_order(3, 3, 3) and not uses_direct_order(1, 3, 3)


def test_the_grid_is_the_whole_product():
    assert len(WHOLE_GRID) == 2 * 2 * 2 * 2 * 2 * 2 * 3 * 2 * 2 * 2 == 1536
    assert len({tuple(case.values()) for case in WHOLE_GRID}) == 1536


def term_scales(dout, cache, to_numpy) -> dict[str, numpy.ndarray]:
    """The size of the terms each attention gradient is summed from.

    The textbook backward run on absolute values (|dout|, |P|, |q|, |k|, |v|, |x| and
    every |W|), the softmax backward P ⊙ (dP − Σ_j dP_j P_j) bounded by
    P ⊙ (|dP| + Σ_j |dP_j| P_j). Either order of the sums computes each gradient with an
    error of at most a small multiple of eps times these (Higham, Accuracy and Stability
    of Numerical Algorithms, 2002, §3.5), whatever cancels. Returns {"dx": (B, T, D),
    "W_Q": (H·K, D), ...}, the shapes of the gradients.
    """
    c = cache

    def a(array):
        return numpy.abs(to_numpy(array))

    q, k, v, P = a(c.q), a(c.k), a(c.v), a(c.weights)
    B, H, Tq, K = q.shape
    T = k.shape[2]

    def split(y):  # (B, ·, H·K) -> (B, H, ·, K)
        return y.reshape(B, y.shape[1], H, K).transpose(0, 2, 1, 3)

    def merge(y):  # (B, H, ·, K) -> (B, ·, H·K)
        return y.transpose(0, 2, 1, 3).reshape(B, y.shape[2], H * K)

    def rows(y):  # (B, ·, n) -> (B·, n)
        return y.reshape(-1, y.shape[-1])

    dout = a(dout)
    dPv = split(dout @ a(c.o_proj.W))  # (B, H, Tq, K)
    dP = dPv @ v.mT  # (B, H, Tq, T)
    dS = dP if c.softmax is None else P * (dP + numpy.sum(dP * P, axis=-1, keepdims=True))
    if c.mask is not None:
        dS = dS * to_numpy(c.mask.mask)
    dS = dS / math.sqrt(K)
    dq, dk, dv = merge(dS @ k), merge(dS.mT @ q), merge(P.mT @ dPv)
    x, x_q, heads = a(c.k_proj.x), a(c.q_proj.x), a(c.o_proj.x)
    dx_q = dq @ a(c.q_proj.W)  # (B, Tq, D)
    if c.last_only:
        dx_q = numpy.concatenate([numpy.zeros((B, T - 1, x.shape[-1])), dx_q], axis=1)
    return {
        "dx": dk @ a(c.k_proj.W) + dv @ a(c.v_proj.W) + dx_q,
        "W_Q": rows(dq).T @ rows(x_q),
        "W_K": rows(dk).T @ rows(x),
        "W_V": rows(dv).T @ rows(x),
        "W_O": rows(dout).T @ rows(heads),
    }


def residuals_against_terms(dout, cache, to_numpy) -> dict[str, float]:
    """max |fast − textbook| / max(term scale), per gradient, of one attention call
    (0 when both are exactly 0, as for the queries of a single key)."""
    dx, grads = attention_backward(dout, cache)
    dx_fast, grads_fast = attention_backward_fast(dout, cache)
    scales = term_scales(dout, cache, to_numpy)
    pairs = {"dx": (dx_fast, dx)} | {
        name: (getattr(grads_fast, name), getattr(grads, name)) for name in AttentionParams._fields
    }
    out = {}
    for name, (fast, textbook) in pairs.items():
        assert tuple(fast.shape) == tuple(textbook.shape) == scales[name].shape, name
        diff = float(numpy.max(numpy.abs(to_numpy(fast) - to_numpy(textbook))))
        scale = float(numpy.max(scales[name]))
        out[name] = diff / scale if scale > 0 else diff
    return out


@pytest.mark.parametrize(
    ("width", "overrides", "cases"), WIDTHS, ids=[name for name, _, _ in WIDTHS]
)
def test_fast_backward_equals_textbook_on_the_model_grid(
    monkeypatch, backend, width, overrides, cases
):
    """In every attention call of ``backward(G, cache)`` (fast, as in training; random
    upstream G), attention_backward_fast's dx and four weight gradients equal the
    textbook attention_backward's to 1e-12 against the terms."""
    if backend.name.startswith("array_api_strict"):
        cases = MODEL_CASES
    seen, bad = [], []

    def compare_then_fast(dout, cache):
        residuals = residuals_against_terms(dout, cache, backend.to_numpy)
        seen.append(residuals)
        bad.extend(f"{name} {r:.2e}" for name, r in residuals.items() if not r <= IDENTITY_RTOL)
        return attention_backward_fast(dout, cache)

    monkeypatch.setattr(minimal_icl.block, "attention_backward_fast", compare_then_fast)
    for case in cases:
        config = make_config(case, **overrides)
        params = on(backend, random_params(config, seed=7))
        tokens = backend.asarray(random_tokens(7, config))
        patches = on(backend, random_patches(config, seed=7)) if case["patched"] else None
        out, cache = forward(params, config, tokens, patches, case["last_only"])
        G = backend.asarray(numpy.random.default_rng(7).standard_normal(tuple(out.shape)))
        n_seen = len(seen)
        backward(G, cache, fast=True)
        assert len(seen) - n_seen == config.n_blocks  # every block's attention compared
        assert not bad, f"{case} {overrides}: " + ", ".join(bad)


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_property_fast_attention_backward_equals_textbook(backend, kind):
    """One attention layer, shapes drawn: dx and the four weight gradients agree to
    1e-12 against the terms."""
    n = max(1, 30 * settings().max_examples // 200)
    if backend.name.startswith("array_api_strict"):
        n = max(1, n // 4)

    @settings(max_examples=n)
    @example(B=2, T=4, D=2, H=2, K=5, causal=True, last_only=False, seed=1)  # reassociated
    @example(B=2, T=4, D=3, H=2, K=1, causal=False, last_only=False, seed=2)  # direct
    @given(
        B=st.integers(1, 3),
        T=st.integers(1, 6),
        D=st.integers(1, 4),
        H=st.integers(1, 3),
        K=st.integers(1, 6),
        causal=st.booleans(),
        last_only=st.booleans(),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(B, T, D, H, K, causal, last_only, seed):
        rng = numpy.random.default_rng(seed)
        x = backend.asarray(rng.standard_normal((B, T, D)))
        p = AttentionParams(
            *(backend.asarray(rng.standard_normal(s)) for s in [(H * K, D)] * 3 + [(D, H * K)])
        )
        out, cache = attention_forward(x, p, H, kind, causal, last_only)
        G = backend.asarray(rng.standard_normal(tuple(out.shape)))
        residuals = residuals_against_terms(G, cache, backend.to_numpy)
        assert max(residuals.values()) <= IDENTITY_RTOL, residuals

    check()


def direct_order(mixing, factor, x, W):
    """dyₕ = mixingₕᵀ factorₕ, dx = merge(dy) W, dW = Σ_b merge(dy)ᵀ x, in plain NumPy."""
    dy = numpy.einsum("bhqt,bhqk->bthk", mixing, factor)
    dy = dy.reshape(dy.shape[0], dy.shape[1], -1)  # (B, T, H·K)
    return dy @ W, numpy.einsum("bto,bti->oi", dy, x)


@pytest.mark.parametrize(
    ("B", "H", "Tq", "T", "K", "D", "order"),
    [
        (2, 2, 4, 4, 1, 3, "direct"),  # 2·Tq·D = 24 ≥ Tq·K + 2·K·D = 10
        (2, 3, 4, 4, 5, 2, "reassociated"),  # 16 < 40
        (2, 2, 1, 4, 2, 3, "reassociated"),  # last_only: Tq = 1
    ],
    ids=["direct", "reassociated", "reassociated-last-only"],
)
def test_head_projection_backward_orders_agree(backend, B, H, Tq, T, K, D, order):
    """Both orders of the key/value projection backward give the direct formula
    (arguments by name: mixing is dS or P, factor is q or dPv)."""
    assert uses_direct_order(Tq, K, D) == (order == "direct")
    rng = numpy.random.default_rng(14)
    mixing = rng.standard_normal((B, H, Tq, T))
    factor = rng.standard_normal((B, H, Tq, K))
    x, W = rng.standard_normal((B, T, D)), rng.standard_normal((H * K, D))
    _, proj = linear_forward(backend.asarray(x), backend.asarray(W))
    dx, dW = head_projection_backward(
        mixing=backend.asarray(mixing), factor=backend.asarray(factor), proj=proj
    )
    dx_expected, dW_expected = direct_order(mixing, factor, x, W)
    assert relative_residual(backend.to_numpy(dx), dx_expected) <= IDENTITY_RTOL
    assert relative_residual(backend.to_numpy(dW), dW_expected) <= IDENTITY_RTOL
