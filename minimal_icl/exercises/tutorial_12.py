"""Checks for tutorial 12 (other contextual layers, and the order of the demonstrations).

Two "your turn" cells, on the recurrent layer of ``minimal_icl.rnn``:

1. the query alone, A(x) = W_out tanh(W_in x + b) (``check_rnn_query_alone``): one step
   of s_t = tanh(W_s s_{t−1} + W_in c_t + b) from s_0 = 0, read out by W_out; it is what
   Theorem 2.2 divides by;
2. one step of backpropagation through time (``check_rnn_step_backward``): given
   ds = ∂loss/∂s_t,

       dpre = ds ⊙ (1 − s_t²),   dx = dpre W_in,   ds_prev = dpre W_s,
       dW_in = dpreᵀ x,   dW_s = dpreᵀ s_{t−1},   db = Σ_B dpre,

   compared with the package's ``rnn_step_backward`` and then run inside the package's
   ``rnn_backward`` through the gradient checker (a random upstream gradient).

Each check names the typical mistakes: the tanh or the bias left out, the bias subtracted
or added after the tanh, the state returned without its read-out, a recurrence that
starts from s_0 ≠ 0, a tanh on the read-out, the query read after two steps; tanh's
derivative dropped, replaced by the sigmoid's, taken at s_prev or at tanh(s), W_s not
transposed the right way, ds added to ds_prev or ds_prev multiplied by the previous
step's tanh′, dW_s from s instead of s_prev, the bias gradient averaged or not summed over
prompts (or summed over the wrong axis or over both), the five gradients out of order.
"""

from __future__ import annotations

from typing import Callable
from unittest import mock

import numpy

from .. import rnn as rnn_module
from ..gradcheck import assert_gradients_ok, check_layer
from ..rnn import RNNParams, rnn_forward, rnn_step_backward, rnn_step_forward
from ..validation import check_seed
from . import ExerciseError, call_answer, check_array

__all__ = ["check_rnn_query_alone", "check_rnn_step_backward", "rnn_params_for_check"]


def rnn_params_for_check(D: int = 3, S: int = 5, seed: int = 0) -> RNNParams:
    """Random recurrent weights with a non-zero bias (the checks' inputs)."""
    rng = numpy.random.default_rng(seed)
    return RNNParams(
        W_in=rng.standard_normal((S, D)) / numpy.sqrt(D),
        W_s=rng.standard_normal((S, S)) / numpy.sqrt(S),
        b=0.5 * rng.standard_normal(S),
        W_out=rng.standard_normal((D, S)) / numpy.sqrt(S),
    )


def check_rnn_query_alone(function: Callable, seed: int = 0) -> float:
    """Check ``function(x, p) -> A(x)`` for queries x (B, D) and RNNParams p; A(x) (B, D).

    The expected answer is the package's ``rnn_forward`` on the one-token prompts.
    Returns the relative residual; raises ExerciseError with a hint.
    """
    seed = check_seed(seed)
    label = getattr(function, "__name__", "your function")
    p = rnn_params_for_check(seed=seed)
    x = numpy.random.default_rng(seed + 1).standard_normal((4, 3))
    answer = call_answer(function, x.copy(), p, name=label,
                         on_value_error="the tokens are rows, x (B, D): a weight acts from"
                         " the right, transposed, as in `x @ p.W_in.T` (B, S) and"
                         " `s @ p.W_out.T` (B, D)")
    expected = rnn_forward(x[:, None, :], p)[0][:, 0, :]  # (B, D)
    mistakes = [
        ("the tanh is missing: s_1 = tanh(W_s s_0 + W_in x + b), then A = W_out s_1",
         (x @ p.W_in.T + p.b) @ p.W_out.T),
        ("the bias b is missing inside the tanh: s_1 = tanh(W_in x + b)",
         numpy.tanh(x @ p.W_in.T) @ p.W_out.T),
        ("the recurrence starts from s_0 = 0, so W_s s_0 = 0: a token alone never meets W_s",
         numpy.tanh(p.W_s.sum(axis=1) + x @ p.W_in.T + p.b) @ p.W_out.T),
        ("the read-out W_out is applied inside the tanh: A = W_out tanh(W_in x + b)",
         numpy.tanh(x @ p.W_in.T @ p.W_out.T + p.b @ p.W_out.T)),
        ("the read-out has a tanh of its own: A = W_out s_1 is linear in the state, the only"
         " tanh is the one inside s_1 = tanh(W_in x + b)",
         numpy.tanh(numpy.tanh(x @ p.W_in.T + p.b) @ p.W_out.T)),
        ("the bias enters with a plus sign: s_1 = tanh(W_in x + b)",
         numpy.tanh(x @ p.W_in.T - p.b) @ p.W_out.T),
        ("the bias is added after the tanh: it belongs inside, s_1 = tanh(W_in x + b)",
         (numpy.tanh(x @ p.W_in.T) + p.b) @ p.W_out.T),
        ("that is the state s_1 = tanh(W_in x + b), (B, S): A(x) = W_out s_1 is the read-out,"
         " (B, D), `s @ p.W_out.T`", numpy.tanh(x @ p.W_in.T + p.b)),
        ("that is the state after two steps (x read twice): the query is the only token, so"
         " the recurrence takes ONE step from s_0 = 0, s_1 = tanh(W_in x + b), and A = W_out s_1",
         numpy.tanh(numpy.tanh(x @ p.W_in.T + p.b) @ p.W_s.T + x @ p.W_in.T + p.b)
         @ p.W_out.T),
    ]
    return check_array("A(x)", answer, expected, mistakes=mistakes)


def _step_inputs(seed: int):
    """One step's cache and upstream gradient ds, (B, S) = (4, 5), D = 3."""
    rng = numpy.random.default_rng(seed + 2)
    p = rnn_params_for_check(seed=seed)
    x, s_prev = rng.standard_normal((4, 3)), numpy.tanh(rng.standard_normal((4, 5)))
    _, cache = rnn_step_forward(x, s_prev, p)
    return rng.standard_normal((4, 5)), cache


def check_rnn_step_backward(function: Callable, seed: int = 0) -> dict:
    """Check ``function(ds, cache) -> (dx, ds_prev, dW_in, dW_s, db)`` for one step.

    ``cache`` is an ``rnn.RNNStepCache`` (fields x, s_prev, s, W_in, W_s). Each output is
    compared with the package's ``rnn_step_backward``; then the reader's step replaces the
    package's inside ``rnn_backward`` and the whole layer is gradient-checked against
    finite differences (random upstream gradient). Returns the gradient check's errors.
    """
    seed = check_seed(seed)
    label = getattr(function, "__name__", "your function")
    ds, cache = _step_inputs(seed)
    answer = call_answer(function, ds.copy(), cache, name=label,
                         on_value_error="the rows are prompts: ds and dpre are (B, S), so"
                         " dx = dpre @ W_in (B, D), ds_prev = dpre @ W_s (B, S) and"
                         " dW_in = dpre.T @ x (S, D)")
    if not isinstance(answer, (tuple, list)) or len(answer) != 5:
        raise ExerciseError(
            f"{label} must return the tuple (dx, ds_prev, dW_in, dW_s, db), got"
            f" {type(answer).__name__}" + (f" of length {len(answer)}"
                                           if isinstance(answer, (tuple, list)) else "")
        )
    answer = tuple(answer)
    expected = rnn_step_backward(ds, cache)
    c = cache

    def with_dpre(dpre):  # the five gradients for a given ∂loss/∂pre
        return (dpre @ c.W_in, dpre @ c.W_s, dpre.T @ c.x, dpre.T @ c.s_prev, dpre.sum(axis=0))

    no_derivative = with_dpre(ds)
    sigmoid_like = with_dpre(ds * c.s * (1.0 - c.s))
    one_minus_s = with_dpre(ds * (1.0 - c.s))
    at_s_prev = with_dpre(ds * (1.0 - c.s_prev * c.s_prev))
    tanh_twice = with_dpre(ds * (1.0 - numpy.tanh(c.s) ** 2))
    dpre = ds * (1.0 - c.s * c.s)
    names = ("dx", "ds_prev", "dW_in", "dW_s", "db")
    shapes = [numpy.shape(e) for e in expected]
    for k, name in enumerate(names):  # a gradient in another's place: the tuple's order
        given = numpy.shape(answer[k])
        if given != shapes[k] and given in shapes and not (name == "db" and given == dpre.shape):
            raise ExerciseError(
                f"{name} has shape {given}, the shape of {names[shapes.index(given)]}: return"
                f" the five gradients in the order (dx, ds_prev, dW_in, dW_s, db)")
    for k, name in enumerate(names):
        mistakes = [
            ("tanh's derivative is missing: dpre = ds ⊙ (1 − s²) before any product",
             no_derivative[k]),
            ("that is the sigmoid's derivative s(1 − s); tanh′ = 1 − tanh² = 1 − s²",
             sigmoid_like[k]),
            ("(1 − s) is not tanh's derivative: square the state, dpre = ds ⊙ (1 − s²)",
             one_minus_s[k]),
            ("tanh′ is taken at s_prev: the derivative belongs to this step's tanh, whose"
             " output is s, so dpre = ds ⊙ (1 − s²) with s = cache.s", at_s_prev[k]),
            ("tanh is applied twice: s is already tanh(pre), so tanh′(pre) = 1 − s², not"
             " 1 − tanh(s)²", tanh_twice[k]),
        ]
        if name == "ds_prev":
            mistakes.append(("W_s is transposed: pre = s_prev W_sᵀ + ..., so ds_prev = dpre W_s",
                             dpre @ c.W_s.T))
            mistakes.append(("ds_prev is this step's share only, dpre W_s: the sequence's loop"
                             " adds the read-out's dA_(t−1) W_out to it, not the step, and ds"
                             " (the gradient at s_t) does not flow to s_(t−1) directly",
                             dpre @ c.W_s + ds))
            mistakes.append(("ds_prev is the gradient at s_prev itself, dpre W_s: the tanh′ of"
                             " the step that made s_prev, (1 − s_prev²), is applied by that"
                             " step's own backward", (dpre @ c.W_s) * (1.0 - c.s_prev ** 2)))
        if name == "dW_s":
            mistakes.append(("dW_s multiplies the state W_s acts on, the previous one:"
                             " dW_s = dpreᵀ s_prev, not dpreᵀ s", dpre.T @ c.s))
        if name == "db":
            mistakes.append(("db is averaged over the prompts: ds already carries each"
                             " prompt's share of the loss, so db = Σ_B dpre (no 1/B)",
                             dpre.mean(axis=0)))
        if name == "db" and numpy.shape(answer[k]) == dpre.shape:
            raise ExerciseError(
                f"db has shape {dpre.shape}, expected {expected[k].shape}: the bias is shared by"
                " every prompt, so its gradient is summed over them, db = Σ_B dpre"
            )
        if name == "db" and numpy.ndim(answer[k]) == 0:
            raise ExerciseError(
                f"db is one number, expected shape {expected[k].shape}: one entry per state"
                " unit, so sum dpre (B, S) over the prompts only, dpre.sum(axis=0)"
            )
        if name == "db" and numpy.shape(answer[k]) == dpre.shape[:1]:
            raise ExerciseError(
                f"db has shape {dpre.shape[:1]}, one entry per prompt, expected"
                f" {expected[k].shape}: sum dpre (B, S) over the prompts, axis 0, not over"
                " the state's S entries"
            )
        check_array(name, answer[k], expected[k], mistakes=mistakes, quiet=True)

    D, S, B, T = 3, 5, 2, 4
    inputs = (numpy.random.default_rng(seed + 3).standard_normal((B, T, D)),
              rnn_params_for_check(D, S, seed + 4))
    with mock.patch.object(rnn_module, "rnn_step_backward", function):
        # rnn_backward looks its step up in the module when it runs: it uses yours
        errors = check_layer(lambda a: rnn_forward(a[0], a[1]), rnn_module.rnn_backward, inputs,
                             seed=seed + 5)
    try:
        assert_gradients_ok(errors)
    except AssertionError as failure:  # a mistake the comparison above let through
        raise ExerciseError(f"backpropagation through time with your step: {failure}") from None
    print(f"✓ one step of BPTT is right, and rnn_backward with it passes the gradient check"
          f" (largest relative error {max(errors.values()):.1e})")
    return errors
