"""Tutorial 02's check passes the right ΔW and names each typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl import TransformerConfig, init_params
from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_02 import check_delta_W

CONFIG = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=16,
                           attention="softmax", activation="relu")
PARAMS = init_params(CONFIG, seed=0)


def pieces(W, cache_with, cache_alone):
    A_C = cache_with.blocks[0].u[:, -1]
    A_x = cache_alone.blocks[0].u[:, -1]
    return (A_C - A_x) @ W.T, A_C, A_x


def outer(column, row):
    return column[:, :, None] * row[:, None, :]


def right(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))


def no_division(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x)


def divided_by_norm(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.linalg.norm(A_x, axis=-1, keepdims=True))


def transposed(W, cache_with, cache_alone):
    return numpy.swapaxes(right(W, cache_with, cache_alone), -1, -2)  # aᵀ ⊗ W δ


def flipped_sign(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)  # A(x) − A(C, x)
    return outer(-column, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))


def row_with_context(W, cache_with, cache_alone):
    column, A_C, _ = pieces(W, cache_with, cache_alone)
    return outer(column, A_C / numpy.sum(A_C**2, axis=-1, keepdims=True))


def one_norm_for_the_batch(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.linalg.norm(A_x) ** 2)  # no axis: every prompt at once


def placeholder(W, cache_with, cache_alone):
    raise NotImplementedError("your turn")


def patched_weight(W, cache_with, cache_alone):
    return W + right(W, cache_with, cache_alone)


def column_with_context(W, cache_with, cache_alone):
    _, A_C, A_x = pieces(W, cache_with, cache_alone)
    return outer(A_C @ W.T, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))


def W_not_transposed(W, cache_with, cache_alone):
    _, A_C, A_x = pieces(W, cache_with, cache_alone)
    return outer((A_C - A_x) @ W, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))


def no_keepdims(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.sum(A_x**2, axis=-1))


def column_query_alone(W, cache_with, cache_alone):
    _, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(A_x @ W.T, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))


def summed_over_prompts(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.sum(A_x**2, axis=0, keepdims=True))  # axis 0, not -1


def row_from_delta_A(W, cache_with, cache_alone):
    column, A_C, A_x = pieces(W, cache_with, cache_alone)
    delta_A = A_C - A_x
    return outer(column, delta_A / numpy.sum(delta_A**2, axis=-1, keepdims=True))


def norm_with_context(W, cache_with, cache_alone):
    column, A_C, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.sum(A_C**2, axis=-1, keepdims=True))


def in_float32(W, cache_with, cache_alone):
    return right(W, cache_with, cache_alone).astype(numpy.float32)


def numpy_outer(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return numpy.outer(column, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))


def no_batch_axis(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return column.T @ (A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))


def column_without_W(W, cache_with, cache_alone):
    _, A_C, A_x = pieces(W, cache_with, cache_alone)
    return outer(A_C - A_x, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True))  # (B, D, D)


def no_sum_of_squares(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / A_x**2)  # entry by entry


def fourth_power(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.sum(A_x**2, axis=-1, keepdims=True) ** 2)


def mean_of_squares(W, cache_with, cache_alone):
    column, _, A_x = pieces(W, cache_with, cache_alone)
    return outer(column, A_x / numpy.mean(A_x**2, axis=-1, keepdims=True))


@pytest.mark.parametrize(
    "config",
    [CONFIG,
     TransformerConfig(d_token=4, n_blocks=1, n_heads=2, d_head=3, d_mlp=8,
                       attention="linear", activation="gelu")],
)
def test_right_answer_passes_and_the_patched_forward_reproduces_the_context(config, capsys):
    params = init_params(config, seed=1)
    assert check_delta_W(right, params, config) <= 1e-12
    assert "✓ ΔW is right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (no_division, "division by ‖A\\(x\\)‖² is missing"),
        (divided_by_norm, "instead of ‖A\\(x\\)‖²"),
        (transposed, "transposed factor"),
        (flipped_sign, "sign of ΔA is flipped"),
        (row_with_context, "the row is A\\(C, x\\)ᵀ"),
        (one_norm_for_the_batch, "summed over every prompt"),
        (placeholder, "not written yet"),
        (patched_weight, "the patched weight W \\+ ΔW"),
        (column_with_context, "the column is W A\\(C, x\\)"),
        (column_query_alone, "the column is W A\\(x\\)"),
        (summed_over_prompts, "summed over the prompts \\(axis=0\\)"),
        (row_from_delta_A, "the row is ΔA/‖ΔA‖²"),
        (norm_with_context, "divides A\\(x\\) by ‖A\\(C, x\\)‖²"),
        (W_not_transposed, "ValueError .*`delta_A @ W.T`"),
        (no_keepdims, "ValueError .*keepdims=True"),
        (in_float32, "computed in float32"),
        (numpy_outer, "numpy.outer flattens"),
        (no_batch_axis, "batch\\) axis is missing"),
        (column_without_W, "the column is ΔA itself"),
        (no_sum_of_squares, "entry by entry"),
        (fourth_power, "‖A\\(x\\)‖⁴"),
        (mean_of_squares, "not their mean"),
    ],
)
def test_typical_mistakes_get_their_hint(answer, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_delta_W(answer, PARAMS, CONFIG)


def test_an_answer_that_fails_only_in_the_patched_forward_is_caught(monkeypatch):
    """The check runs the patched forward itself: were the comparison with implicit_update
    fooled, the with-context output would still have to come out."""
    import minimal_icl.exercises.tutorial_02 as module

    monkeypatch.setattr(module, "check_array", lambda *args, **kwargs: 0.0)
    with pytest.raises(ExerciseError, match="patched forward"):
        check_delta_W(no_division, PARAMS, CONFIG)


def test_a_stack_is_refused():
    config = TransformerConfig(d_token=3, n_blocks=2, n_heads=1, d_head=4, d_mlp=8)
    with pytest.raises(ValueError, match="one-block"):
        check_delta_W(right, init_params(config, seed=0), config)
