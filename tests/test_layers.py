"""Every layer on its own: a gradient check of each forward/backward pair, and each
layer's exact definition against an independent formula.

The gradient checks use ``minimal_icl.gradcheck.check_layer``: float64, a random
upstream gradient G, the loss Σ out ⊙ G, fourth-order central differences, relative
error ≤ GRADCHECK_RTOL for every input and parameter. Hypothesis draws the shapes
(B, T, D, H, K, M from 1 to 2–5) and the seed of the arrays; the switches of a layer
(bias kinds, attention kind, causal, last_only, activation, per-prompt weights) are
parametrised, so every one is checked. They run on every backend of the ``backend``
fixture. array_api_strict is about ten times slower than NumPy per call, so it gets a
quarter of the draws, the attention switches in a pairwise covering subset (4 of 8
cases) and two of the four MLP cases (its gelu uses the slow standard-calls erf).
"""

from __future__ import annotations

import itertools
import math

import numpy
import pytest
import scipy.stats
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backends import gpu_available

from minimal_icl.activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from minimal_icl.attention import (
    attention_backward,
    attention_forward,
    causal_mask,
    mask_backward,
    mask_forward,
    softmax_backward,
    softmax_forward,
)
from minimal_icl.backend import device
from minimal_icl.gradcheck import assert_gradients_ok, check_layer
from minimal_icl.layernorm import layernorm_backward, layernorm_forward
from minimal_icl.linear import linear_backward, linear_forward
from minimal_icl.mlp import mlp_backward, mlp_forward
from minimal_icl.params import AttentionParams, LayerNormParams, MLPParams
from minimal_icl.tolerances import IDENTITY_RTOL, relative_residual

EPS64 = float(numpy.finfo(numpy.float64).eps)
# gelu against x Φ(x) (scipy): |error| ≤ GELU_ULPS eps |x| (measured on [−12, 12]: 1.1 eps |x|
# with scipy's erf on NumPy, 3.4 eps |x| with the array-API series on array_api_strict)
GELU_ULPS = 8
# Σ_t P_t of a softmax row of T ≤ 5 weights: 1 to a few rounding units of 1
ROW_SUM_ATOL = 4 * EPS64
# The look-alike LayerNorm definitions (unbiased variance; eps outside the root) differ
# from the right one by more than LOOKALIKE_RTOL at eps = 0.5 (measured 0.16 and 0.16)
LOOKALIKE_RTOL = 1e-3
# the tanh approximation of gelu is more than this far from x Φ(x) (measured 4.7e-4)
TANH_FIT_GAP = 1e-4


def examples(n: int) -> int:
    """``n`` examples under the ci profile (200), scaled with the loaded profile."""
    return max(1, n * settings().max_examples // 200)


def backend_cases(full, strict):
    """pytest params (backend, *case) for the ``backend`` fixture: the ``full`` cases on
    NumPy (and CuPy on a GPU), the ``strict`` cases on array_api_strict's device1."""
    runs = [
        (("numpy",), "numpy", full),
        (("array_api_strict", "device1"), "strict-device1", strict),
    ]
    if gpu_available():
        runs.append((("cupy",), "cupy", full))
    return [
        pytest.param(which, *case, id="-".join([name, *map(str, case)]))
        for which, name, cases in runs
        for case in cases
    ]


def randn(backend, rng, *shape, scale=1.0):
    """Standard normal numbers drawn on the host, moved to the backend (float64)."""
    return backend.asarray(scale * rng.standard_normal(shape))


def gradcheck(forward_fn, backward_fn, inputs, expected_names, seed=0):
    """check_layer, then insist that every expected input was checked and passed."""
    errors = check_layer(forward_fn, backward_fn, inputs, seed=seed)
    assert set(errors) == set(expected_names), f"checked {sorted(errors)}"
    assert_gradients_ok(errors)
    return errors


# ---------------------------------------------------------------------------------------
# Gradient checks, one layer pair at a time, on shapes drawn by hypothesis
# ---------------------------------------------------------------------------------------

SEEDS = st.integers(0, 2**32 - 1)


def sizes(high: int):
    """A shape letter (B, T, D, H, K, M, ...) drawn from 1..high: small, so that finite
    differences stay cheap, and 1 included (one prompt, one token, one head)."""
    return st.integers(1, high)


def for_each_draw(backend, n_examples: int, typical: dict, **strategies):
    """Decorator: run the check at once, on ``typical`` and on hypothesis draws of
    ``strategies``.

    ``n_examples`` draws under the ci profile (scaled with the loaded profile) on NumPy
    and CuPy; a quarter of them, at least one, on array_api_strict, which is about ten
    times slower per call. Hypothesis starts from the smallest draw (every size 1), so
    ``typical``, an explicit example with every size above 1, is always checked as well.
    The check is defined inside the test, so it closes over the ``backend`` fixture
    (which holds no state: the draws share it safely).
    """
    n = examples(n_examples)
    if backend.name.startswith("array_api_strict"):
        n = max(1, n // 4)

    def run(check):
        settings(max_examples=n)(example(**typical)(given(**strategies)(check)))()
        return check

    return run


B, T, D_IN, D_OUT = 2, 3, 3, 2  # the fixed shapes of the exact-definition tests below

LINEAR_CASES = {
    # name: (W per prompt, bias: None, "shared" or "per-prompt")
    "shared-W-shared-b": (False, "shared"),
    "per-prompt-W-per-prompt-b": (True, "per-prompt"),
    "shared-W-per-prompt-b": (False, "per-prompt"),
    "per-prompt-W-shared-b": (True, "shared"),
    "shared-W-no-bias": (False, None),
    "per-prompt-W-no-bias": (True, None),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_gradients(backend, case):
    per_prompt_W, bias = LINEAR_CASES[case]

    typical = dict(B=2, T=3, n_in=3, n_out=2, seed=1)

    @for_each_draw(
        backend, 8, typical, B=sizes(3), T=sizes(4), n_in=sizes(4), n_out=sizes(4), seed=SEEDS
    )
    def check(B, T, n_in, n_out, seed):
        rng = numpy.random.default_rng(seed)
        x = randn(backend, rng, B, T, n_in)
        W = randn(backend, rng, *((B, n_out, n_in) if per_prompt_W else (n_out, n_in)))
        b = None
        if bias is not None:
            b = randn(backend, rng, *((B, n_out) if bias == "per-prompt" else (n_out,)))

        def fwd(inputs):
            return linear_forward(*inputs)

        def bwd(dy, cache):
            dx, dW, db = linear_backward(dy, cache)
            assert dW.shape == W.shape and (db is None) == (b is None)
            assert db is None or db.shape == b.shape
            return dx, dW, db

        names = {"0", "1"} | ({"2"} if b is not None else set())
        gradcheck(fwd, bwd, (x, W, b), names, seed=seed)


@pytest.mark.parametrize("kind", ["relu", "gelu"])
def test_activation_gradients(backend, kind):
    forward_fn, backward_fn = {
        "relu": (relu_forward, relu_backward),
        "gelu": (gelu_forward, gelu_backward),
    }[kind]

    typical = dict(B=2, T=2, M=3, seed=2)

    @for_each_draw(backend, 8, typical, B=sizes(2), T=sizes(3), M=sizes(4), seed=SEEDS)
    def check(B, T, M, seed):
        x = randn(backend, numpy.random.default_rng(seed), B, T, M, scale=2.0)
        gradcheck(forward_fn, backward_fn, x, {"input"}, seed=seed)


@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_layernorm_gradients(backend, eps):
    """D = 1 included: there x̂ = 0, LN(x) = bias, and every gradient but dbias is 0."""

    typical = dict(B=2, T=2, D=4, seed=3)

    @for_each_draw(backend, 8, typical, B=sizes(3), T=sizes(3), D=sizes(5), seed=SEEDS)
    def check(B, T, D, seed):
        rng = numpy.random.default_rng(seed)
        x = randn(backend, rng, B, T, D)
        p = LayerNormParams(
            gain=backend.asarray(1.0 + 0.5 * rng.standard_normal(D)), bias=randn(backend, rng, D)
        )

        def fwd(inputs):
            return layernorm_forward(inputs[0], inputs[1], eps)

        gradcheck(fwd, layernorm_backward, (x, p), {"0", "1.gain", "1.bias"}, seed=seed)


def test_softmax_gradients(backend):
    typical = dict(B=2, H=2, Tq=3, T=4, seed=4)

    @for_each_draw(
        backend, 8, typical, B=sizes(2), H=sizes(3), Tq=sizes(4), T=sizes(5), seed=SEEDS
    )
    def check(B, H, Tq, T, seed):
        scores = randn(backend, numpy.random.default_rng(seed), B, H, Tq, T, scale=2.0)
        gradcheck(softmax_forward, softmax_backward, scores, {"input"}, seed=seed)


@pytest.mark.parametrize("n_queries", [4, 2, 1])
def test_mask_gradients(backend, n_queries):
    """The mask alone with linear attention's fill 0, and mask then softmax with −inf."""
    scores = randn(backend, numpy.random.default_rng(5), 2, 2, n_queries, 4)
    mask = causal_mask(n_queries, 4, backend.xp, device=backend.device)

    def masked(s):
        return mask_forward(s, mask, 0.0)

    gradcheck(masked, mask_backward, scores, {"input"})

    def masked_softmax(s):
        m, m_cache = mask_forward(s, mask, -math.inf)
        p, p_cache = softmax_forward(m)
        return p, (m_cache, p_cache)

    def masked_softmax_backward(dp, caches):
        return mask_backward(softmax_backward(dp, caches[1]), caches[0])

    gradcheck(masked_softmax, masked_softmax_backward, scores, {"input"})


# (kind, causal, last_only): the full product on NumPy; on array_api_strict the four
# rows 000, 011, 101, 110, which hold every pair of values of every two switches (see
# test_strict_attention_cases_cover_every_pair). The shapes B, T, D, H, K are drawn.
ATTENTION_SWITCHES = (("softmax", "linear"), (False, True), (False, True))
ATTENTION_CASES = list(itertools.product(*ATTENTION_SWITCHES))
STRICT_ATTENTION_CASES = [
    tuple(values[bit] for values, bit in zip(ATTENTION_SWITCHES, bits))
    for bits in ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0))
]


def test_strict_attention_cases_cover_every_pair():
    n = len(ATTENTION_SWITCHES)
    for i, j in itertools.combinations(range(n), 2):
        seen = {(case[i], case[j]) for case in STRICT_ATTENTION_CASES}
        assert seen == set(itertools.product(ATTENTION_SWITCHES[i], ATTENTION_SWITCHES[j]))


def attention_inputs(backend, rng, n_heads, K=1, D=2, n_prompts=2, n_tokens=3, scale=1.0):
    """Tokens x (B, T, D) times ``scale`` and the four projections of H heads of width K."""
    x = randn(backend, rng, n_prompts, n_tokens, D, scale=scale)
    HK = n_heads * K
    p = AttentionParams(
        W_Q=randn(backend, rng, HK, D),
        W_K=randn(backend, rng, HK, D),
        W_V=randn(backend, rng, HK, D),
        W_O=randn(backend, rng, D, HK),
    )
    return x, p


@pytest.mark.parametrize(
    ("backend", "kind", "causal", "last_only"),
    backend_cases(ATTENTION_CASES, STRICT_ATTENTION_CASES),
    indirect=["backend"],
)
def test_attention_gradients(backend, kind, causal, last_only):
    """The textbook attention_backward, every input and every projection; heads as wide
    as or wider than the tokens (K ≥ D) and one token (T = 1) among the draws."""

    typical = dict(B=2, T=4, D=2, H=2, K=3, seed=6)  # heads wider than the tokens

    shapes = dict(B=sizes(2), T=sizes(4), D=sizes(3), H=sizes(3), K=sizes(3), seed=SEEDS)

    @for_each_draw(backend, 8, typical, **shapes)
    def check(B, T, D, H, K, seed):
        # linear attention is cubic in x: smaller tokens keep finite differences accurate
        scale = 0.5 if kind == "linear" else 1.0
        x, p = attention_inputs(backend, numpy.random.default_rng(seed), H, K, D, B, T, scale)

        def fwd(inputs):
            return attention_forward(inputs[0], inputs[1], H, kind, causal, last_only)

        out, _ = fwd((x, p))
        assert tuple(out.shape) == (B, 1 if last_only else T, D)
        names = {"0", "1.W_Q", "1.W_K", "1.W_V", "1.W_O"}
        gradcheck(fwd, attention_backward, (x, p), names, seed=seed)


MLP_CASES = [("relu", False), ("relu", True), ("gelu", False), ("gelu", True)]


@pytest.mark.parametrize(
    ("backend", "activation", "patched"),
    backend_cases(MLP_CASES, [("relu", True), ("gelu", False)]),  # the series erf is slow on strict
    indirect=["backend"],
)
def test_mlp_gradients(backend, activation, patched):
    """Per-prompt W1 (B, M, D) and b2 (B, D) are how a patched model runs its MLP."""

    typical = dict(B=2, T=2, D=2, M=3, seed=7)

    @for_each_draw(
        backend, 6, typical, B=sizes(3), T=sizes(3), D=sizes(3), M=sizes(4), seed=SEEDS
    )
    def check(B, T, D, M, seed):
        rng = numpy.random.default_rng(seed)
        u = randn(backend, rng, B, T, D)
        p = MLPParams(
            W1=randn(backend, rng, *((B, M, D) if patched else (M, D))),
            b1=randn(backend, rng, M),
            W2=randn(backend, rng, D, M),
            b2=randn(backend, rng, *((B, D) if patched else (D,))),
        )

        def fwd(inputs):
            return mlp_forward(inputs[0], inputs[1], activation)

        gradcheck(fwd, mlp_backward, (u, p), {"0", "1.W1", "1.b1", "1.W2", "1.b2"}, seed=seed)


# ---------------------------------------------------------------------------------------
# Exact definitions against independent formulas
# ---------------------------------------------------------------------------------------


def test_linear_matches_loop(backend):
    """y[b, t] = W[b] x[b, t] + bias[b] for per-prompt weights, W x + bias for shared."""
    rng = numpy.random.default_rng(8)
    x, W, Wb, b, bb = (
        rng.standard_normal(s)
        for s in [(B, T, D_IN), (D_OUT, D_IN), (B, D_OUT, D_IN), (D_OUT,), (B, D_OUT)]
    )
    for weight, bias in [(W, b), (Wb, bb), (W, None)]:
        y, _ = linear_forward(
            backend.asarray(x),
            backend.asarray(weight),
            None if bias is None else backend.asarray(bias),
        )
        expected = numpy.empty((B, T, D_OUT))
        for i, t in itertools.product(range(B), range(T)):
            Wi = weight if weight.ndim == 2 else weight[i]
            bi = 0.0 if bias is None else (bias if bias.ndim == 1 else bias[i])
            expected[i, t] = Wi @ x[i, t] + bi
        assert relative_residual(backend.to_numpy(y), expected) <= IDENTITY_RTOL


def softmax_by_loop(row):
    """pᵢ = exp(sᵢ − m) / Σⱼ exp(sⱼ − m), m = max s, one Python float at a time."""
    m = max(row)
    e = [math.exp(s - m) for s in row]
    total = math.fsum(e)
    return [v / total for v in e]


@settings(max_examples=examples(40))
@given(
    seed=st.integers(0, 2**32 - 1),
    n_rows=st.integers(1, 4),
    n_cols=st.integers(1, 6),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    n_masked=st.integers(0, 5),
)
def test_property_softmax_matches_exp_sum_loop(seed, n_rows, n_cols, scale, n_masked):
    """Max-subtracted softmax = exp/sum, with −inf entries weighted exactly 0 and no
    overflow at scale 1e3 (where exp(s) alone would overflow)."""
    rng = numpy.random.default_rng(seed)
    scores = scale * rng.standard_normal((n_rows, n_cols))
    scores[:, 1 : 1 + n_masked] = -math.inf  # column 0 always stays finite
    probs, _ = softmax_forward(scores)
    expected = numpy.array([softmax_by_loop(list(row)) for row in scores])
    assert numpy.all(numpy.isfinite(probs))
    assert numpy.all(probs[:, 1 : 1 + n_masked] == 0.0)
    numpy.testing.assert_allclose(probs, expected, rtol=IDENTITY_RTOL, atol=0.0)


def test_softmax_without_max_subtraction_would_overflow():
    """The reason for the max subtraction: exp(1000) overflows to inf."""
    scores = numpy.array([[1000.0, 999.0, 0.0]])
    with numpy.errstate(over="ignore", invalid="ignore"):
        naive = numpy.exp(scores) / numpy.sum(numpy.exp(scores))
    assert numpy.isnan(naive).any()
    probs, _ = softmax_forward(scores)
    numpy.testing.assert_allclose(
        probs[0], softmax_by_loop([1000.0, 999.0, 0.0]), rtol=IDENTITY_RTOL
    )


def test_layernorm_matches_formula(backend):
    """LN(x) = γ ⊙ (x − μ)/√(σ² + eps) + β with the biased variance and eps inside the
    root; with eps = 0.5 the two look-alike definitions differ visibly."""
    rng = numpy.random.default_rng(9)
    x = 3.0 * rng.standard_normal((2, 3, 4)) + 1.0
    g, b = 1.0 + rng.standard_normal(4), rng.standard_normal(4)
    eps = 0.5
    y, _ = layernorm_forward(
        backend.asarray(x), LayerNormParams(backend.asarray(g), backend.asarray(b)), eps
    )
    y = backend.to_numpy(y)

    mu = x.mean(axis=-1, keepdims=True)
    biased = ((x - mu) ** 2).sum(axis=-1, keepdims=True) / 4
    expected = g * (x - mu) / numpy.sqrt(biased + eps) + b
    assert relative_residual(y, expected) <= IDENTITY_RTOL

    unbiased = ((x - mu) ** 2).sum(axis=-1, keepdims=True) / 3
    assert relative_residual(y, g * (x - mu) / numpy.sqrt(unbiased + eps) + b) > LOOKALIKE_RTOL
    assert relative_residual(y, g * (x - mu) / (numpy.sqrt(biased) + eps) + b) > LOOKALIKE_RTOL


def test_gelu_matches_x_times_normal_cdf(backend):
    """gelu(x) = x Φ(x) exactly (not the tanh fit): |error| ≤ GELU_ULPS eps |x| on
    [−12, 12].

    Measured: 1.1 eps |x| with scipy's erf (NumPy), 3.4 eps |x| with the array-API
    series (array_api_strict). The tanh approximation is 4.7e-4 away.
    """
    x = numpy.concatenate([numpy.linspace(-12.0, 12.0, 4801), [0.0, 1e-300, -1e-300]])
    y = backend.to_numpy(gelu_forward(backend.asarray(x))[0])
    expected = x * scipy.stats.norm.cdf(x)
    assert numpy.all(numpy.abs(y - expected) <= GELU_ULPS * EPS64 * numpy.abs(x))
    tanh_fit = 0.5 * x * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert numpy.max(numpy.abs(y - tanh_fit)) > TANH_FIT_GAP


def test_relu_definition_and_kink(backend):
    """relu(x) = max(x, 0); its backward uses the subgradient 0 at x = 0."""
    x = backend.asarray([[[-2.0, -0.0, 0.0, 1e-300, 3.0]]])
    y, cache = relu_forward(x)
    assert backend.to_numpy(y).tolist() == [[[0.0, 0.0, 0.0, 1e-300, 3.0]]]
    dx = relu_backward(backend.asarray(numpy.full((1, 1, 5), 7.0)), cache)
    assert backend.to_numpy(dx).tolist() == [[[0.0, 0.0, 0.0, 7.0, 7.0]]]


def test_softmax_attention_of_one_token_is_W_O_W_V_x():
    """No biases in the projections: a token x alone (T = 1, softmax weight 1 on itself)
    gives A(x) = W_O W_V x, every head's value concatenated and projected back."""
    rng = numpy.random.default_rng(0)
    D, H, K = 3, 4, 2
    p = AttentionParams(*(rng.standard_normal(shape) for shape in [(H * K, D)] * 3 + [(D, H * K)]))
    x = rng.standard_normal((5, 1, D))
    for causal in (False, True):
        A, _ = attention_forward(x, p, H, "softmax", causal)
        expected = x[:, 0] @ (p.W_O @ p.W_V).T  # (B, D) rows of W_O W_V x
        assert relative_residual(A[:, 0], expected) <= IDENTITY_RTOL


def test_causal_mask_semantics(backend):
    """Query i is position T − Tq + i and sees keys j ≤ T − Tq + i: the diagonal is never
    masked, and the last query (all that last_only keeps) sees every key."""
    for n_keys in range(1, 6):
        for n_queries in range(1, n_keys + 1):
            mask = causal_mask(n_queries, n_keys, backend.xp, device=backend.device)
            assert device(mask) == device(backend.asarray(0.0))
            mask = backend.to_numpy(mask)
            expected = [
                [j <= n_keys - n_queries + i for j in range(n_keys)] for i in range(n_queries)
            ]
            assert mask.tolist() == expected
            assert all(mask[i, n_keys - n_queries + i] for i in range(n_queries))
            assert mask[-1].all()


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_causal_attention_weights(backend, kind):
    """Causal weights vanish on future keys; softmax rows sum to 1; last_only keeps the
    full computation's last row of weights and of output."""
    x, p = attention_inputs(backend, numpy.random.default_rng(10), n_heads=2, K=2, D=3, n_tokens=5)
    out, cache = attention_forward(x, p, 2, kind, causal=True)
    P = backend.to_numpy(cache.weights)  # (B, H, T, T)
    future = numpy.triu(numpy.ones((5, 5), dtype=bool), k=1)
    assert numpy.all(P[..., future] == 0.0)
    assert numpy.all(P[..., ~future] != 0.0)
    if kind == "softmax":
        numpy.testing.assert_allclose(P.sum(axis=-1), 1.0, rtol=0, atol=ROW_SUM_ATOL)
    out_last, cache_last = attention_forward(x, p, 2, kind, causal=True, last_only=True)
    assert relative_residual(backend.to_numpy(cache_last.weights), P[:, :, -1:, :]) <= IDENTITY_RTOL
    assert (
        relative_residual(backend.to_numpy(out_last), backend.to_numpy(out)[:, -1:, :])
        <= IDENTITY_RTOL
    )


def attention_by_loop(x, p, n_heads, kind, causal):
    """Multi-head self-attention written plainly: one head, one query, one key at a time."""
    n_prompts, n_tokens, D = x.shape
    K = p.W_Q.shape[0] // n_heads
    out = numpy.zeros((n_prompts, n_tokens, D))
    for b in range(n_prompts):
        heads = []
        for h in range(n_heads):
            rows = slice(h * K, (h + 1) * K)
            Wq, Wk, Wv = p.W_Q[rows], p.W_K[rows], p.W_V[rows]
            head = numpy.zeros((n_tokens, K))
            for i in range(n_tokens):
                q = Wq @ x[b, i]
                keys = range(i + 1) if causal else range(n_tokens)
                scores = [float(q @ (Wk @ x[b, j])) / math.sqrt(K) for j in keys]
                weights = softmax_by_loop(scores) if kind == "softmax" else scores
                for w, j in zip(weights, keys):
                    head[i] += w * (Wv @ x[b, j])
            heads.append(head)
        out[b] = numpy.concatenate(heads, axis=1) @ p.W_O.T
    return out


@pytest.mark.parametrize("kind", ["softmax", "linear"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n_heads", [1, 3])
def test_attention_matches_per_head_loop(backend, kind, causal, n_heads):
    rng = numpy.random.default_rng(11)
    x_np = rng.standard_normal((2, 4, 3))
    p_np = AttentionParams(
        *(rng.standard_normal(s) for s in [(2 * n_heads, 3)] * 3 + [(3, 2 * n_heads)])
    )
    x = backend.asarray(x_np)
    p = AttentionParams(*(backend.asarray(w) for w in p_np))
    expected = attention_by_loop(x_np, p_np, n_heads, kind, causal)
    out, _ = attention_forward(x, p, n_heads, kind, causal)
    assert relative_residual(backend.to_numpy(out), expected) <= IDENTITY_RTOL
    out_last, _ = attention_forward(x, p, n_heads, kind, causal, last_only=True)
    assert relative_residual(backend.to_numpy(out_last), expected[:, -1:, :]) <= IDENTITY_RTOL


def test_mlp_matches_formula():
    """M_W(u) = W′ g(W u + b) + b′, per prompt with per-prompt W and b′ (W1, b2 here)."""
    rng = numpy.random.default_rng(12)
    u = rng.standard_normal((2, 3, 4))
    p = MLPParams(
        rng.standard_normal((2, 5, 4)),
        rng.standard_normal(5),
        rng.standard_normal((4, 5)),
        rng.standard_normal((2, 4)),
    )
    for activation, g in [
        ("relu", lambda z: numpy.maximum(z, 0.0)),
        ("gelu", lambda z: z * scipy.stats.norm.cdf(z)),
    ]:
        out, _ = mlp_forward(u, p, activation)
        expected = numpy.stack(
            [
                numpy.stack([p.W2 @ g(p.W1[b] @ u[b, t] + p.b1) + p.b2[b] for t in range(3)])
                for b in range(2)
            ]
        )
        assert relative_residual(out, expected) <= IDENTITY_RTOL
