"""Tutorial 06's check: the prediction with the prompt and with the patched query alone
passes when right and names each typical mistake."""

from __future__ import annotations

import pytest

from minimal_icl import forward, implicit_update, predict
from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_06 import check_predictions_two_ways


def right(params, config, tokens):
    updates = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
    return predict(params, config, tokens), predict(params, config, tokens[:, -1:], patches=updates)


def with_prompt_reading(position, coordinate):
    def two_ways(params, config, tokens):
        out, _ = forward(params, config, tokens)
        return out[:, position, coordinate], right(params, config, tokens)[1]

    return two_ways


def with_prompt_patched(params, config, tokens):
    updates = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
    return predict(params, config, tokens, patches=updates), right(params, config, tokens)[1]


def with_prompt_without_query(params, config, tokens):
    return predict(params, config, tokens[:, :-1]), right(params, config, tokens)[1]


def patched_variant(kind):
    def two_ways(params, config, tokens):
        updates = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
        alone = tokens[:, -1:]
        if kind == "no patch":
            patched = predict(params, config, alone)
        elif kind == "whole prompt":
            patched = predict(params, config, tokens, patches=updates)
        elif kind == "query in context":
            patched = predict(params, config, alone,
                              patches=implicit_update(params, config, tokens, tokens[:, -1]))
        elif kind == "copy":
            patched = predict(params, config, tokens).copy()
        elif kind == "query as (B, D)":
            patched = predict(params, config, tokens[:, -1], patches=updates)
        elif kind == "one entry":
            patched = predict(params, config, alone, patches=updates[0])
        elif kind == "wrapped":
            patched = predict(params, config, alone, patches=(updates,))
        elif kind == "delta_W":
            patched = predict(params, config, alone, patches=updates[0].delta_W)
        elif kind == "context without its first pair":
            patched = predict(params, config, alone,
                              patches=implicit_update(params, config, tokens[:, 1:-1],
                                                      tokens[:, -1]))
        elif kind == "first token":
            patched = predict(params, config, tokens[:, :1], patches=updates)
        elif kind == "whole output token":
            patched = forward(params, config, alone, patches=updates)[0][:, -1]
        elif kind == "context short by one":
            patched = predict(params, config, alone,
                              patches=implicit_update(params, config, tokens[:, :-2],
                                                      tokens[:, -1]))
        else:  # first coordinate
            patched = forward(params, config, alone, patches=updates)[0][:, -1, 0]
        return predict(params, config, tokens), patched

    return two_ways


def test_the_right_answer_passes(capsys):
    check_predictions_two_ways(right)
    out = capsys.readouterr().out
    assert "✓ with_prompt is right" in out and "✓ patched is right" in out
    assert "agree with each other" in out


@pytest.mark.parametrize(
    ("two_ways", "hint"),
    [
        (with_prompt_reading(-1, 0), "first coordinate"),
        (with_prompt_reading(0, -1), "first position"),
        (lambda p, c, t: (predict(p, c, t[:, -1:]), right(p, c, t)[1]), "query alone without the context"),
        (patched_variant("no patch"), "WITHOUT the patch"),
        (patched_variant("whole prompt"), "context then acts twice"),
        (patched_variant("first coordinate"), "first coordinate"),
        (patched_variant("query in context"), "holds the query too"),
        (patched_variant("copy"), "bit for bit"),
        (patched_variant("query as (B, D)"), "ValueError .*tokens\\[:, -1:, :\\] \\(B, 1, D\\)"),
        (patched_variant("one entry"), "ValueError .*whole tuple implicit_update returns"),
        (patched_variant("delta_W"), "TypeError .*tuple that implicit_update returns as it is"),
        (patched_variant("wrapped"), "TypeError .*not wrapped in another tuple"),
        (patched_variant("context short by one"), "misses its last pair"),
        (patched_variant("context without its first pair"), "misses its first pair"),
        (patched_variant("first token"), "FIRST token, tokens\\[:, :1\\]"),
        (patched_variant("whole output token"), "whole output token of the patched query"),
        (with_prompt_patched, "patched the prompt too"),
        (with_prompt_without_query, "prompt without its query"),
        (with_prompt_reading(-1, slice(None)), "whole output token at the query"),
    ],
)
def test_each_typical_mistake_gets_its_hint(two_ways, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_predictions_two_ways(two_ways)


def test_placeholder_and_bad_returns():
    def placeholder(params, config, tokens):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_predictions_two_ways(placeholder)
    with pytest.raises(ExerciseError, match="two arrays"):
        check_predictions_two_ways(lambda p, c, t: predict(p, c, t))
    with pytest.raises(ExerciseError, match="shape"):
        check_predictions_two_ways(lambda p, c, t: (forward(p, c, t)[0], predict(p, c, t)))


def test_one_number_for_the_whole_batch_gets_a_shape_hint():
    import numpy

    with pytest.raises(ExerciseError, match="shape"):
        check_predictions_two_ways(lambda p, c, t: (numpy.float64(1.0), numpy.float64(1.0)))
