"""Checks for tutorial 06: the prediction computed two ways (Figure 2 of v1).

The reader writes the line the experiment rests on: for prompts [C, x] (tokens
(B, N+1, D)) the model's prediction

    with the prompt:              T_W(C, x)          (the last coordinate at the query)
    with the query alone, patched: T_{W+ΔW}(x),  ΔW = (W ΔA) A(x)ᵀ/‖A(x)‖²,

and the check compares both with the package's ``predict`` and ``implicit_update`` on a
fresh random model of the paper's shape (Theorem 2.2 holds for any weights), and prints
how closely the reader's two predictions agree with each other.
Reference: Dherin et al. (2025), arXiv:2507.16003, Theorem 2.2 and Figure 2 (v1).
"""

from __future__ import annotations

from typing import Callable

import numpy

from ..config import TransformerConfig
from ..data import regression_prompts
from ..implicit import implicit_update
from ..model import forward, predict
from ..params import init_params
from ..tolerances import relative_residual
from . import ExerciseError, _as_host, call_answer, check_array

__all__ = ["check_predictions_two_ways", "paper_shaped_model"]


def paper_shaped_model(seed: int = 0) -> tuple:
    """A random model with the paper setting's shape (8 heads of width 2, M = 128, no
    skips, no LayerNorm) and 32 prompts of 50 pairs: (params, config, tokens)."""
    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=8, d_head=2, d_mlp=128,
                               attention="softmax", activation="relu")
    params = init_params(config, seed=seed)
    batch = regression_prompts(32, n_context=50, d=2, seed=seed + 1)
    return params, config, numpy.asarray(batch.tokens)


def check_predictions_two_ways(two_ways: Callable, seed: int = 0) -> None:
    """Check ``two_ways(params, config, tokens) -> (with_prompt (B,), patched (B,))``.

    Expected: with_prompt = predict(params, config, tokens), patched = the query alone,
    tokens[:, -1:], through the model patched with implicit_update(params, config,
    context, query). Raises ExerciseError with a hint naming the mistake.
    """
    params, config, tokens = paper_shaped_model(seed)
    answer = call_answer(
        two_ways, params, config, tokens.copy(), name="predictions_two_ways",
        on_value_error="a prompt is (B, T, D), so the query alone is tokens[:, -1:, :]"
        " (B, 1, D) for predict, while implicit_update takes the query as a token per prompt,"
        " tokens[:, -1] (B, D); and predict's patches= takes the whole tuple implicit_update"
        " returns, one entry per block",
        on_type_error="predict's patches= takes the tuple that implicit_update returns as it"
        " is, one ImplicitUpdate per block (not wrapped in another tuple, and not an entry's"
        " delta_W: the patch needs its row and column too)")  # patches= given a delta_W, say
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise ExerciseError("predictions_two_ways must return two arrays: (with_prompt, patched)")
    # a NumPy scalar (one number for the whole batch) becomes a 0-d array: a shape hint
    with_prompt, patched = (numpy.asarray(v) if isinstance(v, numpy.generic) else v for v in answer)

    context, query, alone = tokens[:, :-1], tokens[:, -1], tokens[:, -1:]
    updates = implicit_update(params, config, context, query)
    full, _ = forward(params, config, tokens)  # (B, T, D)
    expected = numpy.asarray(predict(params, config, tokens))
    check_array("with_prompt", with_prompt, expected, mistakes=[
        ("you read the first coordinate; the prediction is the LAST coordinate of the output"
         " at the query, out[:, -1, -1]", full[:, -1, 0]),
        ("you read the first position; the prediction is read at the query, the LAST"
         " position: out[:, -1, -1]", full[:, 0, -1]),
        ("that is the query alone without the context: the prompt is the whole tokens array",
         predict(params, config, alone)),
        ("you patched the prompt too: with the prompt the context acts through attention"
         " already, T_W(C, x) = predict(params, config, tokens) with no patches",
         predict(params, config, tokens, patches=updates)),
        ("that is the prompt without its query, tokens[:, :-1], read at its last pair: the"
         " prediction is read at the query, the last token of the whole tokens array",
         predict(params, config, context)),
        ("that is the whole output token at the query, (B, D): the prediction is its LAST"
         " coordinate, out[:, -1, -1]", full[:, -1]),
    ])

    patched_full, _ = forward(params, config, alone, patches=updates)  # (B, 1, D)
    check_array("patched", patched, expected, mistakes=[
        ("that is the query alone WITHOUT the patch, the prediction with no context: pass"
         " patches=implicit_update(params, config, context, query)",
         predict(params, config, alone)),
        ("you ran the patched model on the whole prompt: the context then acts twice, through"
         " attention and through ΔW. Run the query alone, tokens[:, -1:, :]",
         predict(params, config, tokens, patches=updates)),
        ("you read the first coordinate; the prediction is the LAST coordinate",
         patched_full[:, -1, 0]),
        ("that is the whole output token of the patched query, (B, D): the prediction is its"
         " LAST coordinate, out[:, -1, -1]", patched_full[:, -1]),
        ("you ran the FIRST token, tokens[:, :1], through the patched model: the query is the"
         " LAST token, tokens[:, -1:]", predict(params, config, tokens[:, :1], patches=updates)),
        ("the context you patched with holds the query too: the context is tokens[:, :-1],"
         " the query tokens[:, -1]",
         predict(params, config, alone, patches=implicit_update(params, config, tokens, query))),
        ("the context you patched with misses its last pair: tokens[:, :-1] is all N pairs"
         " (everything but the query), tokens[:, :-2] drops c_N",
         predict(params, config, alone,
                 patches=implicit_update(params, config, tokens[:, :-2], query))),
        ("the context you patched with misses its first pair: tokens[:, :-1] is all N pairs"
         " (everything but the query), tokens[:, 1:-1] drops c_1",
         predict(params, config, alone,
                 patches=implicit_update(params, config, tokens[:, 1:-1], query))),
    ])
    if numpy.array_equal(_as_host(patched, "patched"), _as_host(with_prompt, "with_prompt")):
        # the two ways round differently here (2.8e-16 apart): equal bits are a copy
        raise ExerciseError("patched is bit for bit with_prompt: compute it the second way,"
                            " the query alone through the patched model")
    gap = relative_residual(_as_host(patched, "patched"), _as_host(with_prompt, "with_prompt"))
    print(f"✓ your T_W(C, x) and T_(W+ΔW)(x) agree with each other: relative residual {gap:.1e}")
