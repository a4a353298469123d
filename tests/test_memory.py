"""Peak memory of the theorem checks: implicit_update keeps the query row, not the stack.

Theorem 2.2 needs only u and h at the query from the run with context, so
``implicit_update`` runs the stack block by block (``implicit.query_states``), dropping
each block's cache once its query row is copied out. Its peak (tracemalloc, which sees
NumPy's allocations) is then about one block's pass: measured 0.48× a plain forward pass
of a 4-block stack at B = 256, N = 127 (274 MiB against 574 MiB; 474 MiB, 0.82×, when it
kept forward's whole cache). ``implicit_path`` (one block) peaks at 0.11× a forward pass.
"""

from __future__ import annotations

import tracemalloc

import numpy
import pytest

from minimal_icl import (
    IDENTITY_RTOL,
    TransformerConfig,
    forward,
    implicit_path,
    implicit_update,
    init_params,
    relative_residual,
)
from minimal_icl.implicit import query_states


def peak_mib(f) -> float:
    """The peak of traced memory while ``f()`` runs, above what was allocated before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = f()
        peak = tracemalloc.get_traced_memory()[1] - base
        del result
    finally:
        tracemalloc.stop()
    return peak / 2**20


def stack(n_blocks: int) -> TransformerConfig:
    return TransformerConfig(
        d_token=8, n_blocks=n_blocks, n_heads=2, d_head=4, d_mlp=32,
        attn_skip=True, mlp_skip=True, layer_norm=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def prompts():
    rng = numpy.random.default_rng(0)
    context, query = rng.standard_normal((64, 63, 8)), rng.standard_normal((64, 8))
    return context, query, numpy.concatenate([context, query[:, None, :]], axis=1)


def test_implicit_update_peak_is_below_one_forward_pass(prompts):
    """4 blocks: implicit_update's peak is below a plain forward pass's (and so well
    below the two passes it runs)."""
    context, query, tokens = prompts
    config = stack(4)
    params = init_params(config, seed=0)
    plain = peak_mib(lambda: forward(params, config, tokens))
    theorem = peak_mib(lambda: implicit_update(params, config, context, query))
    assert theorem < 0.75 * plain, (theorem, plain)


def test_implicit_path_peak_is_below_one_forward_pass(prompts):
    context, query, tokens = prompts
    config = stack(1)
    params = init_params(config, seed=0)
    plain = peak_mib(lambda: forward(params, config, tokens))
    path = peak_mib(lambda: implicit_path(params, config, context, query))
    assert path < plain, (path, plain)


def test_query_states_are_forward_s(prompts):
    """query_states gives forward(last_only=True)'s u and h at the query, block by block."""
    _, _, tokens = prompts
    config = stack(3)
    params = init_params(config, seed=1)
    _, cache = forward(params, config, tokens, last_only=True)
    for (u, h), block in zip(query_states(params, config, tokens), cache.blocks):
        assert relative_residual(u, block.u[:, -1, :]) <= IDENTITY_RTOL
        assert relative_residual(h, block.h[:, -1, :]) <= IDENTITY_RTOL


def test_query_states_checks_like_forward():
    config = stack(2)
    params = init_params(config, seed=1)
    tokens = numpy.ones((2, 3, 8))
    tokens[0, 1, 2] = numpy.nan
    with pytest.raises(ValueError, match="NaN"):
        query_states(params, config, tokens)
    with pytest.raises(ValueError, match="tokens"):
        query_states(params, config, numpy.ones((2, 3)))
