"""Tutorial 12's checks pass the right answers and name each typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_12 import check_rnn_query_alone, check_rnn_step_backward
from minimal_icl.rnn import rnn_step_backward

# -- A(x) -------------------------------------------------------------------------------


def test_query_alone_right_answer_passes(capsys):
    def right(x, p):
        return numpy.tanh(x @ p.W_in.T + p.b) @ p.W_out.T

    assert check_rnn_query_alone(right) <= 1e-12
    assert "✓ A(x) is right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda x, p: (x @ p.W_in.T + p.b) @ p.W_out.T, "the tanh is missing"),
        (lambda x, p: numpy.tanh(x @ p.W_in.T) @ p.W_out.T, "the bias b is missing"),
        (lambda x, p: numpy.tanh(p.W_s.sum(axis=1) + x @ p.W_in.T + p.b) @ p.W_out.T,
         "starts from s_0 = 0"),
        (lambda x, p: numpy.tanh(x @ p.W_in.T @ p.W_out.T + p.b @ p.W_out.T),
         "applied inside the tanh"),
        (lambda x, p: numpy.tanh(numpy.tanh(x @ p.W_in.T + p.b) @ p.W_out.T),
         "the read-out has a tanh of its own"),
        (lambda x, p: numpy.tanh(numpy.tanh(x @ p.W_in.T + p.b) @ p.W_s.T + x @ p.W_in.T + p.b)
         @ p.W_out.T, "the state after two steps"),
        (lambda x, p: numpy.tanh(x @ p.W_in.T + p.b), "that is the state s_1"),
        (lambda x, p: numpy.tanh(x @ p.W_in.T - p.b) @ p.W_out.T, "with a plus sign"),
        (lambda x, p: (numpy.tanh(x @ p.W_in.T) + p.b) @ p.W_out.T, "added after the tanh"),
        (lambda x, p: numpy.tanh(x @ p.W_in + p.b) @ p.W_out.T,
         "ValueError .*a weight acts from the right, transposed"),
    ],
)
def test_query_alone_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_rnn_query_alone(wrong)


def test_query_alone_placeholder_is_not_written_yet():
    def placeholder(x, p):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet.*`raise NotImplementedError` line"):
        check_rnn_query_alone(placeholder)


# -- one step of BPTT ----------------------------------------------------------------------


def test_step_backward_right_answer_passes_and_is_gradient_checked(capsys):
    errors = check_rnn_step_backward(rnn_step_backward)
    assert set(errors) == {"0", "1.W_in", "1.W_s", "1.b", "1.W_out"}
    assert max(errors.values()) <= 1e-6
    assert "passes the gradient check" in capsys.readouterr().out


def _with(gradients, k, change):
    """The five gradients with the k-th changed (one mistake on top of the right step)."""
    gradients = list(gradients)
    gradients[k] = change(gradients[k])
    return tuple(gradients)


def _step(derivative=lambda s: 1.0 - s * s, transpose_W_s=False, sum_b=True, at_s_prev=False,
          dW_s_from_s=False, db=None, swap_weights=False):
    """A step backward with one ingredient swapped for a typical mistake."""

    def step(ds, c):
        dpre = ds * derivative(c.s_prev if at_s_prev else c.s)
        W_s = c.W_s.T if transpose_W_s else c.W_s
        db_ = dpre.sum(axis=0) if sum_b else dpre
        if db is not None:
            db_ = db(dpre)
        dW_s = dpre.T @ (c.s if dW_s_from_s else c.s_prev)
        if swap_weights:
            return dpre @ c.W_in, dpre @ W_s, dW_s, dpre.T @ c.x, db_
        return dpre @ c.W_in, dpre @ W_s, dpre.T @ c.x, dW_s, db_

    return step


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_step(derivative=lambda s: 1.0), "tanh's derivative is missing"),
        (_step(derivative=lambda s: s * (1.0 - s)), "sigmoid's derivative"),
        (_step(derivative=lambda s: 1.0 - s), r"\(1 − s\) is not tanh's derivative"),
        (_step(transpose_W_s=True), "W_s is transposed"),
        (_step(sum_b=False), r"db has shape \(4, 5\), expected \(5,\): the bias is shared"),
        (lambda ds, c: rnn_step_backward(ds, c)[:4], "must return the tuple"),
        (_step(at_s_prev=True), "tanh′ is taken at s_prev"),
        (_step(derivative=lambda s: 1.0 - numpy.tanh(s) ** 2), "tanh is applied twice"),
        (_step(dW_s_from_s=True), r"dW_s = dpreᵀ s_prev, not dpreᵀ s"),
        (_step(db=lambda dpre: dpre.mean(axis=0)), r"averaged over the prompts.*no 1/B"),
        (_step(db=lambda dpre: dpre.sum(axis=1)), r"db has shape \(4,\), one entry per prompt"),
        (_step(swap_weights=True), r"dW_in has shape \(5, 5\), the shape of dW_s: return"),
        (_step(db=lambda dpre: dpre.sum()), r"db is one number.*dpre.sum\(axis=0\)"),
        (lambda ds, c: _with(rnn_step_backward(ds, c), 1, lambda g: g + ds),
         r"ds_prev is this step's share only"),
        (lambda ds, c: _with(rnn_step_backward(ds, c), 1, lambda g: g * (1.0 - c.s_prev ** 2)),
         r"the tanh′ of the step that made s_prev"),
    ],
)
def test_step_backward_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_rnn_step_backward(wrong)


def test_step_backward_returned_as_a_list_passes():
    check_rnn_step_backward(lambda ds, c: list(rnn_step_backward(ds, c)))


def test_step_backward_shape_error_gets_a_hint():
    def untransposed(ds, c):
        dpre = ds * (1.0 - c.s * c.s)
        return dpre @ c.W_in, dpre @ c.W_s, dpre @ c.x, dpre.T @ c.s_prev, dpre.sum(axis=0)

    with pytest.raises(ExerciseError, match="ValueError .*dW_in = dpre.T @ x"):
        check_rnn_step_backward(untransposed)


def test_step_backward_placeholder_is_not_written_yet():
    def placeholder(ds, cache):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_rnn_step_backward(placeholder)
