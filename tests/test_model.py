"""The block and the whole model: gradient checks over a covering grid of switches, the
forward against a plain NumPy re-implementation, last_only and causality, portability
(array_api_strict's second device, float32), and input validation.

The switches of a model are attention ∈ {softmax, linear}, activation ∈ {relu, gelu},
causal, attn_skip, mlp_skip, layer_norm, n_blocks ∈ {1, 2, 3}, last_only, patched and
n_heads ∈ {1, 2}: 1536 combinations. The gradient checks run a pairwise covering
selection of them (``MODEL_CASES``, 10 rows): every value of every switch, and every
pair of values of every two switches, appears in some row
(``test_model_cases_cover_every_pair`` checks it). The selection avoids the
rank-collapse corner, where finite differences cannot resolve the gradients (see
``collapses``), and linear attention gets smaller tokens (see ``random_tokens``). array_api_strict is about ten times
slower than NumPy, so it gradient-checks two complementary rows, which cover every value
of every switch but gelu and three blocks; the portability tests then show that it
computes the same forward and backward as NumPy to IDENTITY_RTOL on every row of
MODEL_CASES.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import array_api_strict
import numpy
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import gpu_available

from minimal_icl import (
    FLOAT32_RTOL,
    IDENTITY_RTOL,
    BlockPatch,
    ModelParams,
    TransformerConfig,
    backward,
    forward,
    init_params,
    predict,
    relative_residual,
    tree_leaves,
    tree_map,
)
from minimal_icl.backend import device
from minimal_icl.block import block_backward, block_forward
from minimal_icl.gradcheck import assert_gradients_ok, check_gradients, check_layer
from minimal_icl.model import check_params
from minimal_icl.params import LayerNormParams


# Outputs that must differ: by more than DIFFERS_RTOL where one fixed prompt is compared
# (a patched batch against the unpatched one: measured 0.29), by more than
# GENERIC_DIFFERS_RTOL in a property over random models, where a draw can land near a
# coincidence (the first output of a non-causal model when later tokens change: measured
# 1.9e-3 at least, median 0.52, over 400 draws). Both lie orders above IDENTITY_RTOL.
DIFFERS_RTOL = 1e-3
GENERIC_DIFFERS_RTOL = 1e-6


def examples(n: int) -> int:
    """``n`` examples under the ci profile (200), scaled with the loaded profile."""
    return max(1, n * settings().max_examples // 200)


# ---------------------------------------------------------------------------------------
# The grid of switches and its pairwise covering selection
# ---------------------------------------------------------------------------------------

MODEL_SWITCHES = {
    "attention": ("softmax", "linear"),
    "activation": ("relu", "gelu"),
    "causal": (False, True),
    "attn_skip": (False, True),
    "mlp_skip": (False, True),
    "layer_norm": (False, True),
    "n_blocks": (1, 2, 3),
    "last_only": (False, True),
    "patched": (False, True),
    "n_heads": (1, 2),
}
BLOCK_SWITCHES = {name: values for name, values in MODEL_SWITCHES.items() if name != "n_blocks"}


def value_pairs(case: dict) -> set:
    """The pairs ((switch a, value), (switch b, value)) that one case exercises."""
    return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(sorted(case), 2)}


def collapses(case: dict) -> bool:
    """Whether a stack is in the rank-collapse corner (Dong, Cordonnier & Loukas 2021):
    non-causal softmax attention with no skip around it averages the tokens, so by the
    second block every position holds nearly the same vector and ∂loss/∂W_Q, ∂loss/∂W_K
    there can fall to the level of finite-difference rounding (measured on the grid's
    128 such cases: down to 5e-14, and relative errors up to 1.3 with a correct
    backward, above GRADCHECK_RTOL in 41 of them). Gradients there cannot be checked by
    finite differences; the same code paths are checked in every other case."""
    return (
        case["attention"] == "softmax"
        and not case["causal"]
        and not case["attn_skip"]
        and case.get("n_blocks", 1) >= 2
    )


def pairwise_cover(switches: dict) -> list[dict]:
    """A covering selection: greedily add the case that covers the most pairs of switch
    values not yet covered, until every pair is covered (deterministic: ties go to the
    first case of the full product). Cases in the rank-collapse corner are never chosen."""
    candidates = [dict(zip(switches, values)) for values in itertools.product(*switches.values())]
    candidates = [case for case in candidates if not collapses(case)]
    candidate_pairs = [value_pairs(case) for case in candidates]
    uncovered = set().union(*candidate_pairs)
    cases = []
    while uncovered:
        best = max(range(len(candidates)), key=lambda i: len(candidate_pairs[i] & uncovered))
        cases.append(candidates[best])
        uncovered -= candidate_pairs[best]
    return cases


MODEL_CASES = pairwise_cover(MODEL_SWITCHES)
BLOCK_CASES = pairwise_cover(BLOCK_SWITCHES)
STRICT_MODEL_CASES = [  # smaller widths: finite differences on array_api_strict are slow
    {
        "attention": "softmax",
        "activation": "relu",
        "causal": False,
        "attn_skip": True,
        "mlp_skip": False,
        "layer_norm": True,
        "n_blocks": 1,
        "last_only": True,
        "patched": True,
        "n_heads": 2,
        "d_mlp": 2,
    },
    {
        "attention": "linear",
        "activation": "relu",
        "causal": True,
        "attn_skip": False,
        "mlp_skip": True,
        "layer_norm": False,
        "n_blocks": 2,
        "last_only": False,
        "patched": False,
        "n_heads": 1,
        "d_token": 2,
        "d_mlp": 2,
    },
]
# The first strict model case has one block: it already checks that block on strict.
STRICT_BLOCK_CASES = [
    {name: value for name, value in STRICT_MODEL_CASES[1].items() if name != "n_blocks"}
]


def case_id(case: dict) -> str:
    flags = [
        name
        for name in ("causal", "attn_skip", "mlp_skip", "layer_norm", "last_only", "patched")
        if case.get(name)
    ]
    sizes = [f"L{case['n_blocks']}"] if "n_blocks" in case else []
    return "-".join([case["attention"], case["activation"], *sizes, f"H{case['n_heads']}", *flags])


def backend_cases(full, strict):
    """pytest params (backend, case) for the ``backend`` fixture: the ``full`` cases on
    NumPy (and CuPy on a GPU), the ``strict`` cases on array_api_strict's device1."""
    runs = [
        (("numpy",), "numpy", full),
        (("array_api_strict", "device1"), "strict-device1", strict),
    ]
    if gpu_available():
        runs.append((("cupy",), "cupy", full))
    return [
        pytest.param(which, case, id=f"{name}-{case_id(case)}")
        for which, name, cases in runs
        for case in cases
    ]


def non_numpy_cases(cases):
    """pytest params (backend, case) on array_api_strict's device1 (and CuPy on a GPU)."""
    runs = [(("array_api_strict", "device1"), "strict-device1")]
    if gpu_available():
        runs.append((("cupy",), "cupy"))
    return [
        pytest.param(which, case, id=f"{name}-{case_id(case)}")
        for which, name in runs
        for case in cases
    ]


def test_model_cases_cover_every_pair():
    """Every pair of values of every two switches appears in some gradient-checked case."""
    for switches, cases in [(MODEL_SWITCHES, MODEL_CASES), (BLOCK_SWITCHES, BLOCK_CASES)]:
        everything = set().union(
            *(value_pairs(dict(zip(switches, v))) for v in itertools.product(*switches.values()))
        )
        assert set().union(*(value_pairs(case) for case in cases)) == everything
        assert not any(collapses(case) for case in cases)
    assert len(MODEL_CASES) <= 12 and len(BLOCK_CASES) <= 10
    for name, values in MODEL_SWITCHES.items():
        for value in values:
            if (name, value) not in {("activation", "gelu"), ("n_blocks", 3)}:
                assert any(case[name] == value for case in STRICT_MODEL_CASES), (name, value)


# ---------------------------------------------------------------------------------------
# Random models: perturbed parameters, so that no term hides behind a zero or a one
# ---------------------------------------------------------------------------------------

D, D_MLP, N_PROMPTS, N_TOKENS = 3, 3, 2, 3


def make_config(case: dict, **overrides) -> TransformerConfig:
    fields = {
        "d_token": case.get("d_token", D),
        "n_blocks": case.get("n_blocks", 1),
        "n_heads": case["n_heads"],
        "d_head": 2 if case["n_heads"] == 1 else 1,
        "d_mlp": case.get("d_mlp", D_MLP),
        "attention": case["attention"],
        "activation": case["activation"],
        "causal": case["causal"],
        "attn_skip": case["attn_skip"],
        "mlp_skip": case["mlp_skip"],
        "layer_norm": case["layer_norm"],
    }
    fields.update(overrides)
    return TransformerConfig(**fields)


def random_params(config: TransformerConfig, seed: int) -> ModelParams:
    """init_params plus N(0, 0.3²) on every entry: LN gains ≠ 1, every bias ≠ 0 (NumPy)."""
    rng = numpy.random.default_rng(seed + 1000)
    return tree_map(
        lambda a: a + 0.3 * rng.standard_normal(a.shape), init_params(config, seed=seed)
    )


def random_patches(config: TransformerConfig, seed: int, n_prompts: int = N_PROMPTS) -> tuple:
    """One BlockPatch per block, except None for the second block (both kinds of entry)."""
    rng = numpy.random.default_rng(seed + 2000)
    patches = []
    for l in range(config.n_blocks):
        patch = BlockPatch(
            delta_W=0.3 * rng.standard_normal((n_prompts, config.d_mlp, config.d_token)),
            delta_b=0.3 * rng.standard_normal((n_prompts, config.d_token)),
        )
        patches.append(None if l == 1 else patch)
    return tuple(patches)


def random_tokens(
    seed: int, config: TransformerConfig, n_prompts: int = N_PROMPTS, n_tokens: int = N_TOKENS
):
    """N(0, 1) tokens; N(0, 0.5²) for linear attention, which is cubic in its input: at
    scale 1 three blocks without LayerNorm reach outputs of 1e8 and finite differences
    lose their accuracy (measured on the grid's two-head 3-block linear stacks without
    LayerNorm, seeds 2, 5 and 7: outputs up to 6e8, relative errors up to 1.2 with a
    correct backward)."""
    scale = 0.5 if config.attention == "linear" else 1.0
    return scale * numpy.random.default_rng(seed + 3000).standard_normal(
        (n_prompts, n_tokens, config.d_token)
    )


def on(backend, tree):
    return tree_map(backend.asarray, tree)


class Inputs(NamedTuple):
    params: ModelParams
    tokens: object


# ---------------------------------------------------------------------------------------
# Gradient checks: the block and the whole model
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "case"), backend_cases(BLOCK_CASES, STRICT_BLOCK_CASES), indirect=["backend"]
)
def test_block_gradients(backend, case):
    config = make_config(case)
    block = on(backend, random_params(config, seed=1).blocks[0])
    z = backend.asarray(random_tokens(1, config))
    patch = on(backend, random_patches(config, seed=1)[0]) if case["patched"] else None

    def fwd(inputs):
        return block_forward(inputs[0], inputs[1], config, patch, case["last_only"])

    errors = check_layer(fwd, block_backward, (z, block), seed=1)
    expected = {"0"} | {f"1.{name}" for name, _ in tree_leaves(block)}
    assert set(errors) == expected
    assert_gradients_ok(errors)


@pytest.mark.parametrize(
    ("backend", "case"), backend_cases(MODEL_CASES, STRICT_MODEL_CASES), indirect=["backend"]
)
def test_model_gradients(backend, case):
    """∂(Σ out ⊙ G)/∂(every parameter and every token) against finite differences."""
    config = make_config(case)
    params = on(backend, random_params(config, seed=2))
    tokens = backend.asarray(random_tokens(2, config))
    patches = on(backend, random_patches(config, seed=2)) if case["patched"] else None
    last_only = case["last_only"]

    out, cache = forward(params, config, tokens, patches, last_only)
    G = backend.asarray(numpy.random.default_rng(2).standard_normal(tuple(out.shape)))
    dtokens, grads = backward(G, cache)

    def loss(inputs):
        return float(
            backend.xp.sum(forward(inputs.params, config, inputs.tokens, patches, last_only)[0] * G)
        )

    errors = check_gradients(loss, Inputs(params, tokens), Inputs(grads, dtokens))
    assert len(errors) == 1 + len(tree_leaves(params))
    assert_gradients_ok(errors)


# ---------------------------------------------------------------------------------------
# The forward against an independent NumPy re-implementation
# ---------------------------------------------------------------------------------------


def reference_forward(params: ModelParams, config: TransformerConfig, tokens, patches=None):
    """The model written plainly, one prompt, one token, one head at a time.

    Returns out (B, T, D) and, per block, the block input z and its A, h, u.
    """
    n_prompts, n_tokens, width = tokens.shape
    H, K = config.n_heads, config.d_head

    def layer_norm(x, p):
        mu = sum(x) / width
        var = sum((xi - mu) ** 2 for xi in x) / width  # biased
        return p.gain * (x - mu) / math.sqrt(var + config.ln_eps) + p.bias

    def g(x):
        return numpy.maximum(x, 0.0) if config.activation == "relu" else x * scipy.stats.norm.cdf(x)

    def softmax(scores):
        m = max(scores)
        e = [math.exp(s - m) for s in scores]
        return [v / sum(e) for v in e]

    out = numpy.zeros_like(tokens)
    trace = [
        {
            "z": numpy.zeros_like(tokens),
            "A": numpy.zeros_like(tokens),
            "h": numpy.zeros_like(tokens),
            "u": numpy.zeros_like(tokens),
        }
        for _ in range(config.n_blocks)
    ]
    for b in range(n_prompts):
        z = tokens[b].copy()
        for l, p in enumerate(params.blocks):
            trace[l]["z"][b] = z
            u1 = (
                numpy.stack([layer_norm(z[t], p.ln1) for t in range(n_tokens)])
                if config.layer_norm
                else z
            )
            A = numpy.zeros((n_tokens, width))
            for t in range(n_tokens):
                keys = range(t + 1) if config.causal else range(n_tokens)
                heads = []
                for head in range(H):
                    rows = slice(head * K, (head + 1) * K)
                    q = p.attn.W_Q[rows] @ u1[t]
                    scores = [float(q @ (p.attn.W_K[rows] @ u1[j])) / math.sqrt(K) for j in keys]
                    weights = softmax(scores) if config.attention == "softmax" else scores
                    heads.append(sum(w * (p.attn.W_V[rows] @ u1[j]) for w, j in zip(weights, keys)))
                A[t] = p.attn.W_O @ numpy.concatenate(heads)
            h = z + A if config.attn_skip else A
            u = (
                numpy.stack([layer_norm(h[t], p.ln2) for t in range(n_tokens)])
                if config.layer_norm
                else h
            )
            patch = None if patches is None else patches[l]
            W1 = p.mlp.W1 + (0.0 if patch is None else patch.delta_W[b])
            b2 = p.mlp.b2 + (0.0 if patch is None else patch.delta_b[b])
            m = numpy.stack([p.mlp.W2 @ g(W1 @ u[t] + p.mlp.b1) + b2 for t in range(n_tokens)])
            trace[l]["A"][b], trace[l]["h"][b], trace[l]["u"][b] = A, h, u
            z = h + m if config.mlp_skip else m
        out[b] = z
    return out, trace


REFERENCE_CASES = [
    {
        "attention": "softmax",
        "activation": "gelu",
        "causal": True,
        "attn_skip": True,
        "mlp_skip": True,
        "layer_norm": True,
        "n_blocks": 2,
        "n_heads": 2,
        "patched": True,
    },
    {
        "attention": "linear",
        "activation": "relu",
        "causal": False,
        "attn_skip": False,
        "mlp_skip": False,
        "layer_norm": False,
        "n_blocks": 1,
        "n_heads": 1,
        "patched": False,
    },
    {
        "attention": "softmax",
        "activation": "relu",
        "causal": False,
        "attn_skip": True,
        "mlp_skip": False,
        "layer_norm": True,
        "n_blocks": 3,
        "n_heads": 3,
        "patched": False,
    },
    {
        "attention": "linear",
        "activation": "gelu",
        "causal": True,
        "attn_skip": False,
        "mlp_skip": True,
        "layer_norm": False,
        "n_blocks": 2,
        "n_heads": 2,
        "patched": True,
    },
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=case_id)
def test_forward_matches_plain_numpy_reimplementation(case):
    """out, and the cached block inputs and A, h, u, agree with the loops above."""
    config = make_config(case, d_token=4)
    params = random_params(config, seed=3)
    tokens = random_tokens(3, config, n_tokens=4)
    patches = random_patches(config, seed=3) if case["patched"] else None
    out, cache = forward(params, config, tokens, patches)
    expected, trace = reference_forward(params, config, tokens, patches)
    assert relative_residual(out, expected) <= IDENTITY_RTOL
    for l, block_cache in enumerate(cache.blocks):
        assert relative_residual(cache.inputs[l], trace[l]["z"]) <= IDENTITY_RTOL
        for name in ("A", "h", "u"):
            assert relative_residual(getattr(block_cache, name), trace[l][name]) <= IDENTITY_RTOL, (
                l,
                name,
            )


def test_patches_run_each_prompt_with_its_own_weights():
    """A patched batch = each prompt alone through a model whose W is W + ΔW[b] and
    whose b′ is b′ + Δb′[b] (the unpatched code path, one prompt at a time), and the
    patches change the output."""
    config = make_config(MODEL_CASES[1])
    params = random_params(config, seed=4)
    tokens = random_tokens(4, config)
    patches = random_patches(config, seed=4)
    out, _ = forward(params, config, tokens, patches)
    for b in range(N_PROMPTS):
        blocks = tuple(
            block
            if patch is None
            else block._replace(
                mlp=block.mlp._replace(
                    W1=block.mlp.W1 + patch.delta_W[b], b2=block.mlp.b2 + patch.delta_b[b]
                )
            )
            for block, patch in zip(params.blocks, patches)
        )
        alone, _ = forward(ModelParams(blocks=blocks), config, tokens[b : b + 1])
        assert relative_residual(out[b : b + 1], alone) <= IDENTITY_RTOL
    unpatched, _ = forward(params, config, tokens)
    assert relative_residual(out, unpatched) > DIFFERS_RTOL


# ---------------------------------------------------------------------------------------
# last_only and causality, as properties over the switches
# ---------------------------------------------------------------------------------------

switch_cases = st.fixed_dictionaries(
    {name: st.sampled_from(values) for name, values in MODEL_SWITCHES.items()}
)


@settings(max_examples=examples(30))
@given(case=switch_cases, seed=st.integers(0, 2**16))
def test_property_last_only_is_the_last_row(case, seed):
    """last_only's output is the full output's last row, predict reads its last entry,
    and its backward equals the full backward with an upstream gradient zero elsewhere.

    The two backwards add the same products in different orders, so each gradient is
    compared against the scale of the whole backward (its largest entry): a W_Q
    gradient left over from a cancellation of O(1) terms (rank collapse, or LayerNorm on
    3-wide tokens) is rounding noise, and the two can differ by more than itself
    (measured over 300 draws: one of 7e-24 by 43 times itself, 1e-22 of the largest
    entry)."""
    config = make_config(case)
    params = random_params(config, seed)
    tokens = random_tokens(seed, config, n_tokens=4)
    patches = random_patches(config, seed) if case["patched"] else None
    full, full_cache = forward(params, config, tokens, patches)
    last, last_cache = forward(params, config, tokens, patches, last_only=True)
    assert last.shape == (N_PROMPTS, 1, D)
    assert relative_residual(last, full[:, -1:, :]) <= IDENTITY_RTOL
    assert numpy.array_equal(predict(params, config, tokens, patches), last[:, -1, -1])

    G_last = numpy.random.default_rng(seed).standard_normal(last.shape)
    G_full = numpy.concatenate([numpy.zeros((N_PROMPTS, 3, D)), G_last], axis=1)
    dtokens_last, grads_last = backward(G_last, last_cache)
    dtokens_full, grads_full = backward(G_full, full_cache)
    pairs = [("tokens", dtokens_last, dtokens_full)] + [
        (name, a, b) for (name, a), (_, b) in zip(tree_leaves(grads_last), tree_leaves(grads_full))
    ]
    scale = max(float(numpy.max(numpy.abs(b))) for _, _, b in pairs)
    for name, a, b in pairs:
        assert float(numpy.max(numpy.abs(a - b))) <= IDENTITY_RTOL * scale, name


@settings(max_examples=examples(30))
@given(case=switch_cases, seed=st.integers(0, 2**16), t=st.integers(0, 3))
def test_property_causal_output_ignores_later_tokens(case, seed, t):
    """Causal: out[:, :t+1] is unchanged, bit for bit, when tokens after t change.
    Not causal, with the MLP skip: the output at position 0 does change. (Without the
    skip a block whose ReLUs are all off outputs its bias b′ whatever the tokens.)"""
    config = make_config(case)
    params = random_params(config, seed)
    tokens = random_tokens(seed, config, n_tokens=5)
    changed = tokens.copy()
    changed[:, t + 1 :, :] += 1.0 + numpy.random.default_rng(seed).standard_normal(
        changed[:, t + 1 :, :].shape
    )
    out, _ = forward(params, config, tokens)
    out_changed, _ = forward(params, config, changed)
    if config.causal:
        assert numpy.array_equal(out[:, : t + 1], out_changed[:, : t + 1])
    elif config.mlp_skip:
        assert relative_residual(out[:, 0], out_changed[:, 0]) > GENERIC_DIFFERS_RTOL


# ---------------------------------------------------------------------------------------
# Portability: array_api_strict's second device, and float32
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "case"), non_numpy_cases(MODEL_CASES), indirect=["backend"])
def test_forward_backward_match_numpy_and_stay_on_device(backend, case):
    """Same numbers as NumPy to IDENTITY_RTOL (another BLAS sums in another order: CuPy
    measured 2e-13 on one gradient), and every output and gradient on the input's
    device (array_api_strict: Device("device1"))."""
    config = make_config(case)
    params = random_params(config, seed=5)
    tokens = random_tokens(5, config)
    patches = random_patches(config, seed=5) if case["patched"] else None
    out, cache = forward(params, config, tokens, patches, case["last_only"])
    G = numpy.random.default_rng(5).standard_normal(out.shape)
    dtokens, grads = backward(G, cache)

    out_b, cache_b = forward(
        on(backend, params),
        config,
        backend.asarray(tokens),
        on(backend, patches),
        case["last_only"],
    )
    dtokens_b, grads_b = backward(backend.asarray(G), cache_b)

    target = device(backend.asarray(0.0))
    if backend.name.startswith("array_api_strict"):
        assert target == array_api_strict.Device("device1")
    for name, leaf in [("out", out_b), ("dtokens", dtokens_b), *tree_leaves(grads_b)]:
        assert device(leaf) == target, name
    assert relative_residual(backend.to_numpy(out_b), out) <= IDENTITY_RTOL
    assert relative_residual(backend.to_numpy(dtokens_b), dtokens) <= IDENTITY_RTOL
    for (name, a), (_, b) in zip(tree_leaves(grads_b), tree_leaves(grads)):
        assert relative_residual(backend.to_numpy(a), b) <= IDENTITY_RTOL, name


@pytest.mark.parametrize("case", [MODEL_CASES[1], MODEL_CASES[3]], ids=case_id)
def test_float32_in_float32_out(backend, case):
    """float32 tokens and parameters give float32 outputs and gradients, within
    FLOAT32_RTOL of the same computation in float64."""
    config = make_config(case)
    params32 = tree_map(lambda a: a.astype(numpy.float32), random_params(config, seed=6))
    tokens32 = random_tokens(6, config).astype(numpy.float32)
    patches32 = (
        tree_map(lambda a: a.astype(numpy.float32), random_patches(config, seed=6))
        if case["patched"]
        else None
    )
    G32 = (
        numpy.random.default_rng(6)
        .standard_normal((N_PROMPTS, 1 if case["last_only"] else N_TOKENS, D))
        .astype(numpy.float32)
    )

    def run(dtype):
        cast = lambda a: backend.asarray(a, dtype=dtype)
        out, cache = forward(
            tree_map(cast, params32),
            config,
            cast(tokens32),
            tree_map(cast, patches32),
            case["last_only"],
        )
        dtokens, grads = backward(cast(G32), cache)
        return out, dtokens, grads

    out, dtokens, grads = run("float32")
    out64, dtokens64, grads64 = run("float64")
    f32 = backend.asarray(0.0, dtype="float32").dtype
    for name, leaf in [("out", out), ("dtokens", dtokens), *tree_leaves(grads)]:
        assert leaf.dtype == f32, name
    assert relative_residual(backend.to_numpy(out), backend.to_numpy(out64)) <= FLOAT32_RTOL
    assert relative_residual(backend.to_numpy(dtokens), backend.to_numpy(dtokens64)) <= FLOAT32_RTOL
    for (name, a), (_, b) in zip(tree_leaves(grads), tree_leaves(grads64)):
        assert relative_residual(backend.to_numpy(a), backend.to_numpy(b)) <= FLOAT32_RTOL, name


def test_init_params_keeps_dtype_and_device(backend):
    config = make_config(MODEL_CASES[1])
    params = init_params(config, seed=0, dtype="float32", xp=backend.xp, device=backend.device)
    f32 = backend.asarray(0.0, dtype="float32").dtype
    for name, leaf in tree_leaves(params):
        assert leaf.dtype == f32 and device(leaf) == device(backend.asarray(0.0)), name
    same = init_params(config, seed=0)
    for (name, a), (_, b) in zip(tree_leaves(params), tree_leaves(same)):
        assert numpy.array_equal(backend.to_numpy(a), b.astype(numpy.float32)), name


def test_init_params_draws_weights_with_variance_one_over_fan_in():
    """init_params' docstring: weights N(0, 1/fan_in) from default_rng(seed), biases 0,
    LayerNorm gain 1 and bias 0 (the draws in the records' order: W_Q, W_K, W_V, W_O, W1, W2)."""
    config = TransformerConfig(d_token=4, n_heads=2, d_head=3, d_mlp=5, layer_norm=True)
    block = init_params(config, seed=7).blocks[0]
    rng = numpy.random.default_rng(7)
    for W in (block.attn.W_Q, block.attn.W_K, block.attn.W_V, block.attn.W_O, block.mlp.W1,
              block.mlp.W2):
        n_out, fan_in = W.shape
        assert numpy.array_equal(W, rng.standard_normal((n_out, fan_in)) / numpy.sqrt(fan_in))
    for bias in (block.mlp.b1, block.mlp.b2, block.ln1.bias, block.ln2.bias):
        assert not numpy.any(bias)
    assert numpy.all(block.ln1.gain == 1.0) and numpy.all(block.ln2.gain == 1.0)


# ---------------------------------------------------------------------------------------
# Validation: configurations, tokens, patches, parameters
# ---------------------------------------------------------------------------------------

BAD_CONFIG_VALUES = [
    *[
        (name, value)
        for name in ("d_token", "n_blocks", "n_heads", "d_head", "d_mlp")
        for value in (0, -1, 2.0, True, "3", None)
    ],
    ("attention", "Softmax"),
    ("attention", "relu"),
    ("attention", None),
    ("activation", "tanh"),
    ("activation", "GELU"),
    *[
        (name, value)
        for name in ("causal", "attn_skip", "mlp_skip", "layer_norm")
        for value in (1, 0, "yes", None)
    ],
    ("ln_eps", 0.0),
    ("ln_eps", -1e-5),
    ("ln_eps", 1),
    ("ln_eps", math.nan),
    ("ln_eps", math.inf),
    ("ln_eps", "1e-5"),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIG_VALUES)
def test_config_rejects_bad_value(field, value):
    with pytest.raises(ValueError, match=rf"TransformerConfig\.{field} must be"):
        TransformerConfig(**{field: value})


def test_config_round_trip_and_unknown_fields():
    config = make_config(MODEL_CASES[1])
    assert TransformerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown fields \['width'\]"):
        TransformerConfig.from_dict({**config.to_dict(), "width": 3})


@pytest.fixture
def model():
    config = make_config(MODEL_CASES[1])  # two blocks, LayerNorm
    return config, random_params(config, seed=7), random_tokens(7, config)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (numpy.zeros((3, D)), r"shape \(B, T, d_token\), got shape \(3, 3\)"),
        (numpy.zeros((1, 2, 3, D)), r"shape \(B, T, d_token\)"),
        ([[[0.0] * D]], r"shape \(B, T, d_token\), got shape None"),
        (numpy.zeros((2, 3, D + 1)), r"width 4 but config.d_token = 3"),
        (numpy.zeros((0, 3, D)), r"at least one prompt of one token"),
        (numpy.zeros((2, 0, D)), r"at least one prompt of one token"),
    ],
    ids=["rank-2", "rank-4", "no-shape", "width", "no-prompt", "no-token"],
)
def test_forward_rejects_badly_shaped_tokens(model, tokens, message):
    config, params, _ = model
    with pytest.raises(ValueError, match=message):
        forward(params, config, tokens)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_forward_rejects_non_finite_tokens(model, backend, bad):
    config, params, tokens = model
    tokens = tokens.copy()
    tokens[1, 2, 0] = bad
    with pytest.raises(ValueError, match="tokens contain NaN or infinity"):
        forward(on(backend, params), config, backend.asarray(tokens))


def test_forward_rejects_wrong_patches(model):
    config, params, tokens = model
    good = random_patches(config, seed=7)
    forward(params, config, tokens, good)  # accepted
    with pytest.raises(ValueError, match=r"one entry per block \(2\), got 1"):
        forward(params, config, tokens, good[:1])
    with pytest.raises(ValueError, match=r"one entry per block \(2\), got 3"):
        forward(params, config, tokens, good + (None,))
    patch = good[0]
    wrong = {
        "delta_W batch": (
            patch._replace(delta_W=patch.delta_W[:1]),
            r"delta_W has shape \(1, 3, 3\), expected \(2, 3, 3\)",
        ),
        "delta_W width": (
            patch._replace(delta_W=patch.delta_W[:, :2]),
            r"delta_W has shape \(2, 2, 3\)",
        ),
        "delta_b batch": (
            patch._replace(delta_b=patch.delta_b[:1]),
            r"delta_b has shape \(1, 3\), expected \(2, 3\)",
        ),
        "delta_b shared": (
            patch._replace(delta_b=patch.delta_b[0]),
            r"delta_b has shape \(3,\), expected \(2, 3\)",
        ),
    }
    for bad, message in wrong.values():
        with pytest.raises(ValueError, match=r"patch for block 0: " + message):
            forward(params, config, tokens, (bad, None))
        with pytest.raises(ValueError, match=r"patch for block 1: " + message):
            forward(params, config, tokens, (None, bad))


def test_check_params_rejects_mismatched_shapes(model):
    config, params, _ = model
    check_params(params, config)  # accepted
    block = params.blocks[1]

    def with_block(new_block):
        return ModelParams(blocks=(params.blocks[0], new_block))

    cases = [
        (
            ModelParams(blocks=params.blocks[:1]),
            r"ModelParams with 2 blocks, got ModelParams with 1 blocks",
        ),
        (tuple(params.blocks), r"ModelParams with 2 blocks, got tuple"),
        (
            with_block(block._replace(attn=block.attn._replace(W_Q=block.attn.W_Q[:, :2]))),
            r"block 1: W_Q has shape \(2, 2\), config expects \(2, 3\)",
        ),
        (
            with_block(block._replace(attn=block.attn._replace(W_O=block.attn.W_O.T))),
            r"block 1: W_O has shape \(2, 3\), config expects \(3, 2\)",
        ),
        (
            with_block(block._replace(mlp=block.mlp._replace(W1=block.mlp.W1[:, :2]))),
            r"block 1: W1 has shape \(3, 2\), config expects \(3, 3\)",
        ),
        (
            with_block(block._replace(mlp=block.mlp._replace(b1=block.mlp.b1[:2]))),
            r"block 1: b1 has shape \(2,\), config expects \(3,\)",
        ),
        (
            with_block(block._replace(mlp=block.mlp._replace(b2=block.mlp.b2[None]))),
            r"block 1: b2 has shape \(1, 3\)",
        ),
        (
            with_block(block._replace(ln1=None)),
            r"block 1: ln1 is None but config.layer_norm = True",
        ),
        (
            with_block(block._replace(ln2=None)),
            r"block 1: ln2 is None but config.layer_norm = True",
        ),
        (
            with_block(block._replace(ln2=LayerNormParams(numpy.ones(4), numpy.zeros(3)))),
            r"block 1: ln2.gain has shape \(4,\), config expects \(3,\)",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            check_params(bad, config)
    no_ln = make_config(MODEL_CASES[1], layer_norm=False)
    with pytest.raises(ValueError, match=r"block 0: ln1 is set but config.layer_norm = False"):
        check_params(params, no_ln)
