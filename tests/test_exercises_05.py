"""Tutorial 05's check: one step of Proposition 3.1's path passes when right and names
each typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_05 import check_path_step, path_step_case
from minimal_icl.tolerances import IDENTITY_RTOL, relative_residual


def step_with(gradient_sign=1.0, row="x", eta_power=2, eta_in_gradient=False,
              uphill=False, from_W0=False, column_from="W_0", batch_eta=False, swap=False,
              W_0_untransposed=False, eta_from="x", unit_row=False, no_W_0=False,
              eta_axis0=False, eta_mean=False):
    """A path step with one switch per typical mistake (the defaults are right)."""

    def step(W_i, W_0, A_i, A_next, A_x):
        rows = {"x": A_x, "i": A_i, "next": A_next}
        if W_0_untransposed:
            (A_i - A_next) @ W_0  # (B, D) against (M, D): ValueError
        if column_from == "W_i":
            column = gradient_sign * numpy.einsum("bmd,bd->bm", W_i, A_i - A_next)
        else:
            column = gradient_sign * (A_i - A_next) @ W_0.T  # (B, M)
        if no_W_0:
            column = A_i - A_next  # (B, D): W_0 left out
        G = column[:, :, None] * rows[row][:, None, :]  # (B, M, D)
        if unit_row:
            G = G / numpy.linalg.norm(A_x, axis=-1)[:, None, None]
        eta = 1.0 / numpy.linalg.norm(rows[eta_from], axis=-1) ** eta_power  # (B,)
        if batch_eta:
            eta = numpy.full(len(A_x), 1.0 / numpy.sum(A_x * A_x))
        if eta_axis0:
            eta = 1.0 / numpy.sum(A_x * A_x, axis=0)  # (D,): one per coordinate
        if eta_mean:
            eta = 1.0 / numpy.mean(A_x * A_x, axis=-1)
        if eta_in_gradient:
            G = eta[:, None, None] * G
        start = W_0 if from_W0 else W_i
        sign = 1.0 if uphill else -1.0
        if no_W_0:  # W_next from the right G, so that only G_i is wrong
            W_next = W_i - eta[:, None, None] * (((A_i - A_next) @ W_0.T)[:, :, None]
                                                 * A_x[:, None, :])
        elif eta_axis0:
            W_next = start + sign * eta * G  # (D,) broadcast over the last axis
        else:
            W_next = start + sign * eta[:, None, None] * G
        return (W_next, G) if swap else (G, W_next)

    return step


def test_the_right_step_passes(capsys):
    check_path_step(step_with())
    out = capsys.readouterr().out
    assert "✓ G_i is right" in out and "✓ W_{i+1} − W_i" in out


def test_the_case_is_a_real_step_of_the_path():
    """The check's inputs: W_i − η_x G_i is the package's W_{i+1}, and A_i ≠ A(x)."""
    case = path_step_case()
    eta = numpy.asarray(case.path.step_size)[:, None, None]
    stepped = case.W_i - eta * numpy.asarray(case.path.gradient(case.i))
    assert relative_residual(stepped, case.path.weights(case.i + 1)) <= IDENTITY_RTOL
    assert relative_residual(case.A_i, case.A_x) > 1e-3


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        (dict(gradient_sign=-1.0), "the difference has the wrong sign"),
        (dict(row="i"), "the row is A_i"),
        (dict(row="next"), "the row is A_\\{i\\+1\\}"),
        (dict(eta_in_gradient=True), "G_i is the gradient alone"),
        (dict(eta_power=0), "the step size η_x is missing"),
        (dict(eta_power=1), "is not squared"),
        (dict(uphill=True), "uphill"),
        (dict(from_W0=True), "starts from W_0"),
        (dict(column_from="W_i"), "uses the current weight W_i"),
        (dict(batch_eta=True), "one number per prompt"),
        (dict(swap=True), "return \\(G_i, W_next\\), in that order"),
        (dict(W_0_untransposed=True), "ValueError .*`\\(A_i - A_next\\) @ W_0.T`"),
        (dict(unit_row=True), "the row is A\\(x\\)/‖A\\(x\\)‖"),
        (dict(eta_from="i"), "the step size is 1/‖A_i‖²"),
        (dict(eta_from="next"), "the step size is 1/‖A_\\{i\\+1\\}‖²"),
        (dict(no_W_0=True), "without W_0"),
        (dict(eta_axis0=True), "summed over the prompts \\(axis=0\\)"),
        (dict(eta_mean=True), "not their mean"),
    ],
)
def test_each_typical_mistake_gets_its_hint(mistake, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_path_step(step_with(**mistake))


def test_placeholder_and_bad_returns():
    def placeholder(W_i, W_0, A_i, A_next, A_x):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_path_step(placeholder)
    with pytest.raises(ExerciseError, match="two arrays"):
        check_path_step(lambda W_i, W_0, A_i, A_next, A_x: W_i)
    with pytest.raises(ExerciseError, match="shape"):
        check_path_step(lambda W_i, W_0, A_i, A_next, A_x: (W_i[0], W_i))
    right = step_with()
    with pytest.raises(ExerciseError, match="W_next has shape"):
        check_path_step(lambda *args: (right(*args)[0], right(*args)[1][0]))


@pytest.mark.parametrize("i", [0, 8, 2.0, True])
def test_the_case_rejects_a_step_it_cannot_tell_apart_or_that_does_not_exist(i):
    with pytest.raises(ValueError, match="i must be an int in \\[1, 7\\]"):
        path_step_case(i)
